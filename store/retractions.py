"""Retractions in the event log: which events were taken back (``event_retractions``, also for events not
seen yet) and marking the retracted ones, so that they leave every recompute (``events.processed_events_of``
reads only applied and processed events) and `pulse verify` agrees with the refolded state."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, delete, tuple_, update
from sqlmodel import Session, col, select

from nftpulse.domain.book.retract import RETRACTION_SUFFIX
from nftpulse.domain.events import Event, EventType
from nftpulse.domain.rules import idempotency_key
from nftpulse.store.db import Database
from nftpulse.store.models import ChainBlock, EventRecord, EventRetraction, EventStatus
from nftpulse.store.notify import Delivery, Notification
from nftpulse.store.sql import insert_many, one_of, table_of

EventRef = tuple[str, str]
_T = TypeVar("_T")
_CHUNK = 300


def _chunks(refs: Sequence[_T]) -> Iterable[Sequence[_T]]:
    for start in range(0, len(refs), _CHUNK):
        yield refs[start : start + _CHUNK]


def _named(source: Any, external_id: Any, refs: Sequence[EventRef]) -> ColumnElement[bool]:
    return tuple_(source, external_id).in_(list(refs))


def partitions_with_retractions(session: Session, partitions: Sequence[str]) -> set[str]:
    """Those of ``partitions`` a retraction has named any event of: most collections never see one, so a
    batch asks once for all its partitions and looks up events by id only in these."""
    found: set[str] = set()
    for chunk in _chunks(sorted(set(partitions))):
        found |= set(
            session.exec(
                select(col(EventRetraction.partition))
                .where(one_of(session, col(EventRetraction.partition), chunk))
                .distinct()
            )
        )
    return found


def retracted_among(session: Session, partition: str, refs: Iterable[EventRef]) -> set[EventRef]:
    """Those of ``refs`` a retraction of ``partition`` has named (before now)."""
    wanted = sorted(set(refs))
    found: set[EventRef] = set()
    if not wanted:
        return found
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


def retracted_by_id(db: Database, source: str, ids: Sequence[str], suffix: str) -> dict[str, str | None]:
    """Those of ``ids`` (of ``source``) whose retraction (id: the event's id plus ``suffix``, as
    ``retract.retraction_of`` names them) is in the event log, applied or not yet, with the hash of the
    block the retracted log was in when the retraction names it."""
    found: dict[str, str | None] = {}
    with db.read() as session:
        for start in range(0, len(ids), 500):
            names = [i + suffix for i in ids[start : start + 500]]
            for name, data in session.exec(
                select(col(EventRecord.external_id), col(EventRecord.data)).where(
                    col(EventRecord.source) == source, col(EventRecord.external_id).in_(names)
                )
            ):
                block = data.get("block_hash") if isinstance(data, dict) else None
                found[name.removesuffix(suffix)] = block if isinstance(block, str) else None
    return found


# -- notifications an undone event caused --------------------------------------------------------------

#: ``Notification.kind`` of a correction (``domain.rules.NotificationKind.CORRECTION``).
CORRECTION = "correction"


def undone_rows(session: Session, partition: str, refs: Sequence[EventRef]) -> list[EventRecord]:
    rows: list[EventRecord] = []
    for chunk in _chunks(sorted(set(refs))):
        rows += session.exec(
            select(EventRecord).where(
                col(EventRecord.partition) == partition,
                _named(col(EventRecord.source), col(EventRecord.external_id), chunk),
            )
        )
    return rows


def _batch_of(cause: str) -> tuple[str, int, int, str] | None:
    """A notification's cause, ``<workflow>@<first>-<last>:<entity>:<metric>`` (detection's): the batch's
    workflow, its seq range and the entity."""
    workflow, _, rest = cause.rpartition("@")
    span, _, tail = rest.partition(":")
    entity, _, _metric = tail.rpartition(":")
    first, _, last = span.partition("-")
    if not workflow or not first.isdigit() or not last.isdigit() or not entity:
        return None
    return workflow, int(first), int(last), entity


def caused_only_by(session: Session, partition: str, undone: Sequence[EventRecord]) -> dict[int, list[str]]:
    """The notifications whose change came from a batch in which, for their entity, only undone events
    were applied: by id, with those events (``source/id``). A notification its batch's other events also
    caused stands."""
    gone = {r.seq for r in undone}
    out: dict[int, list[str]] = {}
    for row in undone:
        if not row.workflow_id:
            continue
        nft = f"nft:{partition.removeprefix('collection:')}:{row.token_id}" if row.token_id else None
        candidates = session.exec(
            select(Notification).where(
                col(Notification.cause).startswith(row.workflow_id + "@", autoescape=True)
            )
        )
        for note in candidates:
            batch = _batch_of(note.cause or "")
            if batch is None or batch[0] != row.workflow_id or not batch[1] <= (row.seq or 0) <= batch[2]:
                continue
            entity = batch[3]
            if entity not in (partition, nft):
                continue
            live = select(col(EventRecord.seq)).where(
                col(EventRecord.workflow_id) == row.workflow_id,
                col(EventRecord.partition) == partition,
                col(EventRecord.seq).between(batch[1], batch[2]),
                col(EventRecord.status).in_([EventStatus.APPLIED.value, EventStatus.PROCESSED.value]),
                col(EventRecord.type) != EventType.RETRACTION.value,
            )
            if entity == nft:
                live = live.where(col(EventRecord.token_id) == row.token_id)
            if any(seq not in gone for seq in session.exec(live)):
                continue
            found = out.setdefault(note.id or 0, [])
            if f"{row.source}/{row.external_id}" not in found:
                found.append(f"{row.source}/{row.external_id}")
    return out


def withdraw(session: Session, caused: dict[int, list[str]], at: datetime) -> tuple[int, int]:
    """Cancel each of these notifications not delivered yet (delivery then sends nothing) and follow each
    delivered one with a correction (``kind`` correction, delivered as any notification by detection's
    next run). Idempotent: a notification is cancelled or corrected once. Returns (cancelled, corrected)."""
    if not caused:
        return 0, 0
    notes = list(session.exec(select(Notification).where(col(Notification.id).in_(list(caused)))))
    sent = {
        d.notification_id
        for d in session.exec(select(Delivery).where(col(Delivery.notification_id).in_(list(caused))))
        if d.status in ("sent", "delivered", "read")
    }
    cancelled = corrected = 0
    for note in notes:
        context = dict(note.context)
        if note.kind == CORRECTION or "cancelled" in context or "corrected_by" in context:
            continue
        retracted = caused[note.id or 0]
        if note.inbox_at is None and note.id not in sent:
            context["cancelled"] = {"retracted": retracted, "at": at.isoformat()}
            note.context = context
            session.add(note)
            cancelled += 1
            continue
        key = idempotency_key(note.user_id, CORRECTION, note.entity_key, str(note.id))
        context["corrected_by"] = key
        note.context = context
        session.add(note)
        correction = {
            "notification_id": note.id,
            "original_title": note.title or note.entity_key,
            "retracted": retracted,
        }
        session.add(
            Notification(
                idempotency_key=key,
                user_id=note.user_id,
                subscription_id=note.subscription_id,
                rule_id=note.rule_id,
                kind=CORRECTION,
                severity=note.severity,
                entity_key=note.entity_key,
                context={**dict(note.context), "idempotency_key": key, "correction": correction},
                route="now",
                magnitude=note.magnitude,
                cause=f"correction:{note.id}",
                created_at=at,
            )
        )
        corrected += 1
    return cancelled, corrected


def pending_corrections(session: Session) -> list[Notification]:
    """Corrections not handed to delivery yet."""
    return list(
        session.exec(
            select(Notification).where(
                col(Notification.kind) == CORRECTION,
                col(Notification.workflow_id).is_(None),
                col(Notification.inbox_at).is_(None),
            )
        )
    )


def reincluded(
    db: Database, source: str, batch: Sequence[Event], block_hash: Callable[[Event], str | None]
) -> list[Event]:
    """``batch`` with each event whose id a retraction already took back, seen in another block than the
    retracted log (a transaction of an orphaned block included again in the new branch, same transaction
    hash and log index), under an id naming its block, ``<id>@<block hash prefix>``: a new event rather than
    a duplicate of the retracted one. Reading that block again gives the same id; the retracted log itself
    delivered again stays what it was. A retraction of such an event (``retract.retraction_of``, as a
    provider's ``removed`` log makes it) is pointed at the renamed event the same way."""

    def base(event: Event) -> str:
        return event.id.removesuffix(RETRACTION_SUFFIX) if event.type is EventType.RETRACTION else event.id

    ours = [e for e in batch if e.source == source]
    taken = retracted_by_id(db, source, sorted({base(e) for e in ours}), RETRACTION_SUFFIX)
    if not taken:
        return list(batch)
    out = []
    for event in batch:
        found = block_hash(event) if event.source == source and base(event) in taken else None
        if found is not None and found == taken[base(event)]:
            found = None  # the retracted log itself, delivered again: the same event (or retraction)
        if found and event.type is EventType.RETRACTION and event.id == base(event) + RETRACTION_SUFFIX:
            if event.data["retracts"].get("source", source) == source:
                target = f"{base(event)}@{found[:18]}"
                data = {**event.data, "retracts": {"source": source, "id": target}}
                event = event.model_copy(update={"id": target + RETRACTION_SUFFIX, "data": data})
        elif found and event.type is not EventType.RETRACTION:
            event = event.model_copy(update={"id": f"{event.id}@{found[:18]}"})
        out.append(event)
    return out
