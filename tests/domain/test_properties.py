"""Property tests: incremental folding in any arrival order equals the full recompute.

Tolerance: floats are compared with a relative tolerance of 1e-9 (in practice they are bit-identical,
since every engine derives its floats from exact integer or Decimal state). Duplicates are removed by
``(source, id)`` before applying, the way the event log does.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nftpulse.domain.book import NFT_DRIVERS, Change, CollectionBook, derive
from nftpulse.domain.events import Event
from nftpulse.domain.impact import analyze
from nftpulse.domain.rarity import TRAIT_COUNT, canonical_traits
from nftpulse.domain.significance import Epsilons
from tests.domain.eventgen import (
    CHAIN,
    CONTRACT,
    T0,
    TRAITS,
    WALLETS,
    assert_close,
    dedupe,
    rates,
    streams,
    tied_streams,
)

#: ``PULSE_EXAMPLES=2000`` for a longer hunt; the default keeps the suite well under a minute.
SETTINGS = settings(
    max_examples=int(os.environ.get("PULSE_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ZERO = Epsilons(
    floor_rel=0.0,
    twap_rel=0.0,
    volume_rel=0.0,
    price_rel=0.0,
    trust_abs=0.0,
    share_abs=0.0,
    entropy_rel=0.0,
    attention_rel=0.0,
    z_abs=0.0,
    rarity_score_abs=0.0,
    rarity_rank_fraction=0.0,
)


def fold(events: list[Event], epsilons: Epsilons | None = None) -> CollectionBook:
    book = CollectionBook.empty(CHAIN, CONTRACT, epsilons)
    for event in events:
        book.apply(event, rates)
    return book


def views(book: CollectionBook) -> dict[str, Any]:
    return {"collection": book.collection_view(), **{tid: book.nft_view(tid) for tid in sorted(book.tokens)}}


def rows(book: CollectionBook) -> dict[str, Any]:
    """What the store holds of a book: the collection's row (its view and the NFTs' factors) and each NFT's
    part, from which a read derives the NFT's view."""
    return {"collection": book.collection_row(), **{tid: book.nft_part(tid) for tid in sorted(book.tokens)}}


def write(stored: dict[str, Any], book: CollectionBook, change: Change) -> None:
    """Write what ``change`` says to rewrite into ``stored``, as recalculation writes the read models."""
    for tid in change.nfts:
        if tid in book.tokens:
            stored[tid] = book.nft_part(tid)
    if change.collection or not book.tokens:
        stored["collection"] = book.collection_row()


def assert_reads_exact(stored: dict[str, Any], book: CollectionBook) -> None:
    """Every NFT read from the stored rows (derived from its part and the collection's factors) is the
    book's own view: nothing a collection-wide move changed needed its NFT rows rewritten."""
    factors = stored["collection"][derive.FACTORS]
    for tid in book.tokens:
        assert derive.nft_view(stored[tid], factors) == book.nft_view(tid), tid


def arrival(events: list[Event], rnd: random.Random) -> tuple[list[Event], list[Event]]:
    unique = dedupe(events)
    shuffled = unique[:]
    rnd.shuffle(shuffled)
    return unique, shuffled


@SETTINGS
@given(streams(), st.randoms(use_true_random=False))
def test_any_arrival_order_equals_recompute(events: list[Event], rnd: random.Random) -> None:
    unique, shuffled = arrival(events, rnd)
    incremental = fold(shuffled)
    reference = CollectionBook.recompute(CHAIN, CONTRACT, unique, rates)
    assert set(incremental.tokens) == set(reference.tokens)
    assert_close(views(incremental), views(reference))


@SETTINGS
@given(streams(), st.randoms(use_true_random=False))
def test_chain_order_equals_recompute(events: list[Event], rnd: random.Random) -> None:
    unique = dedupe(events)
    assert_close(views(fold(unique)), views(CollectionBook.recompute(CHAIN, CONTRACT, unique, rates)))


@SETTINGS
@given(tied_streams(), st.randoms(use_true_random=False))
def test_events_at_one_position_fold_alike_in_any_order(events: list[Event], rnd: random.Random) -> None:
    # Last writer wins by chain position, ties by source:id: a mint and a listing, two transfers or a
    # listing and its cancellation at one position settle the same whichever arrives first.
    shuffled = events[:]
    rnd.shuffle(shuffled)
    book = CollectionBook.empty(CHAIN, CONTRACT)
    for event in shuffled:
        impact = analyze([event], book)
        change = book.apply(event, rates)
        outside = change.nfts - impact.nfts
        assert not outside or (change.all_nfts and impact.nft_drivers), (event.type, outside)
    assert_close(views(book), views(CollectionBook.recompute(CHAIN, CONTRACT, events, rates)))


def test_equal_prices_are_equal_strings() -> None:
    # 2,500 USDC at 0.0004 is 1 ETH: the floor is "1" whether the index kept the first equal price or a
    # recompute read the last (it was "1" folded and "1.0000" recomputed).
    def event(i: int, type_: str, data: dict[str, Any]) -> Event:
        at = T0 + timedelta(hours=i)
        return Event.model_validate(
            {"id": f"e{i}", "source": "gen", "type": type_, "occurred_at": at, "chain": CHAIN,
             "contract": CONTRACT, "token_id": "1", "block_number": 100 + i, "log_index": 0, "data": data}
        )  # fmt: skip

    events = [
        event(0, "mint", {"to": WALLETS[0]}),
        event(1, "listing", {"seller": WALLETS[0], "price": {"amount": "1", "currency": "ETH"}}),
        event(2, "listing", {"seller": WALLETS[0], "price": {"amount": "2500", "currency": "USDC"}}),
    ]
    folded, reference = fold(events), CollectionBook.recompute(CHAIN, CONTRACT, events, rates)
    assert folded.collection_view()["floor"] == reference.collection_view()["floor"] == "1"
    assert folded.nft_view("1")["active_listing"]["price"] == "1"
    assert_close(views(folded), views(reference))


@SETTINGS
@given(streams(), st.randoms(use_true_random=False), st.integers(0, 45))
def test_round_trip_mid_stream(events: list[Event], rnd: random.Random, cut: int) -> None:
    unique, shuffled = arrival(events, rnd)
    book = fold(shuffled[:cut])
    raw = orjson.loads(orjson.dumps(book.to_dict()))
    copy = CollectionBook.from_dict(raw)
    assert orjson.loads(orjson.dumps(copy.to_dict())) == raw
    assert_close(views(copy), views(book))
    for event in shuffled[cut:]:
        copy.apply(event, rates)
        book.apply(event, rates)
    reference = CollectionBook.recompute(CHAIN, CONTRACT, unique, rates)
    assert_close(views(copy), views(reference))
    assert_close(views(book), views(reference))
    assert orjson.loads(
        orjson.dumps(CollectionBook.from_dict(reference.to_dict()).to_dict())
    ) == orjson.loads(orjson.dumps(reference.to_dict()))


@SETTINGS
@given(streams(max_size=30), st.randoms(use_true_random=False))
def test_with_zero_epsilons_every_view_change_is_reported(events: list[Event], rnd: random.Random) -> None:
    _, shuffled = arrival(events, rnd)
    book = CollectionBook.empty(CHAIN, CONTRACT, ZERO)
    stored: dict[str, Any] = {}
    for event in shuffled:
        before = rows(book)
        change = book.apply(event, rates)
        after = rows(book)
        if before["collection"] != after["collection"]:
            assert change.collection
        for tid, row in after.items():
            if tid != "collection" and before.get(tid) != row:
                assert tid in change.nfts, (event.type, tid)
        write(stored, book, change)
        assert_reads_exact(stored, book)


@SETTINGS
@given(streams(), st.randoms(use_true_random=False))
def test_changes_stay_within_the_impact(events: list[Event], rnd: random.Random) -> None:
    _, shuffled = arrival(events, rnd)
    book = CollectionBook.empty(CHAIN, CONTRACT)
    for event in shuffled:
        impact = analyze([event], book)
        change = book.apply(event, rates)
        outside = change.nfts - impact.nfts
        if outside:
            assert change.all_nfts and impact.nft_drivers, (event.type, outside)
        moved_drivers = {m for (key, m), _ in change.metrics.items() if key == book.key and m in NFT_DRIVERS}
        assert moved_drivers <= impact.nft_drivers, (event.type, moved_drivers, impact.nft_drivers)


@SETTINGS
@given(streams(), st.randoms(use_true_random=False))
def test_batch_impact_covers_the_batch(events: list[Event], rnd: random.Random) -> None:
    _, shuffled = arrival(events, rnd)
    cut = len(shuffled) // 2
    book = fold(shuffled[:cut])
    batch = shuffled[cut:]
    impact = analyze(batch, book, rates)
    total = set()
    for event in batch:
        change = book.apply(event, rates)
        if not change.all_nfts:
            total |= change.nfts
    assert total <= impact.nfts


@SETTINGS
@given(streams(min_size=5), st.data())
def test_trait_change_impact_is_exactly_the_buckets(events: list[Event], data: st.DataObject) -> None:
    book = CollectionBook.recompute(CHAIN, CONTRACT, dedupe(events), rates)
    live = sorted(book.rarity.traits)
    assume(live)
    tid = data.draw(st.sampled_from(live))
    names = sorted(n for n in book.rarity.holders if n != TRAIT_COUNT)
    assume(names)
    name = data.draw(st.sampled_from(names))
    current = dict(book.tokens[tid].traits)
    old = canonical_traits(current).get(name)
    new_value = data.draw(st.sampled_from([v for v in [*TRAITS.get(name, ["x"]), "zzz"] if v != old]))
    changed = {**current, name: new_value}
    event = Event(
        id="trait-change",
        source="test",
        type="metadata_update",
        occurred_at=max(e.occurred_at for e in events),
        chain=CHAIN,
        contract=CONTRACT,
        token_id=tid,
        block_number=10_000,
        log_index=0,
        data={"traits": changed},
    )
    expected = book.rarity.members((name, old)) | book.rarity.members((name, new_value)) | {tid}
    count_before = canonical_traits(current)[TRAIT_COUNT]
    count_after = canonical_traits(changed)[TRAIT_COUNT]
    if count_before != count_after:
        expected |= book.rarity.members((TRAIT_COUNT, count_before))
        expected |= book.rarity.members((TRAIT_COUNT, count_after))
    impact = analyze([event], book)
    assert impact.nft_factors["rarity_score"] == expected

    products = dict(book.rarity.p)
    book.apply(event, rates)
    # Only bucket holders' information content moved (a holder of two buckets whose sizes moved in
    # opposite directions may keep its product, hence a subset).
    moved = {t for t, p in book.rarity.p.items() if products.get(t) != p}
    assert moved <= expected
