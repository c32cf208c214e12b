"""A collection's ``attention``: how much social signal it drew lately. Pure.

    attention = Σ weight_i · 0.5 ** ((clock - t_i) / HALF_LIFE)

over the collection's ``social_signal`` events, where ``t_i`` is a signal's ``occurred_at``, ``weight_i``
its ``data.weight`` (1 unless the producer weights it) and ``clock`` the book's clock (its latest
``occurred_at``, never the wall clock). A signal counts once (by ``source:id``) and halves every
:data:`HALF_LIFE_US`: a burst of mentions reads as a jump that fades over days. Signals older than
:data:`HORIZON_HALF_LIVES` half-lives add less than 1e-12 of their weight and are left out, so what a book
keeps stays bounded and the figure does not depend on when they were dropped. Summed with ``math.fsum``
(correctly rounded whatever the order), so that a book folded in any order reads exactly the same float.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

HALF_LIFE_US = 24 * 3600 * 1_000_000
HORIZON_HALF_LIVES = 40


def attention(signals: Mapping[str, tuple[int, float]], clock_us: int | None) -> float:
    """The decayed sum of ``uid -> (t_us, weight)`` at ``clock_us`` (0 without a clock), to 6 places."""
    if clock_us is None or not signals:
        return 0.0
    horizon = clock_us - HORIZON_HALF_LIVES * HALF_LIFE_US
    total = math.fsum(
        weight * 0.5 ** (max(0, clock_us - at) / HALF_LIFE_US)
        for at, weight in signals.values()
        if at >= horizon
    )
    return round(total, 6)


def prune(signals: dict[str, tuple[int, float]], clock_us: int | None) -> None:
    """Drop the signals :func:`attention` no longer counts at ``clock_us`` (the clock only moves on)."""
    if clock_us is None:
        return
    horizon = clock_us - HORIZON_HALF_LIVES * HALF_LIFE_US
    for uid in [uid for uid, (at, _) in signals.items() if at < horizon]:
        del signals[uid]
