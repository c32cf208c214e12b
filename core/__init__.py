"""The bottom layer: what every part of Pulse shares (settings, metrics, logs, tracing).

It imports nothing of Pulse, so every other folder may import it.
"""
