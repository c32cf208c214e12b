"""Hypothesis strategies for random event streams of one small collection."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from nftpulse.domain.events import ZERO_ADDRESS, Event

CHAIN = "ethereum"
CONTRACT = "0x" + "c" * 40
WALLETS = ["0x" + f"{i:040x}" for i in range(1, 6)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOKENS = [str(i) for i in range(6)]
#: ERC-1155 token ids: moved in quantities, held by many wallets at once.
MULTI_TOKENS = ["1155", "1156"]
TRAITS = {"bg": ["red", "blue", "green"], "hat": ["cap", "crown"], "eyes": ["laser", "sleepy", "wide"]}


def rates(base: str, quote: str, at: datetime) -> Decimal | None:
    """A fixed USDC/ETH rate; anything else is unpriced."""
    return Decimal("0.0004") if (base, quote) == ("USDC", "ETH") else None


traits_st = st.dictionaries(
    st.sampled_from(sorted(TRAITS)),
    st.sampled_from(["red", "blue", "cap", "crown", "laser", "wide", "1", "true"]),
)
price_st = st.builds(
    lambda amount, currency: {"amount": amount, "currency": currency},
    st.sampled_from(["0.5", "1", "1.25", "2", "3.5", "10"]),
    st.sampled_from(["ETH", "ETH", "WETH", "USDC"]),
).map(
    lambda p: (
        p if p["currency"] != "USDC" else {"amount": str(Decimal(p["amount"]) * 2500), "currency": "USDC"}
    )
)
wallet_st = st.sampled_from(WALLETS)


@st.composite
def event_specs(draw: Any) -> dict[str, Any]:
    """One event's type, token and data (order and times are assigned by :func:`streams`)."""
    kind = draw(
        st.sampled_from(
            [
                "mint",
                "mint",
                "transfer",
                "burn",
                "sale",
                "sale",
                "listing",
                "listing",
                "listing_cancelled",
                "metadata_update",
                "metadata_update",
                "fraud_finding",
                "bid",
                "bid",
                "mint1155",
                "transfer1155",
                "sale1155",
                "burn1155",
                "social_signal",
            ]
        )
    )
    token = draw(st.sampled_from(TOKENS))
    data: dict[str, Any]
    if kind.endswith("1155"):
        token = draw(st.sampled_from(MULTI_TOKENS))
        kind = kind.removesuffix("1155")
        data = {"quantity": draw(st.sampled_from([1, 2, 5, 40])), "standard": "erc1155"}
        if kind in ("transfer", "sale", "burn"):
            data["from"] = draw(wallet_st)
        if kind in ("mint", "transfer", "sale"):
            data["to"] = draw(wallet_st)
        if kind == "sale":
            data["price"] = draw(price_st)
    elif kind == "social_signal":
        token = None
        data = {"platform": "x", "metric": "mentions", "value": 3.0}
        if draw(st.booleans()):
            data["weight"] = draw(st.sampled_from([0.0, 0.5, 2.0, 10.0]))
    elif kind == "mint":
        data = {"to": draw(wallet_st)}
        if draw(st.booleans()):
            data["traits"] = draw(traits_st)
    elif kind == "transfer":
        data = {"from": draw(wallet_st), "to": draw(st.sampled_from([*WALLETS, ZERO_ADDRESS]))}
    elif kind == "burn":
        data = {"from": draw(wallet_st)}
    elif kind == "sale":
        data = {"from": draw(wallet_st), "to": draw(wallet_st), "price": draw(price_st)}
        if draw(st.booleans()):
            data["buyer_funder"] = draw(wallet_st)
            data["seller_funder"] = draw(wallet_st)
    elif kind == "listing":
        data = {"seller": draw(wallet_st), "price": draw(price_st)}
        if draw(st.booleans()):
            data["expires_at"] = (T0 + timedelta(hours=draw(st.integers(1, 400)))).isoformat()
    elif kind == "listing_cancelled":
        data = {"seller": draw(wallet_st)}
    elif kind == "metadata_update":
        data = {"traits": draw(traits_st)}
    elif kind == "fraud_finding":
        data = {
            "finding_id": draw(st.sampled_from(["f1", "f2", "f3"])),
            "kind": "wash_trading",
            "severity": draw(st.sampled_from(["low", "medium", "high", "critical"])),
            "status": draw(st.sampled_from(["open", "open", "resolved"])),
        }
        if draw(st.booleans()):
            data["wallets"] = [draw(wallet_st)]
        if not draw(st.booleans()):
            token = None
    else:
        data = {
            "bidder": draw(wallet_st),
            "price": draw(st.one_of(price_st, st.just({"amount": "0", "currency": "ETH"}))),
        }
        if draw(st.booleans()):
            data["expires_at"] = (T0 + timedelta(hours=draw(st.integers(1, 400)))).isoformat()
        if draw(st.integers(0, 2)) == 0:
            token = None  # a collection offer, or an offer for the tokens with a trait, of 1 to 3 items
            if draw(st.booleans()):
                data["trait"] = {"type": "bg", "value": draw(st.sampled_from(["red", "blue"]))}
            data["quantity"] = draw(st.integers(1, 3))
    if draw(st.integers(0, 9)) == 0:
        data["verified_creator"] = draw(st.booleans())
    return {"kind": kind, "token": token, "data": data, "chain_ordered": draw(st.integers(0, 5)) > 0}


@st.composite
def streams(draw: Any, min_size: int = 1, max_size: int = 40) -> list[Event]:
    """A stream in chain order with unique positions, some duplicates, spread over hours to weeks."""
    specs = draw(st.lists(event_specs(), min_size=min_size, max_size=max_size))
    hours_per_step = draw(st.sampled_from([0.5, 3, 24, 72]))
    events: list[Event] = []
    for i, spec in enumerate(specs):
        at = T0 + timedelta(hours=hours_per_step * i, seconds=draw(st.integers(0, 59)))
        chain = spec["chain_ordered"] or spec["kind"] not in (
            "listing",
            "listing_cancelled",
            "bid",
            "fraud_finding",
        )
        events.append(
            Event(
                id=f"e{i}",
                source="gen",
                type=spec["kind"],
                occurred_at=at,
                chain=CHAIN,
                contract=CONTRACT,
                token_id=spec["token"],
                block_number=100 + i if chain else None,
                log_index=i % 3 if chain else None,
                data=spec["data"],
            )
        )
    duplicates = draw(st.lists(st.sampled_from(events), max_size=3)) if events else []
    return events + duplicates


def dedupe(events: list[Event]) -> list[Event]:
    """What the event log keeps: one event per (source, id)."""
    seen: dict[tuple[str, str], Event] = {}
    for event in events:
        seen.setdefault((event.source, event.id), event)
    return list(seen.values())


def assert_close(a: Any, b: Any, path: str = "", rel: float = 1e-9) -> None:
    """Structural equality with a relative tolerance on floats."""
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), f"{path}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}", rel)
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        assert len(a) == len(b), f"{path}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{i}]", rel)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@st.composite
def tied_streams(draw: Any) -> list[Event]:
    """A deduplicated stream whose events come in runs of 2 to 4 at one chain position (same block, log
    index and time, as the entries of one ERC-1155 batch log or off-chain events of one instant)."""
    events = dedupe(draw(streams()))
    run = draw(st.integers(2, 4))
    out = []
    for i, event in enumerate(events):
        lead = events[i - i % run]
        if (event.block_number is None) == (lead.block_number is None):
            event = event.model_copy(
                update={
                    "block_number": lead.block_number,
                    "log_index": lead.log_index,
                    "occurred_at": lead.occurred_at,
                }
            )
        out.append(event)
    return out
