"""Notifications, the inbox and deliveries: storing what detection created under its idempotency key,
the inbox's pages and read state, each channel's delivery status (which only moves forward), the
providers' callbacks, and the send records that keep a retried send from reaching a provider twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlmodel import Session, col

from nftpulse.store.feedback import record_read
from nftpulse.store.notify import (
    Delivery,
    Notification,
    SendRecord,
)
from nftpulse.store.sql import insert_many, one_of, table_of

#: Order of delivery statuses: a late "sent" callback must not undo "delivered"; ``read`` is final.
STATUS_RANK = {"queued": 0, "sent": 1, "delivered": 2, "read": 3}


def insert_notifications(session: Session, rows: Sequence[Notification]) -> list[tuple[Notification, bool]]:
    """Insert notifications unless their idempotency keys are stored; returns, in order, each stored row
    and whether it is new. One query finds the keys already stored and one upsert writes the new rows
    (``insert_many``), setting their ids on them. The rows stay detached: what the caller changes
    afterwards it stores itself (``set_workflow_ids``). A key another transaction inserted meanwhile is
    skipped by the upsert and read back."""
    keys = sorted({r.idempotency_key for r in rows})
    stored: dict[str, Notification] = {}
    for start in range(0, len(keys), 500):
        chunk: Iterable[Notification] = session.execute(
            select(Notification).where(
                one_of(session, col(Notification.idempotency_key), keys[start : start + 500])
            )
        ).scalars()
        for existing in chunk:
            stored[existing.idempotency_key] = existing
    fresh: dict[str, Notification] = {}
    for row in rows:
        if row.idempotency_key not in stored and row.idempotency_key not in fresh:
            fresh[row.idempotency_key] = row
    if fresh:

        def skip_stored(stmt: Any) -> Any:
            return stmt.on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(
                col(Notification.id), col(Notification.idempotency_key)
            )

        values = [{name: getattr(row, name) for name in _NOTIFICATION_COLUMNS} for row in fresh.values()]
        table = table_of(Notification)
        inserted: Iterable[Any] = insert_many(session, table, values, skip_stored)
        ids: dict[str, int] = {key: nid for nid, key in inserted}
        for key in list(fresh):
            if key in ids:
                fresh[key].id = ids[key]
            else:
                found = by_idempotency_key(session, key)
                if found is None:
                    raise RuntimeError(f"notification {key} neither inserted nor found")
                stored[key] = found
                del fresh[key]
    out: list[tuple[Notification, bool]] = []
    for row in rows:
        if row.idempotency_key in stored:
            out.append((stored[row.idempotency_key], False))
        else:
            first = fresh[row.idempotency_key]
            out.append((first, first is row))
    return out


def insert_inbox_deliveries(session: Session, notification_ids: Sequence[int], at: datetime) -> None:
    """Record new notifications as delivered in-app (their whole delivery was being stored)."""
    if not notification_ids:
        return
    rows = [
        {
            "notification_id": nid,
            "channel": "in_app",
            "status": "delivered",
            "provider_message_id": None,
            "attempts": 0,
            "error": None,
            "updated_at": at,
        }
        for nid in notification_ids
    ]

    def skip_stored(stmt: Any) -> Any:
        return stmt.on_conflict_do_nothing(index_elements=["notification_id", "channel"])

    insert_many(session, table_of(Delivery), rows, skip_stored)


def set_workflow_ids(session: Session, workflow_ids: dict[int, str]) -> None:
    """Point notifications (by id) at their workflows: one statement executed with many parameter sets."""
    if not workflow_ids:
        return
    table = table_of(Notification)
    session.connection().execute(
        update(table).where(table.c.id == bindparam("b_id")).values(workflow_id=bindparam("b_wf")),
        [{"b_id": nid, "b_wf": wf} for nid, wf in workflow_ids.items()],
    )


_NOTIFICATION_COLUMNS = [c.name for c in table_of(Notification).columns if c.name != "id"]


def by_idempotency_key(session: Session, key: str) -> Notification | None:
    """The notification stored under ``key``."""
    return session.execute(
        select(Notification).where(col(Notification.idempotency_key) == key)
    ).scalar_one_or_none()


def upsert_delivery(
    session: Session,
    notification_id: int,
    channel: str,
    status: str,
    now: datetime,
    *,
    provider_message_id: str | None = None,
    error: str | None = None,
    attempt: bool = False,
) -> Delivery:
    """Create or move the delivery row of (notification, channel); statuses never go backwards."""
    row = session.execute(
        select(Delivery).where(
            col(Delivery.notification_id) == notification_id, col(Delivery.channel) == channel
        )
    ).scalar_one_or_none()
    if row is None:
        row = Delivery(notification_id=notification_id, channel=channel, status="queued", updated_at=now)
    if advances(row.status, status):
        row.status = status
    if provider_message_id:
        row.provider_message_id = provider_message_id
    if error is not None:
        row.error = error[:2000]
    if attempt:
        row.attempts += 1
    row.updated_at = now
    session.add(row)
    session.flush()
    return row


def upsert_deliveries(session: Session, items: Sequence[tuple[int, str, str]], now: datetime) -> None:
    """``upsert_delivery`` for many (notification, channel, status) at once: one read of the existing rows
    and one flush, where a row at a time cost three round trips per notification."""
    ids = sorted({nid for nid, _, _ in items})
    existing: dict[tuple[int, str], Delivery] = {}
    for start in range(0, len(ids), 500):
        chunk: Iterable[Delivery] = session.execute(
            select(Delivery).where(one_of(session, col(Delivery.notification_id), ids[start : start + 500]))
        ).scalars()
        for stored_row in chunk:
            existing[(stored_row.notification_id, stored_row.channel)] = stored_row
    for nid, channel, status in items:
        row = existing.get((nid, channel))
        if row is None:
            row = Delivery(notification_id=nid, channel=channel, status="queued", updated_at=now)
            existing[(nid, channel)] = row
        if advances(row.status, status):
            row.status = status
        row.updated_at = now
        session.add(row)
    session.flush()


def advances(current: str, new: str) -> bool:
    """Whether ``new`` may replace ``current``: forward only; ``failed`` only before delivery."""
    if current == new:
        return False
    if new == "failed":
        return current in ("queued", "sent")
    if current == "failed":
        # A provider may report delivery after an earlier soft failure (a retried send succeeded).
        return new in ("delivered", "read")
    return STATUS_RANK.get(new, -1) > STATUS_RANK.get(current, -1)


def deliveries_for(session: Session, notification_ids: Sequence[int]) -> dict[int, list[Delivery]]:
    """Delivery rows per notification."""
    out: dict[int, list[Delivery]] = {i: [] for i in notification_ids}
    if not notification_ids:
        return out
    rows: Iterable[Delivery] = session.execute(
        select(Delivery).where(one_of(session, col(Delivery.notification_id), list(notification_ids)))
    ).scalars()
    for d in rows:
        out.setdefault(d.notification_id, []).append(d)
    return out


def inbox(
    session: Session,
    user_id: str,
    *,
    unread: bool = False,
    include_archived: bool = False,
    before_id: int | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[Notification]:
    """A user's inbox, newest first (or oldest first past ``after_id``, for the live stream)."""
    stmt = select(Notification).where(
        col(Notification.user_id) == user_id,
        col(Notification.inbox_at).is_not(None),
    )
    if unread:
        stmt = stmt.where(col(Notification.read_at).is_(None))
    if not include_archived:
        stmt = stmt.where(col(Notification.archived_at).is_(None))
    if before_id is not None:
        stmt = stmt.where(col(Notification.id) < before_id)
    if after_id is not None:
        stmt = stmt.where(col(Notification.id) > after_id).order_by(col(Notification.id))
    else:
        stmt = stmt.order_by(col(Notification.id).desc())
    return list(session.execute(stmt.limit(limit)).scalars())


def unread_count(session: Session, user_id: str) -> int:
    """Unread, unarchived inbox rows of the user."""
    return int(
        session.execute(
            select(func.count())
            .select_from(Notification)
            .where(
                col(Notification.user_id) == user_id,
                col(Notification.inbox_at).is_not(None),
                col(Notification.read_at).is_(None),
                col(Notification.archived_at).is_(None),
            )
        ).scalar_one()
    )


def mark_read(session: Session, user_id: str, ids: Sequence[int] | None, now: datetime) -> list[Notification]:
    """Mark the given (or all unread) notifications of the user read, with their deliveries; returns the
    rows that changed (their escalation workflows need a signal)."""
    stmt = select(Notification).where(
        col(Notification.user_id) == user_id,
        col(Notification.read_at).is_(None),
    )
    if ids is not None:
        stmt = stmt.where(one_of(session, col(Notification.id), list(ids)))
    rows: list[Notification] = list(session.execute(stmt).scalars())
    for row in rows:
        row.read_at = now
        session.add(row)
    if rows:
        session.execute(
            update(Delivery)
            .where(
                one_of(session, col(Delivery.notification_id), [r.id for r in rows]),
                col(Delivery.channel) == "in_app",
            )
            .values(status="read", updated_at=now)
        )
        # Send-time learning: this user reads at this hour (once per reading, however many rows).
        record_read(session, user_id, now)
    return rows


@dataclass(frozen=True)
class FailedDelivery:
    """A channel that gave up on a notification, for the operators' failure list."""

    notification_id: int
    user_id: str
    kind: str
    channel: str
    error: str | None
    attempts: int
    updated_at: datetime
    workflow_id: str | None


def failed_deliveries(session: Session, limit: int, offset: int = 0) -> list[FailedDelivery]:
    # Eight columns of two tables: past what the typed select overloads infer.
    rows: Sequence[Any] = session.execute(
        select(
            col(Delivery.notification_id),
            col(Notification.user_id),
            col(Notification.kind),
            col(Delivery.channel),
            col(Delivery.error),
            col(Delivery.attempts),
            col(Delivery.updated_at),
            col(Notification.workflow_id),
        )
        .join(Notification, col(Notification.id) == col(Delivery.notification_id))
        .where(col(Delivery.status) == "failed")
        .order_by(col(Delivery.updated_at).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return [
        FailedDelivery(nid, user_id, kind, channel, error, attempts, updated_at, workflow_id)
        for nid, user_id, kind, channel, error, attempts, updated_at, workflow_id in rows
    ]


def workflow_ids_of(session: Session, notification_ids: Sequence[int]) -> list[str]:
    found: Iterable[str | None] = session.execute(
        select(col(Notification.workflow_id)).where(
            one_of(session, col(Notification.id), list(notification_ids))
        )
    ).scalars()
    return [wf for wf in found if wf]


def apply_provider_statuses(
    session: Session,
    channel: str,
    by_id: Sequence[tuple[int, str]],
    by_key: Sequence[tuple[str, str]],
    now: datetime,
) -> int:
    """Move the ``channel`` deliveries named in a provider callback; returns how many rows it touched.

    ``by_id`` holds (notification id, status), ``by_key`` (idempotency key, status) for messages that
    carry only the key. Unknown notifications are skipped: a provider posts events of mail or messages
    Pulse never sent, and those must not fail the whole callback.
    """
    ids = sorted({nid for nid, _ in by_id})
    keys = sorted({key for key, _ in by_key})
    known: set[int] = set()
    key_ids: dict[str, int] = {}
    if ids:
        found: list[Any] = list(
            session.execute(
                select(col(Notification.id)).where(one_of(session, col(Notification.id), ids))
            ).all()
        )
        known = {int(i) for (i,) in found}
    if keys:
        pairs: list[Any] = list(
            session.execute(
                select(col(Notification.idempotency_key), col(Notification.id)).where(
                    one_of(session, col(Notification.idempotency_key), keys)
                )
            ).all()
        )
        key_ids = {str(k): int(i) for k, i in pairs}
    touched = 0
    updates = [(nid, st) for nid, st in by_id if nid in known]
    updates += [(key_ids[k], st) for k, st in by_key if k in key_ids]
    for nid, status in updates:
        upsert_delivery(session, nid, channel, status, now)
        touched += 1
    return touched


def begin_send(session: Session, notification_id: int, channel: str, step: int, now: datetime) -> SendRecord:
    """The send record of (notification, channel, step), created as pending at ``now`` if new.

    An existing pending record keeps its ``started_at``: the lookup window must reach back to the first
    attempt that may have reached the provider.
    """
    row = session.get(SendRecord, (notification_id, channel, step), with_for_update=True)
    if row is None:
        row = SendRecord(
            notification_id=notification_id, channel=channel, step=step, started_at=now, updated_at=now
        )
        session.add(row)
        session.flush()
    elif row.outcome == "failed":
        # A definite failure earlier: nothing can be out there, start a fresh window.
        row.outcome, row.started_at, row.updated_at = "pending", now, now
        session.add(row)
    return row


def finish_send(
    session: Session,
    notification_id: int,
    channel: str,
    step: int,
    outcome: str,
    now: datetime,
    provider_message_id: str | None = None,
) -> None:
    """Close a send record: ``sent`` (with the provider's id) or ``failed`` (the provider refused it)."""
    row = session.get(SendRecord, (notification_id, channel, step))
    if row is None or row.outcome == "sent":
        return
    row.outcome, row.updated_at = outcome, now
    if provider_message_id:
        row.provider_message_id = provider_message_id
    session.add(row)


def ids_for_keys(session: Session, keys: Iterable[str]) -> list[int]:
    """The ids of the notifications stored under the given idempotency keys (unknown keys are skipped)."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    rows: list[Any] = list(
        session.execute(
            select(col(Notification.id)).where(one_of(session, col(Notification.idempotency_key), wanted))
        ).all()
    )
    return sorted(int(i) for (i,) in rows)


def mark_acted_on(session: Session, ids: Iterable[int], now: datetime) -> list[Notification]:
    """The user acted on these notifications outside the inbox (opened or clicked the e-mail, clicked the
    push, replied to the SMS): mark them read like an in-app read; returns the rows that changed (their
    escalation workflows need the ``read`` signal)."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    owners: list[Any] = list(
        session.execute(
            select(col(Notification.user_id), col(Notification.id)).where(
                one_of(session, col(Notification.id), wanted), col(Notification.read_at).is_(None)
            )
        ).all()
    )
    by_user: dict[str, list[int]] = {}
    for user_id, nid in owners:
        by_user.setdefault(str(user_id), []).append(int(nid))
    changed: list[Notification] = []
    for user_id, nids in sorted(by_user.items()):
        changed += mark_read(session, user_id, nids, now)
    return changed


def unread_with_delivery(session: Session, user_ids: Iterable[str], channel: str) -> list[int]:
    """The unread notifications of these users that went out on ``channel`` (a reply from the SMS
    recipient acts on every SMS they have not acted on yet)."""
    users = sorted(set(user_ids))
    if not users:
        return []
    rows: list[Any] = list(
        session.execute(
            select(col(Notification.id))
            .join(Delivery, col(Delivery.notification_id) == col(Notification.id))
            .where(
                one_of(session, col(Notification.user_id), users),
                col(Notification.read_at).is_(None),
                col(Delivery.channel) == channel,
            )
        ).all()
    )
    return sorted({int(i) for (i,) in rows})


def inbox_after(session: Session, after_id: int, limit: int = 500) -> list[Notification]:
    """Every user's inbox rows past ``after_id``, oldest first: what the live inbox streams fan out."""
    stmt = (
        select(Notification)
        .where(col(Notification.id) > after_id, col(Notification.inbox_at).is_not(None))
        .order_by(col(Notification.id))
        .limit(limit)
    )
    return list(session.execute(stmt).scalars())


def newest_id(session: Session) -> int:
    """The newest notification id (0 when there is none)."""
    return int(session.execute(select(func.max(col(Notification.id)))).scalar() or 0)
