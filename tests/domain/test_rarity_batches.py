"""Rarity brought up to date once per batch: a rebuild and per-token plans give the same book and the
same publications, and a mint-out's rarity work per batch is linear in the collection, not quadratic."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from nftpulse.domain.book import CollectionBook, fold
from nftpulse.domain.events import Event
from nftpulse.domain.rarity import RarityIndex, RarityPlan
from nftpulse.synth import Stream
from tests.domain.eventgen import CHAIN, CONTRACT, T0, WALLETS, assert_close, rates, streams
from tests.domain.test_batch import _batches
from tests.domain.test_properties import SETTINGS, ZERO, arrival, views


@contextmanager
def rebuild_weight(weight: float) -> Iterator[None]:
    """0: every batch with a trait change rebuilds the index; huge: never (plans token by token)."""
    saved = fold.REBUILD_WEIGHT
    fold.REBUILD_WEIGHT = weight  # type: ignore[assignment]
    try:
        yield
    finally:
        fold.REBUILD_WEIGHT = saved


def _state(book: CollectionBook) -> Any:
    return orjson.loads(orjson.dumps(book.to_dict()))


@SETTINGS
@given(streams(), st.randoms(use_true_random=False), st.booleans())
def test_rebuild_and_plans_publish_the_same(events: list[Event], rnd: random.Random, zero: bool) -> None:
    _, shuffled = arrival(events, rnd)
    batches = _batches(shuffled, rnd)
    epsilons = ZERO if zero else None
    books = []
    for weight in (0.0, 1e12):
        book = CollectionBook.empty(CHAIN, CONTRACT, epsilons)
        changes = []
        with rebuild_weight(weight):
            for batch in batches:
                change, failed = book.apply_batch(batch, rates)
                assert failed == []
                changes.append(change)
        books.append((book, changes))
    (rebuilt, by_rebuild), (planned, by_plans) = books
    assert by_rebuild == by_plans
    assert _state(rebuilt) == _state(planned)
    assert rebuilt.rarity.p == planned.rarity.p
    assert rebuilt._d.publisher.published == planned._d.publisher.published
    assert_close(views(rebuilt), views(planned))


def test_a_zero_epsilon_publishes_moves_only_however_rarity_is_brought_up_to_date() -> None:
    # A swaps its only-one value for another only-one value: no product, size or entropy moves. Plans
    # examine A alone; a rebuild examines every token, and with zero epsilons it had published B, whose
    # score and rank stood still, as moved (0 >= 0).
    def event(i: int, token: str, type_: str, data: dict[str, Any]) -> Event:
        return Event.model_validate(
            {"id": f"e{i}", "source": "gen", "type": type_, "occurred_at": T0 + timedelta(hours=i),
             "chain": CHAIN, "contract": CONTRACT, "token_id": token, "block_number": 100 + i,
             "log_index": 0, "data": data}
        )  # fmt: skip

    batches = [
        [
            event(0, "1", "mint", {"to": WALLETS[0], "traits": {"bg": "red"}}),
            event(1, "2", "mint", {"to": WALLETS[1], "traits": {"bg": "blue"}}),
        ],
        [event(2, "1", "metadata_update", {"traits": {"bg": "green"}})],
    ]
    reports = []
    for weight in (0.0, 1e12):
        book = CollectionBook.empty(CHAIN, CONTRACT, ZERO)
        with rebuild_weight(weight):
            reports.append([book.apply_batch(batch, rates)[0] for batch in batches])
    assert reports[0] == reports[1]
    assert reports[0][1].nfts == {"1"}


class Work:
    """Token operations of rarity maintenance: tokens a plan moves and (token, attribute) pairs a
    rebuild indexes. Counted by wrapping the index's two entry points, not timed."""

    def __init__(self) -> None:
        self.ops = 0

    @contextmanager
    def counting(self) -> Iterator[None]:
        plan, build = RarityIndex.plan, RarityIndex.build.__func__  # type: ignore[attr-defined]

        def counted_plan(index: RarityIndex, *args: Any, **kwargs: Any) -> RarityPlan:
            out = plan(index, *args, **kwargs)
            self.ops += len(out.movers) + 1
            return out

        def counted_build(cls: type[RarityIndex], tokens: Any, **kwargs: Any) -> RarityIndex:
            out = build(cls, tokens, **kwargs)
            self.ops += out.n * max(1, out.attributes)
            return out

        RarityIndex.plan = counted_plan  # type: ignore[method-assign, assignment]
        RarityIndex.build = classmethod(counted_build)  # type: ignore[method-assign, assignment]
        try:
            yield
        finally:
            RarityIndex.plan = plan  # type: ignore[method-assign]
            RarityIndex.build = classmethod(build)  # type: ignore[method-assign, assignment]


def _mint_out(tokens: int, batches: int) -> list[int]:
    """Rarity work per batch of a ``tokens``-token mint-out (with traits) cut into ``batches``."""
    raw = list(Stream(sizes=[tokens], seed=5).mints())
    events = [Event.model_validate(e) for e in raw]
    book = CollectionBook.empty(CHAIN, raw[0]["contract"])
    size = -(-tokens // batches)
    work = Work()
    per_batch = []
    with work.counting():
        for at in range(0, tokens, size):
            before = work.ops
            _, failed = book.apply_batch(events[at : at + size], rates)
            assert failed == []
            per_batch.append(work.ops - before)
    assert book.rarity.n == tokens
    return per_batch


def test_mint_out_work_per_mint_does_not_grow_with_the_collection() -> None:
    # The same mint-out shape (a collection minted in 5 batches, as a burst reaches the pipeline) at
    # 400 and 4,000 tokens: the work per mint stays flat. Planned token by token, every mint moved
    # nearly every token (the trait-count bucket), so the per-mint work grew tenfold with the size.
    small, big = _mint_out(400, 5), _mint_out(4000, 5)
    per_mint_small, per_mint_big = sum(small) / 400, sum(big) / 4000
    assert per_mint_big <= 1.2 * per_mint_small, (small, big)
    # And any one batch costs one pass over the collection, not one per mint in it.
    attributes = 6  # four traits, the trait count, a null-bucket margin
    for n_after, ops in zip(range(800, 4001, 800), big, strict=True):
        assert ops <= 2 * n_after * attributes, (n_after, ops)


def test_a_single_trait_change_is_still_planned_not_rebuilt() -> None:
    per_batch = _mint_out(2000, 1)
    book_ops = per_batch[0]
    raw = list(Stream(sizes=[2000], seed=5).mints())
    book = CollectionBook.empty(CHAIN, raw[0]["contract"])
    book.apply_batch([Event.model_validate(e) for e in raw], rates)
    update = Event.model_validate(
        {
            **raw[7],
            "id": "u1",
            "type": "metadata_update",
            "block_number": raw[-1]["block_number"] + 1,
            "occurred_at": raw[-1]["occurred_at"],
            "data": {"traits": {"background": "void"}},
        }
    )
    work = Work()
    with work.counting():
        book.apply_batch([update], rates)
    # One plan: the tokens of the buckets the token leaves and joins, fewer than a rebuild indexes.
    assert 0 < work.ops < book_ops / 2
    reference = CollectionBook.recompute(
        CHAIN, book.contract, [*map(Event.model_validate, raw), update], rates
    )
    assert book.rarity.p == reference.rarity.p


def test_a_batch_of_single_trait_changes_in_a_big_collection_is_planned() -> None:
    """Each update moves one attribute's two buckets; a value that stays (the trait count here) moves no
    one, so a few of them are planned, not rebuilt, and cost less than a rebuild would. (Ten of them in
    this collection take longer planned than rebuilt, measured: they are rebuilt.)"""
    size = 4000
    raw = list(Stream(sizes=[size], seed=5).mints())
    mints = [Event.model_validate(e) for e in raw]
    book = CollectionBook.empty(CHAIN, raw[0]["contract"])
    book.apply_batch(mints, rates)
    background = sorted(
        book.rarity.holders["background"], key=lambda v: len(book.rarity.holders["background"][v])
    )
    updates = []
    for n, tid in enumerate(sorted(book.tokens, key=int)[:3]):
        traits = {**book.tokens[tid].traits, "background": background[n % 2]}
        updates.append(
            Event.model_validate(
                {
                    **raw[int(tid)],
                    "id": f"u{n}",
                    "type": "metadata_update",
                    "block_number": raw[-1]["block_number"] + 1 + n,
                    "occurred_at": raw[-1]["occurred_at"],
                    "data": {"traits": traits},
                }
            )
        )
    index = book.rarity
    work = Work()
    with work.counting():
        book.apply_batch(updates, rates)
    assert book.rarity is index  # planned in place, not rebuilt
    rebuild_ops = size * (book.rarity.attributes + 2)
    assert 0 < work.ops < rebuild_ops, (work.ops, rebuild_ops)
    reference = CollectionBook.recompute(CHAIN, book.contract, [*mints, *updates], rates)
    assert book.rarity.p == reference.rarity.p
    assert_close(views(book), views(reference))
