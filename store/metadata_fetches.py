"""The metadata fetcher's durable queue (``metadata_fetches``): tokens whose metadata is to be read, by the
chain position that asked. Written by the follower with a range's events (before its checkpoint moves), so
a crash loses no request; the unique cause makes a block read twice ask once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlmodel import col

from nftpulse.domain.events import collection_key
from nftpulse.store.db import Database
from nftpulse.store.models import EntityView, MetadataFetch
from nftpulse.store.sql import insert_many, table_of

PENDING, FAILED = "pending", "failed"


@dataclass(frozen=True)
class FetchRequest:
    chain: str
    contract: str
    token_id: str
    block_number: int
    log_index: int
    occurred_at: datetime
    reason: str


@dataclass(frozen=True)
class DueFetch:
    id: int
    request: FetchRequest
    attempts: int


_CAUSE = ["chain", "contract", "token_id", "block_number", "log_index"]


def enqueue(db: Database, requests: Sequence[FetchRequest], now: datetime) -> None:
    if not requests:
        return
    rows = [
        {
            "chain": r.chain,
            "contract": r.contract,
            "token_id": r.token_id,
            "block_number": r.block_number,
            "log_index": r.log_index,
            "occurred_at": r.occurred_at,
            "reason": r.reason,
            "attempts": 0,
            "next_attempt_at": now,
            "status": PENDING,
        }
        for r in requests
    ]
    with db.write() as session:
        # One statement for the whole range (on Postgres one JSON parameter, as the event log's append):
        # an executemany cost 45 µs a row, as much as appending the events themselves.
        insert_many(
            session,
            table_of(MetadataFetch),
            rows,
            lambda stmt: stmt.on_conflict_do_nothing(index_elements=_CAUSE),
        )


def due(db: Database, now: datetime, limit: int, busy: Iterable[int] = ()) -> list[DueFetch]:
    """Pending requests whose time has come, oldest first, leaving out ``busy`` ones (being fetched)."""
    busy = list(busy)
    with db.read() as session:
        query = select(MetadataFetch).where(
            col(MetadataFetch.status) == PENDING, col(MetadataFetch.next_attempt_at) <= now
        )
        if busy:
            query = query.where(col(MetadataFetch.id).not_in(busy))
        rows: Iterable[MetadataFetch] = session.execute(
            query.order_by(col(MetadataFetch.next_attempt_at), col(MetadataFetch.id)).limit(limit)
        ).scalars()
        return [
            DueFetch(
                int(row.id or 0),
                FetchRequest(
                    row.chain,
                    row.contract,
                    row.token_id,
                    row.block_number,
                    row.log_index,
                    row.occurred_at,
                    row.reason,
                ),
                row.attempts,
            )
            for row in rows
        ]


def known_tokens(db: Database, chain: str, contract: str, first: int, last: int, limit: int) -> list[int]:
    """The ids of the collection's tokens that have a read model, within ``first``..``last``, lowest first,
    at most ``limit``: what a collection-wide metadata update means."""
    prefix = f"nft:{chain}:{contract.lower()}:"
    with db.read() as session:
        keys: Iterable[str] = session.execute(
            select(col(EntityView.key)).where(
                col(EntityView.kind) == "nft",
                col(EntityView.collection_key) == collection_key(chain, contract),
            )
        ).scalars()
        ids = sorted(
            int(k[len(prefix) :]) for k in keys if k.startswith(prefix) and k[len(prefix) :].isdigit()
        )
    return [i for i in ids if first <= i <= last][:limit]


def done(db: Database, fetch_id: int) -> None:
    with db.write() as session:
        session.execute(delete(MetadataFetch).where(col(MetadataFetch.id) == fetch_id))


def retry_later(db: Database, fetch_id: int, attempts: int, at: datetime, error: str) -> None:
    with db.write() as session:
        session.execute(
            update(MetadataFetch)
            .where(col(MetadataFetch.id) == fetch_id)
            .values(attempts=attempts, next_attempt_at=at, error=error[:500])
        )


def fail(db: Database, fetch_id: int, attempts: int, error: str) -> None:
    with db.write() as session:
        session.execute(
            update(MetadataFetch)
            .where(col(MetadataFetch.id) == fetch_id)
            .values(attempts=attempts, status=FAILED, error=error[:500])
        )


def failures(db: Database) -> list[tuple[str, str, str, str]]:
    """(chain, contract, token id, error) of every request given up on."""
    with db.read() as session:
        rows = session.execute(
            select(
                col(MetadataFetch.chain),
                col(MetadataFetch.contract),
                col(MetadataFetch.token_id),
                col(MetadataFetch.error),
            )
            .where(col(MetadataFetch.status) == FAILED)
            .order_by(col(MetadataFetch.id))
        ).all()
    return [(r[0], r[1], r[2], r[3] or "") for r in rows]


def counts(db: Database) -> dict[str, int]:
    with db.read() as session:
        rows = session.execute(
            select(col(MetadataFetch.status), func.count()).group_by(col(MetadataFetch.status))
        ).all()
    return {r[0]: int(r[1]) for r in rows}


def retry_failed(db: Database, now: datetime, contract: str | None = None) -> int:
    """Put requests given up on back in the queue (all, or one contract's) with fresh attempts; returns
    how many. For after the cause is fixed: a gateway back, a host allowed."""
    query = update(MetadataFetch).where(col(MetadataFetch.status) == FAILED)
    if contract is not None:
        query = query.where(col(MetadataFetch.contract) == contract.lower())
    with db.write() as session:
        result = session.execute(query.values(status=PENDING, attempts=0, next_attempt_at=now, error=None))
    return int(getattr(result, "rowcount", 0) or 0)
