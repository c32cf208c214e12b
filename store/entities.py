"""Entity read models, metric change batches and exchange rates (collection books: ``store.books``)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import delete
from sqlmodel import Session, col, select

from nftpulse.domain.events import utcnow
from nftpulse.store.db import Database
from nftpulse.store.models import ChangeBatchRecord, EntityView, Rate
from nftpulse.store.sql import insert_many, one_of, table_of, upsert_insert


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
                "version": col(EntityView.version) + 1,
                "view": stmt.excluded.view,
                "updated_at": stmt.excluded.updated_at,
            },
        ).returning(col(EntityView.key), col(EntityView.version))

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
    return {key: version for key, version in insert_many(session, table_of(EntityView), rows, upsert)}


def views_updated_since(session: Session, partitions: Sequence[str], since: datetime) -> dict[str, int]:
    """Key and version of every read model of these collections rewritten at or after ``since``."""
    return dict(
        session.exec(
            select(col(EntityView.key), col(EntityView.version)).where(
                one_of(session, col(EntityView.collection_key), partitions),
                col(EntityView.updated_at) >= since,
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
    rows = session.exec(
        select(col(ChangeBatchRecord.id), col(ChangeBatchRecord.cause), col(ChangeBatchRecord.changes))
        .where(col(ChangeBatchRecord.owner) == owner)
        .order_by(col(ChangeBatchRecord.id))
    ).all()
    return [(batch_id or 0, cause, orjson.loads(blob)) for batch_id, cause, blob in rows]


def delete_change_batch(session: Session, batch_id: int) -> None:
    session.exec(delete(ChangeBatchRecord).where(col(ChangeBatchRecord.id) == batch_id))


def read_view(db: Database, key: str) -> EntityView | None:
    with db.read() as session:
        return session.get(EntityView, key)


def view_versions(session: Session, keys: Iterable[str]) -> dict[str, int]:
    keys = list(keys)
    out: dict[str, int] = {}
    for start in range(0, len(keys), 900):
        for key, version in session.exec(
            select(col(EntityView.key), col(EntityView.version)).where(
                one_of(session, col(EntityView.key), keys[start : start + 900])
            )
        ):
            out[key] = version
    return out


def collection_floors(db: Database) -> dict[str, Decimal]:
    """Every collection's current floor, for classification's impact estimate."""
    out: dict[str, Decimal] = {}
    with db.read() as session:
        for key, view in session.exec(
            select(col(EntityView.key), col(EntityView.view)).where(col(EntityView.kind) == "collection")
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
    session.exec(
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
            rows = self._session.exec(
                select(col(Rate.at), col(Rate.rate))
                .where(col(Rate.base) == base, col(Rate.quote) == quote)
                .order_by(col(Rate.at), col(Rate.id))
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
        """The latest rate at or before ``at``; before the first, the first: a sale that waited for a
        pair's first quote is valued by it (the feed's quote usually postdates the sale)."""
        best = history[0][1] if history else None
        for when, rate in history:
            if when <= at:
                best = rate
            else:
                break
        return best


def drop_views(session: Session, keys: Sequence[str]) -> dict[str, int]:
    """Delete these read models (their entity no longer exists); returns, per key deleted, the version a
    cached copy must be newer than (none can be), for the cache's floors."""
    versions = view_versions(session, keys)
    if versions:
        session.exec(delete(EntityView).where(one_of(session, col(EntityView.key), list(versions))))
    return {key: version + 1 for key, version in versions.items()}
