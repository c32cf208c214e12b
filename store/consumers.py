"""Consumers: other services' endpoints fed the change log (``/v1/consumers``), their outbox and delivery
log (``consumer_deliveries``).

The runner reads the change log by cursor (:func:`read`): each change that matches the consumer's
filters becomes a delivery row holding the message it will carry, keyed by (consumer, cursor,
generation) so that a retried read writes nothing twice. The runner then sends row by row and records
each attempt (:func:`record_attempt`). A replay (:func:`replay`) starts a new generation from a cursor.

Reading by id: ids are handed out before commit, so on Postgres a lower id may become visible after a
higher one. The read stops before the first missing id until it has been missing for :data:`SETTLE_S`
(a transaction still committing shows up by then; a rolled-back one never does), as the feed's tail does.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, tuple_, update
from sqlmodel import Session, col

from nftpulse.store import changes
from nftpulse.store.changes import LoggedChange
from nftpulse.store.models import ConsumerDelivery, ConsumerRecord, EventRecord
from nftpulse.store.sql import upsert_insert

ID_PREFIX = "con_"
ACTIVE = "active"
DISABLED = "disabled"
#: How long a missing change log id holds the read back (see the module's docstring).
SETTLE_S = 5.0
#: Delivery statuses that are final (the rest is ``pending``).
FINAL = ("delivered", "failed", "gone")


def new_id() -> str:
    return ID_PREFIX + secrets.token_hex(8)


def message_key(consumer_id: str, cursor: int) -> str:
    """The idempotency key of a change's message to a consumer: the same on every retry and replay."""
    return f"consumer_{consumer_id}_{cursor}"


def create(
    session: Session,
    *,
    url: str,
    secret: str,
    keys: Sequence[str],
    prefixes: Sequence[str],
    metrics: Sequence[str],
    event_types: Sequence[str],
    now: datetime,
) -> ConsumerRecord:
    """A new active consumer that starts with the changes logged from now on."""
    row = ConsumerRecord(
        id=new_id(),
        url=url,
        secret=secret,
        keys=list(keys),
        prefixes=list(prefixes),
        metrics=list(metrics),
        event_types=list(event_types),
        status=ACTIVE,
        cursor=changes.head(session),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get(session: Session, consumer_id: str) -> ConsumerRecord | None:
    return session.get(ConsumerRecord, consumer_id)


def listed(session: Session) -> list[ConsumerRecord]:
    return list(session.execute(select(ConsumerRecord).order_by(col(ConsumerRecord.created_at))).scalars())


def remove(session: Session, consumer_id: str) -> bool:
    """Delete a consumer and its delivery log; False when there was none."""
    row = session.get(ConsumerRecord, consumer_id)
    if row is None:
        return False
    session.execute(delete(ConsumerDelivery).where(col(ConsumerDelivery.consumer_id) == consumer_id))
    session.delete(row)
    return True


def replay(session: Session, consumer_id: str, now: datetime) -> tuple[int, bool] | None:
    """Count a replay; returns its generation and whether the consumer was disabled (a replay enables it
    again: the endpoint's owner asking for the changes again is the sign it is back). None: no consumer."""
    row = session.get(ConsumerRecord, consumer_id, with_for_update=True)
    if row is None:
        return None
    was_disabled = row.status != ACTIVE
    row.replays += 1
    row.status, row.disabled_reason, row.updated_at = ACTIVE, None, now
    session.add(row)
    return row.replays, was_disabled


def disable(session: Session, consumer_id: str, reason: str, now: datetime) -> None:
    """Disable a consumer; what it had pending is not sent (a replay asks for it again)."""
    session.execute(
        update(ConsumerRecord)
        .where(col(ConsumerRecord.id) == consumer_id)
        .values(status=DISABLED, disabled_reason=reason[:500], updated_at=now)
    )
    session.execute(
        update(ConsumerDelivery)
        .where(col(ConsumerDelivery.consumer_id) == consumer_id, col(ConsumerDelivery.status) == "pending")
        .values(status="gone", error="not sent: the consumer was disabled", updated_at=now)
    )


# -- reading the change log ----------------------------------------------------------------------------


@dataclass
class ReadOutcome:
    """What :func:`read` wrote: the new deliveries (id, entity key, cursor), the cursor read through and
    the missing id it waits on, if any; ``stop`` when the consumer is gone or disabled."""

    queued: list[tuple[int, str, int]] = field(default_factory=list)
    cursor: int = 0
    gap_id: int | None = None
    gap_since: datetime | None = None
    stop: str | None = None
    #: The read started past changes the retention had already pruned: the cursor it wanted.
    lost_from: int | None = None


def _contiguous(
    rows: list[LoggedChange], cursor: int, gap_id: int | None, gap_since: datetime | None, now: datetime
) -> tuple[list[LoggedChange], int | None, datetime | None]:
    """The rows up to the first missing id (passing over one missing for :data:`SETTLE_S`), and the
    missing id that stopped the read, with since when it is missing."""
    taken: list[LoggedChange] = []
    expected = cursor + 1
    for row in rows:
        if row.cursor != expected:
            settled = (
                gap_id is not None
                and gap_since is not None
                and expected <= gap_id < row.cursor
                and now - gap_since >= timedelta(seconds=SETTLE_S)
            )
            if not settled:
                since = gap_since if gap_id is not None and expected <= gap_id < row.cursor else now
                return taken, expected, since
            gap_id, gap_since = None, None
        taken.append(row)
        expected = row.cursor + 1
    return taken, None, None


def _event_types(session: Session, rows: list[LoggedChange]) -> dict[str, str]:
    """The type of each cause (``source/id``) of ``rows``."""
    pairs = {tuple(cause.split("/", 1)) for row in rows for cause in row.causes if "/" in cause}
    if not pairs:
        return {}
    found = session.execute(
        select(col(EventRecord.source), col(EventRecord.external_id), col(EventRecord.type)).where(
            tuple_(col(EventRecord.source), col(EventRecord.external_id)).in_(sorted(pairs))
        )
    )
    return {f"{source}/{external_id}": str(kind) for source, external_id, kind in found}


def wants(consumer: ConsumerRecord, row: LoggedChange, types: dict[str, str]) -> bool:
    """Whether a change passes the consumer's filters: its key (listed or under a prefix), a metric it
    names, an event type among its causes'. Each filter left empty lets everything through."""
    if (consumer.keys or consumer.prefixes) and not (
        row.entity_key in consumer.keys or row.entity_key.startswith(tuple(consumer.prefixes))
    ):
        return False
    if consumer.metrics and not any(m in consumer.metrics for m in row.changes):
        return False
    return not consumer.event_types or any(types.get(c) in consumer.event_types for c in row.causes)


def read(
    session: Session,
    consumer_id: str,
    cursor: int | None,
    generation: int,
    *,
    gap_id: int | None,
    gap_since: datetime | None,
    limit: int,
    now: datetime,
) -> ReadOutcome:
    """Read the change log after ``cursor`` (None: the consumer's stored cursor) and write the matching
    changes into the consumer's outbox under ``generation``; idempotent."""
    consumer = session.get(ConsumerRecord, consumer_id)
    if consumer is None:
        return ReadOutcome(stop="deleted")
    if consumer.status != ACTIVE:
        return ReadOutcome(cursor=consumer.cursor, stop="disabled")
    start = consumer.cursor if cursor is None else cursor
    # Past the retention the log has nothing left to give: read on from what it kept (and say so).
    pruned = changes.pruned_through(session)
    lost_from = start if start < pruned else None
    start = max(start, pruned)
    rows = changes.after(session, start, limit=limit)
    taken, gap_id, gap_since = _contiguous(rows, start, gap_id, gap_since, now)
    through = taken[-1].cursor if taken else start
    if not rows:
        gap_id, gap_since = None, None
    types = _event_types(session, taken) if consumer.event_types else {}
    metrics = frozenset(consumer.metrics)
    matching = [row for row in taken if wants(consumer, row, types)]
    queued: list[tuple[int, str, int]] = []
    if matching:
        values = [
            {
                "consumer_id": consumer_id,
                "cursor": row.cursor,
                "generation": generation,
                "entity_key": row.entity_key,
                "message_id": message_key(consumer_id, row.cursor),
                "payload": row.message(metrics),
                "status": "pending",
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for row in matching
        ]
        insert = upsert_insert(session)(ConsumerDelivery).values(values)
        session.execute(insert.on_conflict_do_nothing(index_elements=["consumer_id", "cursor", "generation"]))
        found: Any = session.execute(
            select(col(ConsumerDelivery.id), col(ConsumerDelivery.entity_key), col(ConsumerDelivery.cursor))
            .where(
                col(ConsumerDelivery.consumer_id) == consumer_id,
                col(ConsumerDelivery.generation) == generation,
                col(ConsumerDelivery.cursor).in_([row.cursor for row in matching]),
                col(ConsumerDelivery.status) == "pending",
            )
            .order_by(col(ConsumerDelivery.cursor))
        )
        queued = [(int(i), str(k), int(c)) for i, k, c in found]
    if through != consumer.cursor:
        consumer.cursor = through
        session.add(consumer)
    return ReadOutcome(queued, through, gap_id, gap_since, lost_from=lost_from)


def prune_deliveries(session: Session, consumer_id: str, before: datetime) -> int:
    """Remove a consumer's finished deliveries logged before ``before``; returns how many."""
    result: Any = session.execute(
        delete(ConsumerDelivery).where(
            col(ConsumerDelivery.consumer_id) == consumer_id,
            col(ConsumerDelivery.created_at) < before,
            col(ConsumerDelivery.status).in_(FINAL),
        )
    )
    return int(result.rowcount or 0)


# -- delivering --------------------------------------------------------------------------------------------


def delivery(session: Session, delivery_id: int) -> tuple[ConsumerDelivery, ConsumerRecord] | None:
    """A delivery and its consumer; None when either is gone."""
    row = session.get(ConsumerDelivery, delivery_id)
    if row is None:
        return None
    consumer = session.get(ConsumerRecord, row.consumer_id)
    return None if consumer is None else (row, consumer)


def record_attempt(
    session: Session,
    delivery_id: int,
    status: str,
    response_code: int | None,
    error: str | None,
    now: datetime,
) -> int:
    """Count an attempt and its answer; returns the attempts made so far (0: the row is gone)."""
    row = session.get(ConsumerDelivery, delivery_id, with_for_update=True)
    if row is None:
        return 0
    row.attempts += 1
    row.status = status
    row.response_code = response_code
    row.error = error[:500] if error else None
    row.updated_at = now
    session.add(row)
    return row.attempts


def deliveries(
    session: Session, consumer_id: str, *, limit: int, before: int | None = None
) -> list[ConsumerDelivery]:
    """A consumer's delivery log, newest first, optionally before a delivery id (paging)."""
    stmt = select(ConsumerDelivery).where(col(ConsumerDelivery.consumer_id) == consumer_id)
    if before is not None:
        stmt = stmt.where(col(ConsumerDelivery.id) < before)
    return list(session.execute(stmt.order_by(col(ConsumerDelivery.id).desc()).limit(limit)).scalars())


def pending_count(session: Session, consumer_id: str) -> int:
    stmt = select(func.count()).where(
        col(ConsumerDelivery.consumer_id) == consumer_id, col(ConsumerDelivery.status) == "pending"
    )
    return int(session.execute(stmt).scalar() or 0)
