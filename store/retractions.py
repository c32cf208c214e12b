"""Retractions in the event log: which events were taken back (``event_retractions``, also for events not
seen yet) and marking the retracted ones, so that they leave every recompute (``events.processed_events_of``
reads only applied and processed events) and `pulse verify` agrees with the refolded state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, tuple_, update
from sqlmodel import Session, col, select

from nftpulse.domain.events import EventType
from nftpulse.store.db import Database
from nftpulse.store.models import ChainBlock, EventRecord, EventRetraction, EventStatus
from nftpulse.store.sql import insert_many, table_of

EventRef = tuple[str, str]
_CHUNK = 300


def _chunks(refs: Sequence[EventRef]) -> Iterable[Sequence[EventRef]]:
    for start in range(0, len(refs), _CHUNK):
        yield refs[start : start + _CHUNK]


def _named(source: Any, external_id: Any, refs: Sequence[EventRef]) -> ColumnElement[bool]:
    return tuple_(source, external_id).in_(list(refs))


def retracted_among(session: Session, partition: str, refs: Iterable[EventRef]) -> set[EventRef]:
    """Those of ``refs`` a retraction of ``partition`` has named (before now)."""
    wanted = sorted(set(refs))
    found: set[EventRef] = set()
    for chunk in _chunks(wanted):
        rows = session.exec(
            select(col(EventRetraction.source), col(EventRetraction.external_id)).where(
                col(EventRetraction.partition) == partition,
                _named(col(EventRetraction.source), col(EventRetraction.external_id), chunk),
            )
        )
        found |= {(s, i) for s, i in rows}
    return found


def applied_among(session: Session, partition: str, refs: Iterable[EventRef]) -> set[EventRef]:
    """Those of ``refs`` that are events of ``partition`` whose effect is in its stored state."""
    wanted = sorted(set(refs))
    found: set[EventRef] = set()
    for chunk in _chunks(wanted):
        rows = session.exec(
            select(col(EventRecord.source), col(EventRecord.external_id)).where(
                col(EventRecord.partition) == partition,
                col(EventRecord.status).in_([EventStatus.APPLIED.value, EventStatus.PROCESSED.value]),
                _named(col(EventRecord.source), col(EventRecord.external_id), chunk),
            )
        )
        found |= {(s, i) for s, i in rows}
    return found


def record(session: Session, partition: str, named: Sequence[tuple[EventRef, int]], at: datetime) -> None:
    """Remember what the retractions (their seqs) name; a second retraction of one event changes nothing."""
    rows = [
        {"source": s, "external_id": i, "partition": partition, "retraction_seq": seq, "retracted_at": at}
        for (s, i), seq in named
    ]
    if rows:
        insert_many(
            session,
            table_of(EventRetraction),
            rows,
            lambda stmt: stmt.on_conflict_do_nothing(index_elements=["partition", "source", "external_id"]),
        )


def mark_retracted(session: Session, partition: str, refs: Iterable[EventRef], at: datetime) -> None:
    """Take these events of ``partition`` out of the state's inputs: status ``retracted``, for good."""
    wanted = sorted(set(refs))
    for chunk in _chunks(wanted):
        session.exec(
            update(EventRecord)
            .where(
                col(EventRecord.partition) == partition,
                col(EventRecord.status) != EventStatus.FAILED.value,
                _named(col(EventRecord.source), col(EventRecord.external_id), chunk),
            )
            .values(status=EventStatus.RETRACTED.value, processed_at=at, error=None, error_category=None)
        )


# -- the chain follower's recent headers and what a reorganisation orphans ----------------------------


def save_headers(
    db: Database, chain: str, headers: Sequence[tuple[int, str, str]], keep: int, head: int
) -> None:
    """Remember (number, hash, parent hash) of blocks read, replacing what a height had, and forget those
    more than ``keep`` blocks below ``head``."""
    with db.write() as session:
        if headers:
            session.exec(
                delete(ChainBlock).where(
                    col(ChainBlock.chain) == chain, col(ChainBlock.number).in_([n for n, _, _ in headers])
                )
            )
            for number, block_hash, parent in headers:
                session.add(ChainBlock(chain=chain, number=number, hash=block_hash, parent_hash=parent))
        session.exec(
            delete(ChainBlock).where(col(ChainBlock.chain) == chain, col(ChainBlock.number) < head - keep)
        )


def recent_headers(db: Database, chain: str, up_to: int) -> list[tuple[int, str]]:
    """(number, hash) of the kept headers at or below ``up_to``, highest first."""
    with db.read() as session:
        return [
            (n, h)
            for n, h in session.exec(
                select(col(ChainBlock.number), col(ChainBlock.hash))
                .where(col(ChainBlock.chain) == chain, col(ChainBlock.number) <= up_to)
                .order_by(col(ChainBlock.number).desc())
            )
        ]


def forget_headers_after(db: Database, chain: str, number: int) -> None:
    with db.write() as session:
        session.exec(
            delete(ChainBlock).where(col(ChainBlock.chain) == chain, col(ChainBlock.number) > number)
        )


def events_after_block(db: Database, chain: str, source: str, number: int) -> list[EventRecord]:
    """The events of ``source`` on ``chain`` read from blocks above ``number`` and not retracted: what a
    reorganisation forking at ``number`` orphans."""
    with db.read() as session:
        return list(
            session.exec(
                select(EventRecord)
                .where(
                    col(EventRecord.source) == source,
                    col(EventRecord.chain) == chain,
                    col(EventRecord.block_number) > number,
                    col(EventRecord.type) != EventType.RETRACTION.value,
                    col(EventRecord.status) != EventStatus.RETRACTED.value,
                )
                .order_by(col(EventRecord.seq))
            )
        )


def retracted_by_id(db: Database, source: str, ids: Sequence[str], suffix: str) -> set[str]:
    """Those of ``ids`` (of ``source``) whose retraction (id: the event's id plus ``suffix``, as
    ``retract.retraction_of`` names them) is in the event log, applied or not yet."""
    found: set[str] = set()
    with db.read() as session:
        for start in range(0, len(ids), 500):
            names = [i + suffix for i in ids[start : start + 500]]
            found |= {
                name.removesuffix(suffix)
                for name in session.exec(
                    select(col(EventRecord.external_id)).where(
                        col(EventRecord.source) == source, col(EventRecord.external_id).in_(names)
                    )
                )
            }
    return found
