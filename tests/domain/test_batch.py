"""Property tests of ``CollectionBook.apply_batch``: batches equal the recompute, failures leave no trace.

Same tolerance as ``test_properties`` (floats within 1e-9 relative; in practice bit-identical).
"""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nftpulse.domain.book import CollectionBook, InconsistentEventError, UnpricedEventError
from nftpulse.domain.events import Event
from nftpulse.domain.stats import OPEN, FloorSeries, ListingIndex
from nftpulse.domain.trust import SaleRecord, WashIndex, wash_flags
from tests.domain.eventgen import CHAIN, CONTRACT, assert_close, rates, streams
from tests.domain.test_properties import SETTINGS, ZERO, arrival, assert_reads_exact, rows, views, write


def _batches(events: list[Event], rnd: random.Random) -> list[list[Event]]:
    """``events`` cut at random points into batches of 1 to 12 events."""
    out, at = [], 0
    while at < len(events):
        size = rnd.randint(1, 12)
        out.append(events[at : at + size])
        at += size
    return out


def _state(book: CollectionBook) -> Any:
    return orjson.loads(orjson.dumps(book.to_dict()))


def _poison(events: list[Event], rnd: random.Random) -> Event:
    """An event that must fail: unpriced, of another collection, or with malformed data."""
    base = rnd.choice(events)
    later = base.occurred_at + timedelta(days=rnd.choice([0, 1, 400]))
    kind = rnd.randrange(6)
    data: dict[str, Any]
    common: dict[str, Any] = {"id": f"poison-{rnd.random()}", "occurred_at": later, "token_id": "99"}
    if kind == 0:
        data = {"from": "0x" + "1" * 40, "to": "0x" + "2" * 40, "price": {"amount": "1", "currency": "DOGE"}}
        return base.model_copy(update={**common, "type": "sale", "data": data, "token_id": base.token_id})
    if kind == 1:
        data = {"seller": "0x" + "1" * 40, "price": {"amount": "1", "currency": "DOGE"}}
        return base.model_copy(update={**common, "type": "listing", "data": data})
    if kind == 2:
        return base.model_copy(update={**common, "contract": "0x" + "e" * 40})
    if kind == 3:
        # Missing buyer (built without validation, as a corrupt row would be).
        data = {"from": "0x" + "1" * 40, "price": {"amount": "1", "currency": "ETH"}}
        return base.model_copy(update={**common, "type": "sale", "data": data})
    if kind == 4:
        data = {"traits": "not a mapping", "verified_creator": True}
        return base.model_copy(update={**common, "type": "metadata_update", "data": data})
    data = {"seller": "0x" + "1" * 40, "price": {"amount": "1", "currency": "ETH"}, "expires_at": "soon"}
    return base.model_copy(update={**common, "type": "listing", "data": data})


@SETTINGS
@given(streams(), st.randoms(use_true_random=False))
def test_random_batches_equal_recompute(events: list[Event], rnd: random.Random) -> None:
    unique, shuffled = arrival(events, rnd)
    book = CollectionBook.empty(CHAIN, CONTRACT)
    for batch in _batches(shuffled, rnd):
        _, failed = book.apply_batch(batch, rates)
        assert failed == []
    reference = CollectionBook.recompute(CHAIN, CONTRACT, unique, rates)
    assert_close(views(book), views(reference))
    assert _state(book) == _state(CollectionBook.from_dict(_state(book)))


@SETTINGS
@given(streams(), st.randoms(use_true_random=False))
def test_a_poison_event_leaves_no_trace(events: list[Event], rnd: random.Random) -> None:
    _, shuffled = arrival(events, rnd)
    cut = rnd.randrange(len(shuffled))
    clean, dirty = CollectionBook.empty(CHAIN, CONTRACT), CollectionBook.empty(CHAIN, CONTRACT)
    for book in (clean, dirty):
        book.apply_batch(shuffled[:cut], rates)
    batch = shuffled[cut:]
    poison = [_poison(shuffled, rnd) for _ in range(rnd.randint(1, 3))]
    mixed = batch[:]
    for event in poison:
        mixed.insert(rnd.randint(0, len(mixed)), event)
    expected, none = clean.apply_batch(batch, rates)
    got, failed = dirty.apply_batch(mixed, rates)
    assert none == []
    assert [event for event, _ in failed] == [e for e in mixed if e in poison]
    assert got == expected
    assert _state(dirty) == _state(clean)
    assert_close(views(dirty), views(clean))


@SETTINGS
@given(streams(), st.randoms(use_true_random=False))
def test_apply_raises_and_leaves_the_book(events: list[Event], rnd: random.Random) -> None:
    _, shuffled = arrival(events, rnd)
    book = CollectionBook.empty(CHAIN, CONTRACT)
    book.apply_batch(shuffled, rates)
    state, seen = _state(book), views(book)
    with pytest.raises((ValueError, KeyError, TypeError, ArithmeticError)):
        book.apply(_poison(shuffled, rnd), rates)
    assert _state(book) == state
    assert_close(views(book), seen)


@SETTINGS
@given(streams(max_size=30), st.randoms(use_true_random=False))
def test_with_zero_epsilons_a_batch_reports_every_view_change(
    events: list[Event], rnd: random.Random
) -> None:
    _, shuffled = arrival(events, rnd)
    book = CollectionBook.empty(CHAIN, CONTRACT, ZERO)
    stored: dict[str, Any] = {}
    for batch in _batches(shuffled, rnd):
        before = rows(book)
        change, _ = book.apply_batch(batch, rates)
        after = rows(book)
        if before["collection"] != after["collection"]:
            assert change.collection
        for tid, row in after.items():
            if tid != "collection" and before.get(tid) != row:
                assert tid in change.nfts, tid
        write(stored, book, change)
        assert_reads_exact(stored, book)


def test_errors_are_the_permanent_kinds() -> None:
    assert issubclass(UnpricedEventError, ValueError)
    assert issubclass(InconsistentEventError, ValueError)


sale_st = st.tuples(
    st.integers(0, 60),  # day
    st.sampled_from("ABCD"),  # seller
    st.sampled_from("ABCD"),  # buyer
    st.sampled_from([None, "A", "F"]),  # buyer funder
    st.sampled_from([None, "B", "F"]),  # seller funder
    st.integers(1, 5),  # price
)


@SETTINGS
@given(st.lists(sale_st, max_size=25), st.randoms(use_true_random=False))
def test_wash_index_equals_wash_flags(specs: list[tuple[Any, ...]], rnd: random.Random) -> None:
    day = 86_400_000_000
    sales = [
        SaleRecord((i, 0, ""), f"s{i}", d * day, "t", s, b, Decimal(p), bf, sf)
        for i, (d, s, b, bf, sf, p) in enumerate(specs)
    ]
    arrived = sales[:]
    rnd.shuffle(arrived)
    index = WashIndex()
    for sale in arrived:
        index.add(sale)
    reference = WashIndex.build({"t": sales} if sales else {})
    assert index.flags == reference.flags
    assert wash_flags(sales) == index.flags.get("t", {})
    assert (index.wash_volume, index.flagged, index.sales) == (
        reference.wash_volume,
        reference.flagged,
        reference.sales,
    )
    assert index.token_volume.get("t", Decimal(0)) == reference.token_volume.get("t", Decimal(0))
    assert index.token_wash_volume.get("t", Decimal(0)) == reference.token_wash_volume.get("t", Decimal(0))


interval_st = st.tuples(st.integers(0, 40), st.integers(1, 20), st.integers(1, 6), st.booleans()).map(
    lambda t: (t[0], OPEN if t[3] else t[0] + t[1], Decimal(t[2]))
)


@SETTINGS
@given(st.lists(interval_st, max_size=20), st.lists(interval_st, max_size=5), st.integers(0, 60))
def test_floor_series_update_equals_build(
    first: list[tuple[int, int, Decimal]], extra: list[tuple[int, int, Decimal]], since: int
) -> None:
    def by_end(intervals: list[tuple[int, int, Decimal]]) -> list[tuple[int, int, Decimal]]:
        return sorted((e, s, p) for s, e, p in intervals)

    series = FloorSeries()
    series.update(by_end(first), OPEN)
    assert series == FloorSeries.build(sorted(first))
    changed = sorted(first + [(max(s, since), e, p) for s, e, p in extra if e > max(s, since)])
    series.update(by_end(changed), since)
    assert series == FloorSeries.build(changed)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 30)), max_size=30), st.integers(0, 30))
def test_expiring_equals_a_scan(puts: list[tuple[str, int]], clock: int) -> None:
    index = ListingIndex()
    for tid, hour in puts:
        index.put(tid, Decimal(1), None if hour == 0 else f"2026-01-01T{hour % 24:02d}:{hour // 24:02d}")
    stamp = f"2026-01-01T{clock % 24:02d}:{clock // 24:02d}"
    expected = {t for t, (_, expires) in index.entries.items() if expires and expires <= stamp}
    assert index.expiring(stamp) == expected
