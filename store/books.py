"""Collection books in storage: a row with the book's facts and its history and tokens in segments.

The history (sales and listing entries) and the tokens' states are most of a busy or big collection's book
(megabytes: 4.6 MB for 10,000 tokens), while a batch adds a few history entries and changes a few tokens:
so a save stores the rest whole and the history's new entries and the changed tokens' states
(``CollectionBook.appended_history_dict``) as a segment of its own, instead of the whole book every batch;
a later segment's state of a token replaces an earlier one's. Once they are spread over
:data:`MAX_HISTORY_SEGMENTS` saves they are rewritten as one segment, so that loading a book reads a
bounded number of rows. What storage has of a loaded book rides with it (``CollectionBook.stored``) until
its next save; a book storage knows nothing of (recomputed from the log, or built from a whole dict) has
its history and tokens rewritten at its first save.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, literal, union_all
from sqlmodel import Session, col, select

from nftpulse.domain import price as price_engine
from nftpulse.domain.book import CollectionBook
from nftpulse.domain.events import utcnow
from nftpulse.domain.significance import Epsilons
from nftpulse.store.db import Database
from nftpulse.store.models import BookHistoryRecord, CollectionBookRecord
from nftpulse.store.sql import one_of, table_of, upsert_insert

#: A book's stored history is rewritten whole once it is spread over this many saves, so that loading it
#: reads a bounded number of rows; in between, each save stores only the entries it added.
MAX_HISTORY_SEGMENTS = 64


@dataclass(frozen=True)
class StoredHistory:
    """What storage has of a book's history: the marked history (``CollectionBook.mark_history``), in
    this many segments."""

    segments: int


def _stored(book: CollectionBook) -> StoredHistory | None:
    return book.stored if isinstance(book.stored, StoredHistory) else None


def _rewrite_due(stored: StoredHistory | None) -> bool:
    return stored is None or stored.segments >= MAX_HISTORY_SEGMENTS


def history_to_save(book: CollectionBook) -> tuple[dict[str, Any] | None, bool]:
    """The history entries the next save stores (None: none) and whether they replace the stored history
    (a rewrite) rather than add a segment to it. :func:`from_stored` is the inverse."""
    stored = _stored(book)
    if _rewrite_due(stored):
        return book.history_dict(), True
    return book.appended_history_dict(), False


def history_saved(book: CollectionBook) -> None:
    """The save of :func:`history_to_save`'s entries committed: storage now has the book's whole
    history, which is marked."""
    stored = _stored(book)
    if _rewrite_due(stored):
        segments = 1
    else:
        assert stored is not None
        segments = stored.segments + bool(book.appended_history)
    book.stored = StoredHistory(segments)
    book.mark_history()


def from_stored(
    core: dict[str, Any],
    segments: Sequence[dict[str, Any]],
    epsilons: Epsilons | None = None,
    price_params: price_engine.PriceParams | None = None,
) -> CollectionBook:
    """A book from its stored parts: ``CollectionBook.core_dict`` and the history segments of its saves,
    oldest first. A core that still holds the history (a whole-book save from before segments) is loaded
    as it is and has its history rewritten at its next save."""
    if "sales" in core:
        return CollectionBook.from_dict(core, epsilons, price_params)
    book = CollectionBook.from_parts(core, segments, epsilons, price_params)
    # A core saved with its tokens' states has segments without them: its next save rewrites them all.
    book.stored = None if "tokens" in core else StoredHistory(len(segments))
    return book


def load_book(session: Session, key: str, chain: str, contract: str) -> tuple[CollectionBook, int]:
    """The book and its version (0: never saved).

    Its row and its history segments are read in one statement, so from one snapshot: read apart, a save
    committing in between could pair a row with history it does not have yet, or has replaced."""
    parts = union_all(
        select(
            literal(0).label("part"),
            literal(0).label("id"),
            col(CollectionBookRecord.version),
            col(CollectionBookRecord.book).label("blob"),
        ).where(col(CollectionBookRecord.key) == key),
        select(
            literal(1),
            col(BookHistoryRecord.id),
            col(BookHistoryRecord.version),
            col(BookHistoryRecord.entries),
        ).where(col(BookHistoryRecord.book_key) == key),
    ).subquery()
    rows = session.exec(
        select(parts.c.part, parts.c.version, parts.c.blob).order_by(parts.c.part, parts.c.id)
    ).all()
    if not rows or rows[0][0] != 0:
        return CollectionBook.empty(chain, contract), 0
    (_, version, core), *segments = rows
    book = from_stored(orjson.loads(core), [orjson.loads(blob) for _, _, blob in segments])
    return book, version


def book_versions(session: Session, keys: Sequence[str]) -> dict[str, int]:
    """The saved version of each of these books (absent: never saved)."""
    return dict(
        session.exec(
            select(col(CollectionBookRecord.key), col(CollectionBookRecord.version)).where(
                one_of(session, col(CollectionBookRecord.key), keys)
            )
        ).all()
    )


@dataclass(frozen=True)
class BookWrite:
    key: str
    version: int
    book: CollectionBook


def save_books(session: Session, writes: Sequence[BookWrite]) -> None:
    """Save books with their new versions: each book's row (one upsert executed with many parameter
    sets) and the history entries it added since its last save, as one new segment, or, when its history
    is due to be rewritten, as the one segment that replaces the others. Call :func:`history_saved` for
    each book once the transaction has committed."""
    if not writes:
        return
    now = utcnow()
    stmt = upsert_insert(session)(CollectionBookRecord)
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={
            "version": stmt.excluded.version,
            "book": stmt.excluded.book,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    conn = session.connection()
    conn.execute(
        stmt,
        [
            {
                "key": w.key,
                "chain": w.book.chain,
                "contract": w.book.contract,
                "version": w.version,
                "book": orjson.dumps(w.book.core_dict(tokens=False)),
                "updated_at": now,
            }
            for w in writes
        ],
    )
    segments: list[dict[str, Any]] = []
    rewritten: list[str] = []
    for w in writes:
        entries, rewrite = history_to_save(w.book)
        if rewrite:
            rewritten.append(w.key)
        if entries is not None:
            segments.append({"book_key": w.key, "version": w.version, "entries": orjson.dumps(entries)})
    if rewritten:
        session.exec(
            delete(BookHistoryRecord).where(one_of(session, col(BookHistoryRecord.book_key), rewritten))
        )
    if segments:
        conn.execute(table_of(BookHistoryRecord).insert(), segments)


def book_keys(db: Database) -> list[tuple[str, str, str]]:
    """(key, chain, contract) of every saved book."""
    with db.read() as session:
        return [
            (k, c, ct)
            for k, c, ct in session.exec(
                select(
                    col(CollectionBookRecord.key),
                    col(CollectionBookRecord.chain),
                    col(CollectionBookRecord.contract),
                )
            )
        ]
