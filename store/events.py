"""Event-log queries: append, status, dispatch hand-off, application bookkeeping, replay and failures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, true, update
from sqlmodel import Session, col, select

from nftpulse.domain.events import SCHEMA_VERSION, Event, EventType, nft_key, utcnow
from nftpulse.store.db import Database
from nftpulse.store.models import EventRecord, EventStatus, Route
from nftpulse.store.sql import insert_many, one_of, table_of, update_many

_PENDING = (EventStatus.RECEIVED.value, EventStatus.DISPATCHED.value, EventStatus.APPLIED.value)
_CHUNK = 900  # stays under SQLite's bound-parameter limit for IN lists


def partition_of(event: Event) -> str:
    """Events of one collection share a partition; price ticks feed a per-chain rate book."""
    if event.type is EventType.PRICE_TICK:
        return f"rates:{event.chain}"
    return event.collection_key


@dataclass(frozen=True)
class AppendOutcome:
    index: int
    source: str
    id: str
    duplicate: bool
    seq: int | None


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def append(
    db: Database,
    events: Sequence[Event],
    priorities: Sequence[tuple[float, str]],
    traceparent: str | None = None,
) -> list[AppendOutcome]:
    """Append events durably; (source, id) pairs already in the log are reported as duplicates.

    The transaction commits before this returns, so a 202 sent afterwards never acknowledges an event
    that a crash could lose.
    """
    now = utcnow()
    rows = [
        {
            "source": e.source,
            "external_id": e.id,
            "type": e.type.value,
            "schema_version": e.schema_version,
            "occurred_at": e.occurred_at,
            "received_at": now,
            "chain": e.chain,
            "contract": e.contract,
            "token_id": e.token_id,
            "block_number": e.block_number,
            "log_index": e.log_index,
            "tx_hash": e.tx_hash,
            "traceparent": traceparent,
            "data": e.data,
            "partition": partition_of(e),
            "priority": prio,
            "priority_class": cls,
            "status": EventStatus.RECEIVED.value,
            "attempts": 0,
        }
        for e, (prio, cls) in zip(events, priorities, strict=True)
    ]
    inserted: dict[tuple[str, str], int] = {}

    def skip_duplicates(stmt: Any) -> Any:
        return stmt.on_conflict_do_nothing(index_elements=["source", "external_id"]).returning(
            col(EventRecord.seq), col(EventRecord.source), col(EventRecord.external_id)
        )

    with db.write() as session:
        for seq, source, ext in insert_many(session, table_of(EventRecord), rows, skip_duplicates):
            inserted[(source, ext)] = seq
    outcomes: list[AppendOutcome] = []
    claimed: set[tuple[str, str]] = set()
    for index, e in enumerate(events):
        key = (e.source, e.id)
        fresh = key in inserted and key not in claimed
        claimed.add(key)
        outcomes.append(AppendOutcome(index, e.source, e.id, not fresh, inserted.get(key) if fresh else None))
    return outcomes


def get(db: Database, source: str, external_id: str) -> EventRecord | None:
    with db.read() as session:
        return session.exec(
            select(EventRecord).where(
                col(EventRecord.source) == source, col(EventRecord.external_id) == external_id
            )
        ).one_or_none()


_EVENT_TYPES = {t.value: t for t in EventType}


def to_event(row: EventRecord) -> Event:
    fields: dict[str, Any] = {
        "schema_version": row.schema_version,
        "id": row.external_id,
        "source": row.source,
        "type": row.type,
        "occurred_at": row.occurred_at,
        "chain": row.chain,
        "contract": row.contract,
        "token_id": row.token_id,
        "block_number": row.block_number,
        "log_index": row.log_index,
        "tx_hash": row.tx_hash,
        "data": row.data,
    }
    kind = _EVENT_TYPES.get(row.type)
    if row.schema_version == SCHEMA_VERSION and kind is not None:
        # Validated when it was accepted and logged in its validated (normalised) form: validating it
        # again on every read cost the worker a tenth of its time, and the dispatcher more.
        return Event.model_construct(**(fields | {"type": kind}))
    return Event.model_validate(fields)


# -- dispatcher -----------------------------------------------------------------------------------


def next_received(db: Database, limit: int) -> list[EventRecord]:
    with db.read() as session:
        return list(
            session.exec(
                select(EventRecord)
                .where(col(EventRecord.status) == EventStatus.RECEIVED.value)
                .order_by(col(EventRecord.seq))
                .limit(limit)
            )
        )


@dataclass(frozen=True)
class DispatchMark:
    seq: int
    route: Route
    workflow_id: str
    priority: float
    priority_class: str


def mark_dispatched(db: Database, marks: Sequence[DispatchMark]) -> int:
    """Record the route of each event before it is handed to Temporal (the outbox's commit point)."""
    table = table_of(EventRecord)
    rows = [
        {
            "seq": m.seq,
            "route": m.route.value,
            "workflow_id": m.workflow_id,
            "priority": m.priority,
            "priority_class": m.priority_class,
        }
        for m in marks
    ]
    with db.write() as session:
        return update_many(
            session,
            table,
            "seq",
            rows,
            same={
                "status": EventStatus.DISPATCHED.value,
                "dispatched_at": utcnow(),
                "attempts": table.c.attempts + 1,
            },
            where=[table.c.status == EventStatus.RECEIVED.value],
        )


@dataclass(frozen=True)
class StaleWork:
    partitions: list[str]
    own: list[EventRecord]


def stale_dispatched(db: Database, older_than: datetime) -> StaleWork:
    """Events handed off but not finished after a while: their signal or start may have been lost."""
    with db.read() as session:
        partitions = [
            p
            for p in session.exec(
                select(col(EventRecord.partition))
                .where(
                    col(EventRecord.status).in_([EventStatus.DISPATCHED.value, EventStatus.APPLIED.value]),
                    col(EventRecord.route) == Route.PARTITION.value,
                    col(EventRecord.dispatched_at) < older_than,
                )
                .distinct()
            )
        ]
        own = list(
            session.exec(
                select(EventRecord)
                .where(
                    col(EventRecord.status).in_([EventStatus.DISPATCHED.value, EventStatus.APPLIED.value]),
                    col(EventRecord.route) == Route.OWN.value,
                    col(EventRecord.dispatched_at) < older_than,
                )
                .limit(1000)
            )
        )
    return StaleWork(partitions, own)


# -- worker ---------------------------------------------------------------------------------------


def _pending(session: Session, partitions: Sequence[str]) -> ColumnElement[bool]:
    """Routine events handed to these partitions and not yet applied."""
    return and_(
        one_of(session, col(EventRecord.partition), partitions),
        col(EventRecord.route) == Route.PARTITION.value,
        col(EventRecord.status) == EventStatus.DISPATCHED.value,
    )


def pending_in_partitions(session: Session, partitions: Sequence[str], limit: int) -> list[EventRecord]:
    """The oldest routine events handed to the given partitions and not yet applied, in log order."""
    return list(
        session.exec(
            select(EventRecord)
            .where(_pending(session, partitions))
            .order_by(col(EventRecord.seq))
            .limit(limit)
        )
    )


def pending_seqs_in_partitions(
    session: Session, partitions: Sequence[str], limit: int
) -> list[tuple[int, str]]:
    """``pending_in_partitions`` as (seq, partition) pairs: what a batch's plan needs, without the events."""
    return [
        (seq or 0, partition)
        for seq, partition in session.exec(
            select(col(EventRecord.seq), col(EventRecord.partition))
            .where(_pending(session, partitions))
            .order_by(col(EventRecord.seq))
            .limit(limit)
        )
    ]


def load_by_seq(session: Session, seqs: Sequence[int]) -> list[EventRecord]:
    rows: list[EventRecord] = []
    for chunk in _chunks(list(seqs)):
        rows.extend(session.exec(select(EventRecord).where(one_of(session, col(EventRecord.seq), chunk))))
    return sorted(rows, key=lambda r: r.seq or 0)


@dataclass(frozen=True)
class EventState:
    status: str
    route: str | None
    ever_applied: bool


def states_by_seq(session: Session, seqs: Sequence[int]) -> dict[int, EventState]:
    """Where each event stands now: three columns, without loading what the event says."""
    out: dict[int, EventState] = {}
    for chunk in _chunks(list(seqs)):
        for seq, status, route, ever in session.exec(
            select(
                col(EventRecord.seq),
                col(EventRecord.status),
                col(EventRecord.route),
                col(EventRecord.ever_applied),
            ).where(one_of(session, col(EventRecord.seq), chunk))
        ):
            out[seq or 0] = EventState(status, route, bool(ever))
    return out


def processed_events_of(session: Session, partition: str) -> list[EventRecord]:
    """Every event of a partition whose effect is in the stored state: the input of a full recompute."""
    return list(
        session.exec(
            select(EventRecord)
            .where(
                col(EventRecord.partition) == partition,
                col(EventRecord.status).in_([EventStatus.APPLIED.value, EventStatus.PROCESSED.value]),
            )
            .order_by(col(EventRecord.seq))
        )
    )


def mark_done(session: Session, seqs: Sequence[int]) -> datetime:
    """Mark events applied and processed in the transaction that applied them (their read models and
    the cache's floors moved in it too); returns the time stamped on them."""
    now = utcnow()
    for chunk in _chunks(list(seqs)):
        session.exec(
            update(EventRecord)
            .where(one_of(session, col(EventRecord.seq), chunk), col(EventRecord.status).in_(_PENDING))
            .values(
                status=EventStatus.PROCESSED.value,
                processed_at=now,
                ever_applied=True,
                error=None,
                error_category=None,
            )
            # The batch's rows loaded in this session are not read for their status again: fetching
            # every updated key back to refresh them was a tenth of a big batch's bookkeeping.
            .execution_options(synchronize_session=False)
        )
    return now


def mark_failed(session: Session, seq: int, reason: str, category: str, workflow_id: str | None) -> None:
    values: dict[str, Any] = {
        "status": EventStatus.FAILED.value,
        "error": reason[:4000],
        "error_category": category,
        "processed_at": utcnow(),
    }
    if workflow_id is not None:
        values["workflow_id"] = workflow_id
    session.exec(update(EventRecord).where(col(EventRecord.seq) == seq).values(**values))


def reopen_failed(session: Session, seq: int) -> bool:
    """Make a failed event applicable again (its workflow was reset to re-drive it); True if it was failed.

    ``ever_applied`` is kept: an event whose effect is already stored rebuilds its partition from the log
    rather than applying twice (see ``activities.pipeline``).
    """
    result = session.exec(
        update(EventRecord)
        .where(col(EventRecord.seq) == seq, col(EventRecord.status) == EventStatus.FAILED.value)
        .values(status=EventStatus.DISPATCHED.value, error=None, error_category=None, processed_at=None)
    )
    return bool(result.rowcount)


# -- events that wait for what they need ----------------------------------------------------------


def may_wait(row: EventRecord, max_s: float, now: datetime | None = None) -> bool:
    """Whether an event that needs something not yet there may wait (again) rather than fail: it has
    waited less than ``max_s`` seconds since it first started waiting (0: never waits)."""
    if max_s <= 0:
        return False
    since = row.waiting_since
    return since is None or ((now or utcnow()) - since).total_seconds() < max_s


def park(session: Session, seq: int, waiting_for: str, reason: str) -> None:
    """Park an event until ``waiting_for`` arrives (:func:`release_waiting`) or it has waited too long
    (:func:`expire_waiting`); the first parking starts its clock."""
    session.exec(
        update(EventRecord)
        .where(col(EventRecord.seq) == seq)
        .values(
            status=EventStatus.WAITING.value,
            waiting_for=waiting_for[:64],
            error=reason[:4000],
            error_category="waiting",
            waiting_since=func.coalesce(col(EventRecord.waiting_since), utcnow()),
        )
    )


def release_waiting(session: Session, waiting_for: Sequence[str]) -> int:
    """What the events waited for arrived: back to the dispatcher (``received``), which hands them on in
    log order, and their batch applies them in chain order. Their waiting clock keeps running."""
    result = session.exec(
        update(EventRecord)
        .where(
            col(EventRecord.status) == EventStatus.WAITING.value,
            col(EventRecord.waiting_for).in_(list(waiting_for)),
        )
        .values(status=EventStatus.RECEIVED.value, route=None, error=None, error_category=None)
    )
    return result.rowcount or 0


def expire_waiting(db: Database, max_s: float) -> int:
    """Events that have waited ``max_s`` seconds go back to the dispatcher one last time: still lacking
    what they need, they fail (visibly, replayable) rather than wait again."""
    cutoff = utcnow() - timedelta(seconds=max_s)
    expired = (
        col(EventRecord.status) == EventStatus.WAITING.value,
        col(EventRecord.waiting_since) <= cutoff,
    )
    # Looked for often: a read first, so that a quiet log costs no write transaction.
    with db.read() as session:
        if session.exec(select(col(EventRecord.seq)).where(*expired).limit(1)).first() is None:
            return 0
    with db.write() as session:
        result = session.exec(
            update(EventRecord)
            .where(
                col(EventRecord.status) == EventStatus.WAITING.value,
                col(EventRecord.waiting_since) <= cutoff,
            )
            .values(status=EventStatus.RECEIVED.value, route=None)
        )
        return result.rowcount or 0


def waiting(db: Database, limit: int, offset: int = 0) -> list[EventRecord]:
    """Waiting events, those waiting longest first."""
    with db.read() as session:
        return list(
            session.exec(
                select(EventRecord)
                .where(col(EventRecord.status) == EventStatus.WAITING.value)
                .order_by(col(EventRecord.waiting_since), col(EventRecord.seq))
                .offset(offset)
                .limit(limit)
            )
        )


def isolate(session: Session, seq: int, workflow_id: str) -> None:
    """Take a poison event out of its partition's batches; its own workflow will try it alone."""
    session.exec(
        update(EventRecord)
        .where(col(EventRecord.seq) == seq)
        .values(route=Route.OWN.value, workflow_id=workflow_id, dispatched_at=utcnow())
    )


@dataclass(frozen=True)
class AppliedEvent:
    """What invalidation needs of an applied event: its entity and what its latency metric is labelled by."""

    seq: int
    type: str
    priority_class: str
    received_at: datetime
    nft_key: str | None


def applied_in_partitions(session: Session, partitions: Sequence[str]) -> list[AppliedEvent]:
    rows = session.exec(
        # Whole rows: this path serves only events an older worker left applied, so it is rare.
        select(EventRecord).where(
            one_of(session, col(EventRecord.partition), partitions),
            col(EventRecord.status) == EventStatus.APPLIED.value,
        )
    )
    return [
        AppliedEvent(
            r.seq or 0,
            r.type,
            r.priority_class,
            r.received_at,
            None if r.token_id is None else nft_key(r.chain, r.contract, r.token_id),
        )
        for r in rows
    ]


def mark_processed(session: Session, seqs: Sequence[int]) -> datetime:
    """Mark applied events processed (events a worker from before ``mark_done`` left applied); returns
    the time stamped on them."""
    now = utcnow()
    for chunk in _chunks(list(seqs)):
        session.exec(
            update(EventRecord)
            .where(
                one_of(session, col(EventRecord.seq), chunk),
                col(EventRecord.status) == EventStatus.APPLIED.value,
            )
            .values(status=EventStatus.PROCESSED.value, processed_at=now)
        )
    return now


# -- replay, failures and counts ------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayFilter:
    source: str | None = None
    external_id: str | None = None
    types: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None
    statuses: Sequence[str] = (EventStatus.FAILED.value,)
    seqs: Sequence[int] = ()

    def clause(self) -> Any:
        parts: list[Any] = []
        if self.source:
            parts.append(col(EventRecord.source) == self.source)
        if self.external_id:
            parts.append(col(EventRecord.external_id) == self.external_id)
        if self.types:
            parts.append(col(EventRecord.type).in_(list(self.types)))
        if self.since:
            parts.append(col(EventRecord.received_at) >= self.since)
        if self.until:
            parts.append(col(EventRecord.received_at) < self.until)
        if self.statuses:
            parts.append(col(EventRecord.status).in_(list(self.statuses)))
        if self.seqs:
            parts.append(col(EventRecord.seq).in_(list(self.seqs)))
        return and_(true(), *parts)


def seqs_matching(db: Database, flt: ReplayFilter) -> list[int]:
    with db.read() as session:
        return [
            seq
            for seq in session.exec(
                select(col(EventRecord.seq)).where(flt.clause()).order_by(col(EventRecord.seq))
            )
            if seq is not None
        ]


def requeue(db: Database, seqs: Sequence[int]) -> int:
    """Send events back through the dispatcher.

    An event whose effect is already in the stored state keeps ``ever_applied``, and its partition is
    then rebuilt from the log rather than applied to twice (see ``activities.pipeline``).
    """
    changed = 0
    with db.write() as session:
        for chunk in _chunks(list(seqs)):
            result = session.exec(
                update(EventRecord)
                .where(col(EventRecord.seq).in_(chunk))
                .values(
                    status=EventStatus.RECEIVED.value,
                    route=None,
                    error=None,
                    error_category=None,
                    processed_at=None,
                    # A replayed event may wait afresh for what it needs.
                    waiting_for=None,
                    waiting_since=None,
                )
            )
            changed += result.rowcount or 0
    return changed


def backlog_by_class(db: Database) -> dict[str, int]:
    with db.read() as session:
        rows = session.exec(
            select(col(EventRecord.priority_class), func.count())
            .where(col(EventRecord.status).in_(_PENDING))
            .group_by(col(EventRecord.priority_class))
        ).all()
    return {cls: int(n) for cls, n in rows}


def status_counts(db: Database) -> dict[str, int]:
    with db.read() as session:
        rows = session.exec(
            select(col(EventRecord.status), func.count()).group_by(col(EventRecord.status))
        ).all()
    return {status: int(n) for status, n in rows}


def failures(db: Database, limit: int, offset: int = 0) -> list[EventRecord]:
    with db.read() as session:
        return list(
            session.exec(
                select(EventRecord)
                .where(
                    col(EventRecord.status) == EventStatus.FAILED.value,
                    or_(
                        col(EventRecord.error_category).is_(None),
                        col(EventRecord.error_category) != "skipped",
                    ),
                )
                .order_by(col(EventRecord.seq).desc())
                .limit(limit)
                .offset(offset)
            )
        )


def skip(db: Database, seqs: Sequence[int]) -> int:
    """Acknowledge failed events as not worth retrying: they stay failed but leave the failure list."""
    changed = 0
    with db.write() as session:
        for chunk in _chunks(list(seqs)):
            result = session.exec(
                update(EventRecord)
                .where(col(EventRecord.seq).in_(chunk), col(EventRecord.status) == EventStatus.FAILED.value)
                .values(error_category="skipped")
            )
            changed += result.rowcount or 0
    return changed


def rows_by_seq(db: Database, seqs: Sequence[int]) -> list[EventRecord]:
    with db.read() as session:
        return load_by_seq(session, seqs)
