"""Ports for the servers tests and benchmarks start on 127.0.0.1.

A port the OS picks (bind to port 0) comes from the kernel's ephemeral range, the same range it draws the
source ports of outgoing connections from. Between the check and the server's own bind, any client
connection of the run (to Postgres, to Temporal) can take it, and the server then fails with "address
already in use". Ports below that range are never handed out to clients, so a port free here stays free
unless another server takes it; ports already handed out in this process are not handed out again.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000
_given: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def _candidates() -> range:
    low, high = _ephemeral_range()
    if low - _LOWEST >= 1000:
        return range(_LOWEST, low)
    return range(high + 1, 65536)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, outside the ephemeral range, not given out before here."""
    candidates = _candidates()
    for _ in range(2000):
        port = random.choice(candidates)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {candidates.start}-{candidates.stop - 1}")
