"""The bottom layer: what every part of Pulse shares (settings, metrics, logs, tracing, and the delivery
vocabulary the channels and the API share: ``delivery.py``).

It imports nothing of Pulse, so every other folder may import it.
"""
