"""Price estimate per NFT: ``{value, low, high, currency}``. Pure.

``anchor`` is the mean of the spot floor and the time-weighted floor (whichever exist). The trait
premium scales the anchor by how much rarer than average the token is: OpenRarity scores average
exactly 1, so ``premium = anchor * rate * clamp(score - 1, 0, cap)``. The token's last sale that is not
wash-flagged pulls the estimate towards itself with a weight halving every ``half_life_days`` whole
days (whole days so that estimates move at day boundaries, not on every tick of the clock). The bounds
are the smallest and largest of the inputs (floor, TWAP, anchor with premium, last sale), widened by
``spread`` when they collapse into one point.

The best standing offer (the token's own or a collection offer, not expired at the book's clock) is a
price the token can be sold at now: it is a floor under the estimate. The low bound, the value and the
high bound are each raised to at least the offer; with nothing else to go by, the offer is the estimate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

QUANTUM = Decimal("1e-8")


@dataclass(frozen=True)
class PriceParams:
    """Tunable constants of the estimate."""

    premium_rate: Decimal = Decimal("0.5")
    premium_cap: Decimal = Decimal("2")
    half_life_days: int = 14
    spread: Decimal = Decimal("0.05")


@functools.lru_cache(maxsize=4096)
def decay_weight(age_days: int, half_life_days: int) -> Decimal:
    """``0.5 ** (age / half-life)`` for whole days, as a Decimal so the blend stays exact and repeatable.

    Cached: a Decimal power with a fractional exponent costs ~70 µs, five times the rest of an estimate,
    and read models ask for it for every token they show, with few distinct ages."""
    if age_days <= 0:
        return Decimal(1)
    return (Decimal("0.5") ** (Decimal(age_days) / Decimal(half_life_days))).quantize(Decimal("1e-12"))


def estimate(
    *,
    floor: Decimal | None,
    twap: Decimal | None,
    rarity_score: float | None,
    last_sale: Decimal | None,
    last_sale_age_days: int | None,
    currency: str,
    params: PriceParams | None = None,
    best_offer: Decimal | None = None,
) -> dict[str, Any]:
    """The estimate; every amount is None when there is neither a floor nor a clean sale to go by."""
    p = params or PriceParams()
    anchors = [x for x in (floor, twap) if x is not None]
    base: Decimal | None = None
    if anchors:
        anchor = sum(anchors, Decimal(0)) / len(anchors)
        excess = Decimal(repr(max(0.0, (rarity_score or 0.0) - 1.0))).quantize(Decimal("1e-9"))
        base = anchor + anchor * p.premium_rate * min(excess, p.premium_cap)
    value: Decimal | None
    if base is not None and last_sale is not None:
        weight = decay_weight(last_sale_age_days or 0, p.half_life_days)
        value = weight * last_sale + (1 - weight) * base
    else:
        value = base if base is not None else last_sale
    if value is None:
        value = best_offer
    if value is None:
        return {"value": None, "low": None, "high": None, "currency": currency}
    candidates = [x for x in (floor, twap, base, last_sale, value) if x is not None]
    low, high = min(candidates), max(candidates)
    if low == high:
        low, high = value * (1 - p.spread), value * (1 + p.spread)
    if best_offer is not None and best_offer > 0:
        # Someone stands ready to pay the offer: nothing below it is a fair estimate.
        low, value, high = max(low, best_offer), max(value, best_offer), max(high, best_offer)
    return {
        "value": str(value.quantize(QUANTUM)),
        "low": str(low.quantize(QUANTUM)),
        "high": str(high.quantize(QUANTUM)),
        "currency": currency,
    }
