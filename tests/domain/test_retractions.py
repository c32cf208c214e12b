"""Retractions: random streams with retractions interleaved, delivered in any order, in random batches and
with repeats, applied the way the pipeline applies them (``retract.plan_batch``, refolding from the log when
a retraction meets an applied event) give the state of the log without the retracted events."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nftpulse.domain.book import CollectionBook
from nftpulse.domain.book.retract import effective, plan_batch, ref, refold_change
from nftpulse.domain.events import Event, EventType
from tests.domain.eventgen import CHAIN, CONTRACT, T0, assert_close, rates, streams

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def retraction(n: int, target: Event | None, source: str = "gen-r") -> Event:
    return Event(
        id=f"r{n}",
        source=source,
        type=EventType.RETRACTION,
        occurred_at=T0 + timedelta(days=400),
        chain=CHAIN,
        contract=CONTRACT,
        data={"retracts": {"source": "gen", "id": target.id if target is not None else f"ghost{n}"}},
    )


def views(book: CollectionBook) -> dict[str, Any]:
    return {"collection": book.collection_view(), **{t: book.nft_view(t) for t in sorted(book.tokens)}}


def incremental(deliveries: list[Event], cuts: list[int]) -> CollectionBook:
    """The pipeline's bookkeeping in memory: the log (first delivery of each (source, id) wins), what
    retractions named, what is in the state; each batch planned, refolded when a retraction meets an
    applied event, then applied."""
    log: dict[tuple[str, str], Event] = {}
    retracted: set[tuple[str, str]] = set()
    in_state: set[tuple[str, str]] = set()
    book = CollectionBook.empty(CHAIN, CONTRACT)
    batches, start = [], 0
    for cut in [*sorted(cuts), len(deliveries)]:
        batches.append(deliveries[start:cut])
        start = cut
    for batch in batches:
        fresh = []
        for event in batch:
            if ref(event) not in log:
                log[ref(event)] = event
                fresh.append(event)
        fresh.sort(key=lambda e: (e.order_key, e.source, e.id))
        named = {t for e in fresh if e.type is EventType.RETRACTION for t in [plan_target(e)]}
        step = plan_batch(fresh, retracted & (named | {ref(e) for e in fresh}), in_state & named)
        retracted |= named
        if step.refold:
            in_state -= set(step.undone)
            before = book
            book = CollectionBook.recompute(CHAIN, CONTRACT, [log[r] for r in in_state], rates)
            change = refold_change(before, book)
            assert change.collection and change.nfts == set(book.tokens)
        _, failed = book.apply_batch(step.apply, rates)
        bad = {ref(e) for e, _ in failed}
        in_state |= {ref(e) for e in step.apply if ref(e) not in bad}
    return book


def plan_target(event: Event) -> tuple[str, str]:
    from nftpulse.domain.events import retraction_target

    target = retraction_target(event)
    assert target is not None
    return target


@SETTINGS
@given(streams(), st.randoms(use_true_random=False), st.data())
def test_retractions_in_any_order_equal_the_log_without_them(
    events: list[Event], rnd: random.Random, data: st.DataObject
) -> None:
    unique = list({ref(e): e for e in reversed(events)}.values())
    targets = data.draw(st.lists(st.sampled_from([*unique, None]), max_size=8))
    # Some events retracted twice (by two retractions), some retractions delivered twice, some unknown.
    retractions = [retraction(n, t) for n, t in enumerate(targets)]
    again = data.draw(st.lists(st.sampled_from(retractions), max_size=3)) if retractions else []
    deliveries = events + retractions + again
    rnd.shuffle(deliveries)
    cuts = data.draw(st.lists(st.integers(0, len(deliveries)), max_size=6))
    got = incremental(deliveries, cuts)
    gone = {ref(t) for t in targets if t is not None}
    # The reference, defined without retractions at all: the log minus the retracted events.
    expected = CollectionBook.recompute(CHAIN, CONTRACT, [e for e in unique if ref(e) not in gone], rates)
    assert set(got.tokens) == set(expected.tokens)
    assert_close(views(got), views(expected))
    # And the recompute over the whole log, retractions included, is that same state (``pulse verify``).
    assert_close(views(CollectionBook.recompute(CHAIN, CONTRACT, deliveries, rates)), views(expected))


def test_effective_leaves_out_retractions_and_what_they_name() -> None:
    a, b = (
        Event(
            id=i,
            source="gen",
            type=EventType.MINT,
            occurred_at=T0,
            chain=CHAIN,
            contract=CONTRACT,
            token_id=t,
            data={"to": "0x" + "1" * 40},
        )
        for i, t in (("a", "1"), ("b", "2"))
    )
    r = retraction(0, a)
    assert effective([a, b, r]) == [b]
    assert effective([a, b]) == [a, b]
    other = retraction(1, a).model_copy(update={"data": {"retracts": {"source": "elsewhere", "id": "a"}}})
    assert effective([a, other]) == [a]


def test_a_refold_reports_the_reversal_for_the_change_feed() -> None:
    mint = Event(
        id="m",
        source="gen",
        type=EventType.MINT,
        occurred_at=T0,
        chain=CHAIN,
        contract=CONTRACT,
        token_id="1",
        block_number=1,
        log_index=0,
        data={"to": "0x" + "1" * 40},
    )
    sale = Event(
        id="s",
        source="gen",
        type=EventType.SALE,
        occurred_at=T0 + timedelta(hours=1),
        chain=CHAIN,
        contract=CONTRACT,
        token_id="1",
        block_number=2,
        log_index=0,
        data={"from": "0x" + "1" * 40, "to": "0x" + "2" * 40, "price": {"amount": "2", "currency": "ETH"}},
    )
    with_sale = CollectionBook.recompute(CHAIN, CONTRACT, [mint, sale], rates)
    without = CollectionBook.recompute(CHAIN, CONTRACT, [mint, sale, retraction(0, sale)], rates)
    change = refold_change(with_sale, without)
    nft = with_sale.nft_key("1")
    assert change.metrics[(nft, "owner")] == ("0x" + "2" * 40, "0x" + "1" * 40)
    assert change.metrics[(with_sale.key, "sales_count")] == (1, 0)
    # A retracted mint: the token leaves the book, and the feed is told its owner is gone.
    gone = refold_change(with_sale, CollectionBook.recompute(CHAIN, CONTRACT, [], rates))
    assert gone.metrics[(nft, "owner")] == ("0x" + "2" * 40, None)
