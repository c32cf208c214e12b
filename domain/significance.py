"""Change-significance thresholds: a recalculation that moves a result less than its epsilon propagates
nothing (no dirty entity, no ``Change.metrics`` entry, so no invalidation and no notification).

Moves are measured against the last *propagated* value, not the previous one, so a slow drift made of
many sub-epsilon steps is still propagated once its total reaches the epsilon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Epsilons:
    """Per-result thresholds. Relative ones are fractions of the previous value."""

    floor_rel: float = 0.001
    twap_rel: float = 0.005
    volume_rel: float = 0.0
    price_rel: float = 0.005
    trust_abs: float = 0.5
    share_abs: float = 0.005
    entropy_rel: float = 0.001
    #: A collection's social attention (``domain.attention``).
    attention_rel: float = 0.01
    #: Modified z-scores of the market condition.
    z_abs: float = 0.25
    rarity_score_abs: float = 0.01
    #: A rank move is significant from this fraction of the supply (at least one position).
    rarity_rank_fraction: float = 0.01

    def rank_eps(self, supply: int) -> int:
        """Positions a token's rarity rank must move before it is propagated."""
        return max(1, math.ceil(self.rarity_rank_fraction * supply))


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float, Decimal)):
        return float(value)
    try:
        return float(Decimal(str(value)))
    except ArithmeticError:
        return None


def moved(before: Any, after: Any, *, rel: float | None = None, abs_: float | None = None) -> bool:
    """True when ``after`` differs from ``before`` by at least the epsilon (any change when none given).

    Appearing or disappearing (None on one side) always counts; non-numeric values compare by equality.
    """
    if before == after:
        return False
    if rel is None and abs_ is None:
        return True
    x, y = _number(before), _number(after)
    if x is None or y is None:
        return True
    delta = abs(y - x)
    if abs_ is not None:
        return delta >= abs_
    assert rel is not None
    if rel == 0.0:
        return delta > 0
    scale = abs(x)
    return delta > 0 if scale == 0 else delta / scale >= rel
