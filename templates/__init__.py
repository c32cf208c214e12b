"""Notification templates (Jinja2 sources in ``templates/sources``) and their renderer.

Use :func:`templates.renderer.render`; nothing is loaded at import time beyond compiling on first use.
"""
