"""Collection books, entity read models and exchange rates."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import delete, literal, select, union_all
from sqlmodel import Session, col

from nftpulse.domain.book import CollectionBook
from nftpulse.domain.events import utcnow
from nftpulse.store.db import Database
from nftpulse.store.models import BookHistoryRecord, ChangeBatchRecord, CollectionBookRecord, EntityView, Rate
from nftpulse.store.sql import insert_many, one_of, upsert_insert


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
    rows = session.execute(
        select(parts.c.part, parts.c.version, parts.c.blob).order_by(parts.c.part, parts.c.id)
    ).all()
    if not rows or rows[0].part != 0:
        return CollectionBook.empty(chain, contract), 0
    core, *segments = rows
    book = CollectionBook.from_stored(orjson.loads(core.blob), [orjson.loads(s.blob) for s in segments])
    return book, core.version


def book_versions(session: Session, keys: Sequence[str]) -> dict[str, int]:
    """The saved version of each of these books (absent: never saved)."""
    return dict(
        session.execute(
            select(CollectionBookRecord.key, CollectionBookRecord.version).where(
                one_of(session, CollectionBookRecord.key, keys)
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
    is due to be rewritten, as the one segment that replaces the others. Call each book's
    ``history_saved()`` once the transaction has committed."""
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
                "book": orjson.dumps(w.book.core_dict()),
                "updated_at": now,
            }
            for w in writes
        ],
    )
    segments: list[dict[str, Any]] = []
    rewritten: list[str] = []
    for w in writes:
        entries, rewrite = w.book.history_to_save()
        if rewrite:
            rewritten.append(w.key)
        if entries is not None:
            segments.append({"book_key": w.key, "version": w.version, "entries": orjson.dumps(entries)})
    if rewritten:
        session.execute(
            delete(BookHistoryRecord).where(one_of(session, BookHistoryRecord.book_key, rewritten))  # type: ignore[arg-type]
        )
    if segments:
        conn.execute(BookHistoryRecord.__table__.insert(), segments)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ViewWrite:
    key: str
    kind: str
    collection_key: str
    view: dict[str, Any]


def write_views(session: Session, writes: Sequence[ViewWrite], at: datetime | None = None) -> dict[str, int]:
    """Upsert read models, bumping each one's version; returns the new version per key.

    One upsert with RETURNING for the whole batch (``insert_many``): the version is bumped by the database
    itself, so there is no read before the write.
    """
    if not writes:
        return {}
    now = at or utcnow()

    def upsert(stmt: Any) -> Any:
        return stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "version": EntityView.version + 1,
                "view": stmt.excluded.view,
                "updated_at": stmt.excluded.updated_at,
            },
        ).returning(EntityView.key, EntityView.version)

    rows = [
        {
            "key": w.key,
            "kind": w.kind,
            "collection_key": w.collection_key,
            "version": 1,
            "view": w.view,
            "updated_at": now,
        }
        for w in writes
    ]
    return {key: version for key, version in insert_many(session, EntityView.__table__, rows, upsert)}


def views_updated_since(session: Session, partitions: Sequence[str], since: datetime) -> dict[str, int]:
    """Key and version of every read model of these collections rewritten at or after ``since``."""
    return dict(
        session.execute(
            select(EntityView.key, EntityView.version).where(
                one_of(session, EntityView.collection_key, partitions),
                EntityView.updated_at >= since,  # type: ignore[operator]
            )
        ).all()
    )


# -- changes waiting for detection ------------------------------------------------------------------


def add_change_batch(session: Session, owner: str, cause: str, columns: dict[str, list[Any]]) -> None:
    session.add(
        ChangeBatchRecord(owner=owner, cause=cause, changes=orjson.dumps(columns), created_at=utcnow())
    )


def change_batches(session: Session, owner: str) -> list[tuple[int, str, dict[str, list[Any]]]]:
    """The batches waiting for ``owner``'s detection, oldest first: (id, cause, change columns)."""
    rows = session.execute(
        select(ChangeBatchRecord.id, ChangeBatchRecord.cause, ChangeBatchRecord.changes)
        .where(ChangeBatchRecord.owner == owner)
        .order_by(ChangeBatchRecord.id)  # type: ignore[arg-type]
    ).all()
    return [(batch_id, cause, orjson.loads(blob)) for batch_id, cause, blob in rows]


def delete_change_batch(session: Session, batch_id: int) -> None:
    session.execute(delete(ChangeBatchRecord).where(ChangeBatchRecord.id == batch_id))  # type: ignore[arg-type]


def read_view(db: Database, key: str) -> EntityView | None:
    with db.read() as session:
        return session.get(EntityView, key)


def view_versions(session: Session, keys: Iterable[str]) -> dict[str, int]:
    keys = list(keys)
    out: dict[str, int] = {}
    for start in range(0, len(keys), 900):
        for key, version in session.execute(
            select(EntityView.key, EntityView.version).where(
                one_of(session, EntityView.key, keys[start : start + 900])
            )
        ):
            out[key] = version
    return out


def book_keys(db: Database) -> list[tuple[str, str, str]]:
    with db.read() as session:
        return [
            (k, c, ct)
            for k, c, ct in session.execute(
                select(CollectionBookRecord.key, CollectionBookRecord.chain, CollectionBookRecord.contract)
            )
        ]


def collection_floors(db: Database) -> dict[str, Decimal]:
    """Every collection's current floor, for classification's impact estimate."""
    out: dict[str, Decimal] = {}
    with db.read() as session:
        for key, view in session.execute(
            select(EntityView.key, EntityView.view).where(EntityView.kind == "collection")
        ):
            floor = view.get("floor")
            if floor is not None:
                out[key] = Decimal(str(floor))
    return out


class FloorCache:
    """Collections' floors as an ingesting process classifies events against them: read again from the
    read models when older than ``max_age_s``, so a floor a batch just moved counts within seconds."""

    def __init__(self, db: Database, max_age_s: float = 5.0) -> None:
        self._db = db
        self._max_age_s = max_age_s
        self._floors: dict[str, Decimal] = {}
        self._read_at = -math.inf

    def stale(self) -> bool:
        return time.monotonic() - self._read_at > self._max_age_s

    def refresh(self) -> None:
        # Stamped before the read: concurrent requests meanwhile use the floors they have.
        self._read_at = time.monotonic()
        self._floors = collection_floors(self._db)

    def get(self, collection: str) -> Decimal | None:
        return self._floors.get(collection)


# -- rates ------------------------------------------------------------------------------------------


def add_rate(session: Session, base: str, quote: str, at: datetime, rate: str, seq: int) -> None:
    session.execute(
        upsert_insert(session)(Rate)
        .values(base=base, quote=quote, at=at, rate=rate, event_seq=seq)
        .on_conflict_do_nothing(index_elements=["event_seq"])
    )


class RateBook:
    """Answers ``(base, quote, at) -> rate`` from the rate history, loading each pair once per batch."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._pairs: dict[tuple[str, str], list[tuple[datetime, Decimal]]] = {}

    def _history(self, base: str, quote: str) -> list[tuple[datetime, Decimal]]:
        pair = (base, quote)
        if pair not in self._pairs:
            rows = self._session.execute(
                select(Rate.at, Rate.rate)
                .where(Rate.base == base, Rate.quote == quote)
                .order_by(Rate.at, Rate.id)  # type: ignore[arg-type]
            ).all()
            self._pairs[pair] = [(at, Decimal(rate)) for at, rate in rows]
        return self._pairs[pair]

    def __call__(self, base: str, quote: str, at: datetime) -> Decimal | None:
        direct = self._latest(self._history(base, quote), at)
        if direct is not None:
            return direct
        inverse = self._latest(self._history(quote, base), at)
        return None if inverse is None or inverse == 0 else Decimal(1) / inverse

    @staticmethod
    def _latest(history: list[tuple[datetime, Decimal]], at: datetime) -> Decimal | None:
        best = None
        for when, rate in history:
            if when <= at:
                best = rate
            else:
                break
        return best
