"""Pulse: the wiring package (settings, entry points, CLI) around domain/, store/, workflows/, activities/, api/."""
