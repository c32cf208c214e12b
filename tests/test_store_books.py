"""How storage keeps a collection book (``store.books``): a core and history segments, rewritten whole
when they grow many or storage knows nothing of the book's history. Pure: storage is a list here; the
database round trip is in tests/test_store_sql.py."""

from __future__ import annotations

import random
from typing import Any
from unittest import mock

import orjson
from hypothesis import given
from hypothesis import strategies as st

from nftpulse.domain.book import CollectionBook
from nftpulse.domain.events import Event
from nftpulse.store import books
from nftpulse.synth import Stream
from tests.domain.eventgen import CHAIN, CONTRACT, assert_close, rates, streams
from tests.domain.test_batch import _batches, _state
from tests.domain.test_properties import SETTINGS, arrival, views


class _Storage:
    """What ``store.books.save_books`` keeps of a book: its core and its history segments."""

    def __init__(self) -> None:
        self.core: dict[str, Any] = {}
        self.segments: list[dict[str, Any]] = []

    def save(self, book: CollectionBook) -> None:
        entries, rewrite = books.history_to_save(book)
        if rewrite:
            self.segments = []
        if entries is not None:
            self.segments.append(orjson.loads(orjson.dumps(entries)))
        self.core = orjson.loads(orjson.dumps(book.core_dict(tokens=False)))
        books.history_saved(book)

    def load(self) -> CollectionBook:
        return books.from_stored(self.core, self.segments)


@SETTINGS
@given(streams(), st.randoms(use_true_random=False))
def test_a_book_saved_in_history_segments_loads_back_whole(events: list[Event], rnd: random.Random) -> None:
    """Saved after every batch (late events landing mid-history included), reloaded now and then, and its
    history rewritten whenever it spans three segments: the stored book is always the live one."""
    unique, shuffled = arrival(events, rnd)
    storage = _Storage()
    book = CollectionBook.empty(CHAIN, CONTRACT)
    with mock.patch("nftpulse.store.books.MAX_HISTORY_SEGMENTS", 3):
        for batch in _batches(shuffled, rnd):
            book.apply_batch(batch, rates)
            storage.save(book)
            assert len(storage.segments) <= 3
            assert _state(storage.load()) == _state(book)
            if rnd.random() < 0.3:
                book = storage.load()
    reference = CollectionBook.recompute(CHAIN, CONTRACT, unique, rates)
    assert_close(views(storage.load()), views(reference))


@SETTINGS
@given(streams())
def test_recomputed_and_whole_saved_books_rewrite_their_history(events: list[Event]) -> None:
    reference = CollectionBook.recompute(CHAIN, CONTRACT, events, rates)
    entries, rewrite = books.history_to_save(reference)
    assert rewrite and entries is not None
    assert orjson.loads(orjson.dumps(entries)) == {k: _state(reference)[k] for k in entries}
    # A whole-book save from before history segments: loaded as it is, its history rewritten next time.
    legacy = books.from_stored(_state(reference), [])
    assert _state(legacy) == _state(reference)
    assert books.history_to_save(legacy)[1]
    storage = _Storage()
    storage.save(legacy)
    assert len(storage.segments) == 1 and "sales" not in storage.core
    assert _state(storage.load()) == _state(reference)
    assert books.history_to_save(legacy) == (None, False)


def test_a_save_stores_only_the_tokens_a_batch_changed() -> None:
    """A big collection's tokens are megabytes: a save after a batch stores the states of the tokens its
    events changed, not all of them, and a load puts the latest state of each together."""
    stream = Stream(sizes=[2000], seed=5)
    mints = [Event.model_validate(e) for e in stream.mints()]
    book = CollectionBook.empty(CHAIN, mints[0].contract)
    storage = _Storage()
    for at in range(0, len(mints), 500):
        book.apply_batch(mints[at : at + 500], rates)
        storage.save(book)
    assert "tokens" not in storage.core
    assert [len(s["tokens"]) for s in storage.segments] == [500, 500, 500, 500]
    for _ in range(3):
        batch = [Event.model_validate(e) for e in stream.take(40)]
        book.apply_batch(batch, rates)
        storage.save(book)
        named = {e.token_id for e in batch if e.token_id is not None}
        assert set(storage.segments[-1]["tokens"]) <= named
    assert _state(storage.load()) == _state(book)


def test_a_core_saved_with_its_tokens_has_them_rewritten_at_the_next_save() -> None:
    """As books were stored before their tokens were saved by what changed: the tokens in the core, none
    in the segments."""
    events = [Event.model_validate(e) for e in Stream(sizes=[50], seed=2).mints()]
    book = CollectionBook.recompute(CHAIN, events[0].contract, events, rates)
    core = orjson.loads(orjson.dumps(book.core_dict()))
    assert "tokens" in core
    loaded = books.from_stored(core, [orjson.loads(orjson.dumps(book.history_dict() | {"tokens": {}}))])
    assert _state(loaded) == _state(book)
    entries, rewrite = books.history_to_save(loaded)
    assert rewrite and entries is not None and set(entries["tokens"]) == set(book.tokens)
