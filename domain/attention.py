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
#: :func:`attention` is rounded to 6 places: one unit of the last.
UNIT = 1e-6
#: The decay is scheduled (:func:`next_fall`) no sooner than this after the clock: however small the
#: epsilon, a collection's clock does not spin on it.
MIN_STEP_US = 60 * 1_000_000


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


def next_fall(current: float, published: float | None, rel: float, clock_us: int) -> int | None:
    """The instant (microseconds, at least :data:`MIN_STEP_US` after ``clock_us``) at which the attention,
    ``current`` at ``clock_us`` and decaying with no new signal, has fallen by the relative epsilon ``rel``
    from ``published`` (the value last propagated; None: ``current``). None: there is nothing to decay.

    Every counted signal is at or before the clock, so the sum decays as one: ``current · 0.5 ** (dt /
    HALF_LIFE)``, which reaches a target in ``dt = HALF_LIFE · log2(current / target)``. The target sits
    two units of the rounding below ``published · (1 - rel)`` so that the rounded figure is past the
    epsilon at that instant, and is a fraction of a unit when that is below one (the figure reads 0)."""
    if current <= 0:
        return None
    reference = current if published is None or published <= 0 else published
    target = max(reference * (1 - rel) - 2 * UNIT, UNIT / 4)
    if current <= target:
        return clock_us + MIN_STEP_US
    dt = math.ceil(HALF_LIFE_US * math.log2(current / target))
    return clock_us + max(dt, MIN_STEP_US)
