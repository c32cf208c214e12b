"""The worker's book cache: a recalculation taking a book another one still holds waits for it to be put
back (it has committed) instead of loading it again, and gets nothing when the holder lets it go."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from nftpulse.activities.pipeline import BookCache
from nftpulse.domain.book import CollectionBook

KEY = "collection:ethereum:0x" + "ab" * 20


def _book() -> CollectionBook:
    return CollectionBook.empty("ethereum", "0x" + "ab" * 20)


def _later(seconds: float, action: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_take_waits_for_the_holder_to_put_the_book_back() -> None:
    cache, book = BookCache(), _book()
    cache.put(KEY, 1, book)
    assert cache.take(KEY, 1) is book  # held by "the first recalculation" from here on
    newer = _book()
    started = time.monotonic()
    thread = _later(0.3, lambda: cache.put(KEY, 2, newer))
    assert cache.take(KEY, 2) is newer
    assert 0.25 < time.monotonic() - started < BookCache.READ_WAIT_S
    thread.join()


def test_take_gets_nothing_when_the_holder_lets_the_book_go() -> None:
    cache = BookCache()
    cache.put(KEY, 1, _book())
    cache.take(KEY, 1)
    thread = _later(0.2, lambda: cache.release([KEY]))
    assert cache.take(KEY, 2) is None
    thread.join()


def test_take_waits_no_longer_than_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = BookCache()
    cache.put(KEY, 1, _book())
    cache.take(KEY, 1)
    monkeypatch.setattr(BookCache, "READ_WAIT_S", 0.2)
    started = time.monotonic()
    assert cache.take(KEY, 2) is None
    assert 0.15 < time.monotonic() - started < 1.0


def test_books_beyond_the_bound_are_dropped_oldest_first() -> None:
    cache = BookCache(max_books=2)
    books = [_book() for _ in range(3)]
    for n, book in enumerate(books):
        cache.put(f"{KEY}{n}", 1, book)
    assert cache.peek(f"{KEY}0", 1) is None
    assert cache.peek(f"{KEY}1", 1) is books[1] and cache.peek(f"{KEY}2", 1) is books[2]
