"""The user's exposure (domain/exposure.py): positions, their value in ETH, and the order they imply."""

from __future__ import annotations

from decimal import Decimal

from nftpulse.domain.exposure import (
    Position,
    collection_position,
    decimal_or_none,
    exposure_order,
    nft_position,
    reference_value,
)

NFT = "nft:ethereum:0xab:1"
COLL = "collection:ethereum:0xab"
MINE = {"0x" + "a1" * 20}


def test_held_nft_is_worth_its_estimate_then_its_last_sale() -> None:
    owner = "0x" + "A1" * 20  # addresses compare case-insensitively
    pos = nft_position(NFT, owner, MINE, "12.5", "9", "ETH")
    assert pos == Position(entity_key=NFT, quantity=1, value=Decimal("12.5"), currency="ETH")
    fallback = nft_position(NFT, owner, MINE, None, "9", "ETH")
    assert fallback is not None and fallback.value == Decimal("9")
    unknown = nft_position(NFT, owner, MINE, None, None, None)
    assert unknown is not None and unknown.value is None and reference_value(unknown, {}) == 0


def test_nft_not_held_has_no_position() -> None:
    assert nft_position(NFT, "0x" + "b2" * 20, MINE, "12.5", None, "ETH") is None
    assert nft_position(NFT, None, MINE, "12.5", None, "ETH") is None  # burned
    assert nft_position(NFT, "0x" + "a1" * 20, set(), "12.5", None, "ETH") is None


def test_collection_position_is_held_tokens_times_floor() -> None:
    pos = collection_position(COLL, 3, "1.25", "eth")
    assert pos is not None and pos.value == Decimal("3.75") and pos.currency == "ETH" and pos.quantity == 3
    assert collection_position(COLL, 0, "1.25", "ETH") is None
    no_floor = collection_position(COLL, 2, None, "ETH")
    assert no_floor is not None and no_floor.value is None


def test_reference_value_converts_or_gives_up() -> None:
    pol = collection_position(COLL, 10, "100", "POL")
    assert reference_value(pol, {"POL": Decimal("0.0001")}) == Decimal("0.1")
    # Without a rate a foreign position counts as unknown, never as its face value.
    assert reference_value(pol, {}) == 0
    assert reference_value(None, {}) == 0


def test_order_prefers_exposure_then_severity_then_magnitude() -> None:
    items = {
        "big-info": exposure_order(Decimal(50), 0, 1.0),
        "small-crit": exposure_order(Decimal(1), 2, 1.0),
        "none-crit": exposure_order(Decimal(0), 2, 1.0),
        "none-warn-loud": exposure_order(Decimal(0), 1, 5.0),
        "none-warn": exposure_order(Decimal(0), 1, 1.0),
    }
    assert sorted(items, key=items.__getitem__) == [
        "big-info",
        "small-crit",
        "none-crit",
        "none-warn-loud",
        "none-warn",
    ]


def test_decimal_or_none() -> None:
    assert decimal_or_none("1.5") == Decimal("1.5")
    for bad in (None, True, "abc", "NaN", "Infinity", "-1"):
        assert decimal_or_none(bad) is None
