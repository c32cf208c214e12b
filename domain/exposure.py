"""The user's exposure: what the holding a notification concerns is worth, and the order it implies.

Pure functions (no I/O). Detection gathers the facts — the current owner and price of each changed NFT,
the floor of each changed collection, how many tokens of it the user's wallets hold, exchange rates — and
asks this module what the user's position is worth and in which order the user's notifications of one
batch go out and take the hourly budget's slots.

- A held NFT is worth its price estimate, or its last sale when there is no estimate.
- A collection position is worth the number of held tokens times the floor.
- Anything the user does not hold (or cannot be valued) has no exposure; the order then falls back to
  severity, then magnitude.

Values are compared in one reference currency (ETH): a position quoted in another currency counts only
when a rate to ETH is known, otherwise it has no exposure rather than a wrong one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REFERENCE_CURRENCY = "ETH"


class Position(BaseModel):
    """The user's holding one notification is about, valued in its own quote currency."""

    model_config = ConfigDict(frozen=True)

    entity_key: str
    quantity: int = Field(ge=1)
    #: Value of the whole position (quantity times unit value), in ``currency``; None when unknown.
    value: Decimal | None
    currency: str


def decimal_or_none(value: Any) -> Decimal | None:
    """A finite, non-negative Decimal from stored text, or None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() and d >= 0 else None


def nft_position(
    entity_key: str,
    owner: str | None,
    wallets: Iterable[str],
    price_estimate: Any,
    last_sale: Any,
    currency: str | None,
) -> Position | None:
    """The user's position in one NFT: held when its current owner is one of the user's wallets."""
    if owner is None or owner.lower() not in {w.lower() for w in wallets}:
        return None
    unit = decimal_or_none(price_estimate)
    if unit is None:
        unit = decimal_or_none(last_sale)
    return Position(
        entity_key=entity_key, quantity=1, value=unit, currency=(currency or REFERENCE_CURRENCY).upper()
    )


def collection_position(entity_key: str, held: int, floor: Any, currency: str | None) -> Position | None:
    """The user's position in a collection: ``held`` tokens at the floor each."""
    if held <= 0:
        return None
    unit = decimal_or_none(floor)
    return Position(
        entity_key=entity_key,
        quantity=held,
        value=None if unit is None else unit * held,
        currency=(currency or REFERENCE_CURRENCY).upper(),
    )


def reference_value(position: Position | None, to_reference: Mapping[str, Decimal]) -> Decimal:
    """The position's value in ETH: ``to_reference`` maps a currency to its ETH rate. Zero when there is
    no position, no value, or no rate (so that ranking falls back to severity)."""
    if position is None or position.value is None:
        return Decimal(0)
    if position.currency == REFERENCE_CURRENCY:
        return position.value
    rate = to_reference.get(position.currency)
    return position.value * rate if rate is not None and rate > 0 else Decimal(0)


def exposure_order(exposure: Decimal, severity_rank: int, magnitude: float) -> tuple[Decimal, int, float]:
    """Sort key (ascending = most important first): largest exposure, then severity, then magnitude."""
    return (-exposure, -severity_rank, -magnitude)
