"""Classification and priority; the book's ordering, dedupe and significance behaviour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from nftpulse.core.settings import Settings
from nftpulse.domain.book import CollectionBook
from nftpulse.domain.classify import (
    ClassifyContext,
    Thresholds,
    aged,
    classify,
    is_significant,
    priority_class,
)
from nftpulse.domain.events import Event, creator_key
from nftpulse.domain.impact import DependencyGraph, analyze

CHAIN, CONTRACT = "ethereum", "0x" + "d" * 40
A, B, C = ("0x" + c * 40 for c in "abc")
T0 = datetime(2026, 3, 1, tzinfo=UTC)
_n = 0
#: The thresholds a default deployment runs with: the settings own their values.
TH = Thresholds(
    significant_priority=Settings.model_fields["significant_priority"].default,
    large_move=Settings.model_fields["large_move"].default,
)


def ev(
    kind: str, token: str | None, data: dict[str, Any], block: int | None = None, hours: float = 0
) -> Event:
    global _n
    _n += 1
    return Event(
        id=f"x{_n}",
        source="test",
        type=kind,
        occurred_at=T0 + timedelta(hours=hours),
        chain=CHAIN,
        contract=CONTRACT,
        token_id=token,
        block_number=block,
        log_index=0 if block is not None else None,
        data=data,
    )


def no_rates(base: str, quote: str, at: datetime) -> Decimal | None:
    return None


def eth(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "ETH"}


def test_priority_parts_and_classes() -> None:
    fraud = ev("fraud_finding", None, {"finding_id": "f", "kind": "rug", "severity": "critical"})
    verdict = classify(fraud, ClassifyContext(TH, watchers=50, source_reliability=0.9))
    assert verdict.significant and verdict.priority_class == "critical"
    assert verdict.priority == min(100.0, round(sum(p["points"] for p in verdict.parts), 2))
    assert {p["part"] for p in verdict.parts} >= {
        "urgency",
        "impact",
        "watchers",
        "reliability",
        "boost",
        "aging",
    }

    at_floor = ev("sale", "1", {"from": A, "to": B, "price": eth("1")}, block=1)
    double = ev("sale", "1", {"from": A, "to": B, "price": eth("2")}, block=2)
    ctx = ClassifyContext(TH, floor=Decimal(1), watchers=3)
    low, high = classify(at_floor, ctx), classify(double, ctx)
    assert high.priority > low.priority
    assert any(p["part"] == "boost" for p in high.parts) and not any(p["part"] == "boost" for p in low.parts)
    assert high.entities["nft"] == f"nft:{CHAIN}:{CONTRACT}:1"
    assert f"wallet:{A}" in high.entities["wallets"]


def test_aging_prevents_starvation() -> None:
    tick = ev("social_signal", None, {"platform": "x", "metric": "mentions", "value": 3})
    fresh = classify(tick, ClassifyContext(TH, source_reliability=0.5))
    waited = classify(tick, ClassifyContext(TH, source_reliability=0.5, waited_s=3600))
    assert waited.priority > fresh.priority
    assert priority_class(fresh.priority) == "low"
    assert waited.priority >= fresh.priority + 50
    assert not fresh.significant
    zero = Thresholds(significant_priority=0, large_move=TH.large_move)
    assert classify(tick, ClassifyContext(zero)).significant


@pytest.mark.parametrize("waited_s", [0.0, 5.0, 90.0, 1800.0, 86400.0])
def test_aging_a_stored_priority_equals_classifying_after_the_wait(waited_s: float) -> None:
    """The priority classified at ingest plus the aging part (``aged``, how the dispatcher orders work)
    equals classifying the event again after its wait, to the hundredth."""
    for event, floor in [
        (ev("sale", "1", {"from": A, "to": B, "price": eth("3")}, block=1), Decimal(1)),
        (ev("social_signal", None, {"platform": "x", "metric": "mentions", "value": 3}), None),
        (ev("listing", "2", {"seller": A, "price": eth("0.5")}, block=2), Decimal(1)),
    ]:
        at_ingest = classify(event, ClassifyContext(TH, floor=floor))
        later = classify(event, ClassifyContext(TH, floor=floor, waited_s=waited_s))
        assert aged(at_ingest.priority, waited_s, TH) == pytest.approx(later.priority, abs=0.011)
        # Significance is what the event is: the wait never changes it (the dispatcher routes by the
        # classified priority).
        assert is_significant(event.type.value, at_ingest.priority, TH) == later.significant
        assert later.significant == at_ingest.significant


def test_creator_keys_name_the_chain() -> None:
    """Classification names creators as creator subscriptions do: ``creator:<chain>:<address>``."""
    mint = ev("mint", "1", {"to": A, "creator": C.upper().replace("0X", "0x")}, block=1)
    verdict = classify(mint, ClassifyContext(TH))
    assert verdict.entities["creator"] == creator_key(CHAIN, C) == f"creator:{CHAIN}:{C}"


def test_sale_before_its_mint_equals_chain_order() -> None:
    mint = ev("mint", "7", {"to": A, "traits": {"bg": "red"}}, block=10)
    other = ev("mint", "8", {"to": C, "traits": {"bg": "blue"}}, block=11)
    sale = ev("sale", "7", {"from": A, "to": B, "price": eth("1.5")}, block=12, hours=1)
    late = CollectionBook.empty(CHAIN, CONTRACT)
    for event in (sale, other, mint):
        late.apply(event, no_rates)
    in_order = CollectionBook.recompute(CHAIN, CONTRACT, [mint, other, sale], no_rates)
    assert late.nft_view("7") == in_order.nft_view("7")
    assert late.collection_view() == in_order.collection_view()
    assert late.nft_view("7")["owner"] == B


def test_same_sale_twice_counts_once() -> None:
    sale = ev("sale", "1", {"from": A, "to": B, "price": eth("1")}, block=3)
    book = CollectionBook.empty(CHAIN, CONTRACT)
    book.apply(sale, no_rates)
    book.apply(sale, no_rates)
    assert book.sales_count == 1 and book.volume == Decimal(1)


def test_small_floor_moves_propagate_nothing() -> None:
    book = CollectionBook.empty(CHAIN, CONTRACT)
    for i, owner in enumerate((A, B, C)):
        book.apply(ev("mint", str(i), {"to": owner}, block=i), no_rates)
    book.apply(ev("listing", "0", {"seller": A, "price": eth("1")}, block=10), no_rates)
    book.apply(ev("listing", "1", {"seller": B, "price": eth("2")}, block=11), no_rates)
    tiny = book.apply(ev("listing", "1", {"seller": B, "price": eth("0.9995")}, block=12), no_rates)
    assert (book.key, "floor") not in tiny.metrics  # 0.05% < floor_rel 0.1%
    assert not tiny.all_nfts
    assert tiny.nfts == {"1"}  # its own listing changed
    big = book.apply(ev("listing", "2", {"seller": C, "price": eth("0.9")}, block=13), no_rates)
    assert big.metrics[(book.key, "floor")] == ("1", "0.9")  # measured against the last propagated floor
    assert big.all_nfts


def test_fraud_finding_opens_and_resolves() -> None:
    book = CollectionBook.empty(CHAIN, CONTRACT)
    book.apply(ev("mint", "1", {"to": A}, block=1), no_rates)
    opened = ev(
        "fraud_finding", None, {"finding_id": "f9", "kind": "stolen", "severity": "high", "wallets": [A]}
    )
    impact = analyze([opened], book)
    assert impact.nfts >= {"1"} and "risk" in impact.collection_factors and impact.severity == "high"
    change = book.apply(opened, no_rates)
    assert "1" in change.nfts
    assert book.nft_view("1")["risk"]["level"] == "high"
    resolved = ev("fraud_finding", None, {"finding_id": "f9", "kind": "stolen", "severity": "high",
                                          "status": "resolved"}, hours=1)  # fmt: skip
    book.apply(resolved, no_rates)
    assert book.nft_view("1")["risk"]["level"] == "low"


def test_creator_graph_and_verification() -> None:
    book = CollectionBook.empty(CHAIN, CONTRACT)
    book.apply(ev("mint", "1", {"to": A, "creator": C, "verified_creator": True}, block=1), no_rates)
    graph = DependencyGraph()
    graph.observe(book)
    assert graph.collections_of(C) == {book.key}
    assert book.collection_view()["verified_creator"] is True
    assert DependencyGraph.holdings(book, A) == {"1"}
    # Impact analysis names the creator with the same key as classification and subscriptions.
    impact = analyze([ev("transfer", "1", {"from": A, "to": B}, block=2)], book)
    assert creator_key(CHAIN, C) in impact.entity_keys(book)
