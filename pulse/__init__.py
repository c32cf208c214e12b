"""Pulse: the wiring package (settings, entry points, CLI) around the other top-level packages."""
