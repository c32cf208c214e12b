"""Notification tables and queries: users, subscriptions (with rule state), the inbox and deliveries.

Matching a changed entity to its watchers goes through ``notify_subscription_keys`` — one row per
(entity key, subscription), indexed on the entity key — so detection costs one indexed lookup per batch of
changed entities, never a scan over users. A portfolio subscription writes one key row per wallet.

Rule state lives in its own table, keyed by (subscription, rule, entity): a portfolio rule keeps separate
hysteresis per wallet, and writing state never rewrites the subscription the user edits.

These tables register on ``SQLModel.metadata`` when this module is imported; ``store/db.py`` must import
it (``from nftpulse.store import notify  # noqa: F401``) for the migrations to see them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Index,
    Text,
    UniqueConstraint,
    bindparam,
    cast,
    delete,
    func,
    select,
    update,
)
from sqlmodel import Field, Session, SQLModel, col

from nftpulse.store.models import BigId, EntityView, Rate, UtcDateTime
from nftpulse.store.sql import insert_many, one_of, upsert_insert

#: Order of delivery statuses: a late "sent" callback must not undo "delivered"; ``read`` is final.
STATUS_RANK = {"queued": 0, "sent": 1, "delivered": 2, "read": 3}


def _tz() -> Any:
    return UtcDateTime()


class NotifyUser(SQLModel, table=True):
    """A user's delivery profile: destinations, locale and time zone, quiet hours, digest and budget."""

    __tablename__ = "notify_users"

    id: str = Field(primary_key=True, max_length=120)
    locale: str = Field(default="en", max_length=20)
    timezone: str = Field(default="UTC", max_length=64)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=20)
    #: ``[{endpoint, p256dh, auth}]``
    push_subscriptions: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    #: ``[{url, secret, disabled}]``
    webhooks: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: ``{start, end, allow_critical}`` in the user's time zone, or null.
    quiet_hours: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    #: ``{frequency, at, weekday, flush_magnitude}`` in the user's time zone, or null (no digest).
    digest: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    #: ``{"default": [channels], "<kind>": [channels], "digest": [channels]}``
    preferences: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: ``{chain, delay_s, max_repeats}`` for critical alerts.
    escalation: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    critical_breakthrough: bool = False
    hourly_budget: int = 10
    #: ``BudgetState`` (send times of the last hour), updated by detection under a row lock.
    budget: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(sa_type=_tz())


class Subscription(SQLModel, table=True):
    """What a user watches (one entity, or a portfolio of wallets) and the rules that apply to it."""

    __tablename__ = "notify_subscriptions"
    __table_args__ = (Index("ix_notify_subscriptions_user", "user_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    user_id: str = Field(max_length=120, foreign_key="notify_users.id")
    target: str = Field(max_length=16, description="nft, collection, creator, wallet or portfolio")
    entity_key: str | None = Field(default=None, max_length=200)
    wallets: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    label: str | None = Field(default=None, max_length=200)
    #: ``Rule.model_dump(mode="json")`` for each rule.
    rules: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_type=_tz())
    updated_at: datetime = Field(sa_type=_tz())


class SubscriptionKey(SQLModel, table=True):
    """Index from an entity key to the subscriptions watching it: what detection queries."""

    __tablename__ = "notify_subscription_keys"
    __table_args__ = (Index("ix_notify_subscription_keys_entity", "entity_key"),)

    entity_key: str = Field(primary_key=True, max_length=200)
    subscription_id: str = Field(primary_key=True, max_length=40, foreign_key="notify_subscriptions.id")


class RuleStateRecord(SQLModel, table=True):
    """A rule's memory (``RuleState.to_dict()``) for one entity of one subscription."""

    __tablename__ = "notify_rule_states"

    subscription_id: str = Field(primary_key=True, max_length=40)
    rule_id: str = Field(primary_key=True, max_length=80)
    entity_key: str = Field(primary_key=True, max_length=200)
    state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(sa_type=_tz())


class Notification(SQLModel, table=True):
    """One notification: an inbox row, whatever channels also carry it. Unique on its idempotency key."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_notifications_idempotency_key"),
        Index("ix_notifications_user_seq", "user_id", "id"),
        Index("ix_notifications_user_unread", "user_id", "read_at", "id"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    idempotency_key: str = Field(max_length=80)
    user_id: str = Field(max_length=120)
    subscription_id: str | None = Field(default=None, max_length=40)
    rule_id: str | None = Field(default=None, max_length=80)
    kind: str = Field(max_length=32)
    severity: str = Field(max_length=16)
    entity_key: str = Field(max_length=200)
    title: str = Field(default="", max_length=500)
    body: str = Field(default="")
    #: The template context (``NotificationContext``) plus the rule's explanation: the evidence.
    context: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: now, digest or defer (quiet hours): how detection routed it.
    route: str = Field(default="now", max_length=16)
    not_before: datetime | None = Field(default=None, sa_type=_tz())
    magnitude: float = 1.0
    cause: str | None = Field(default=None, max_length=200)
    workflow_id: str | None = Field(default=None, max_length=300)
    #: Set when the in-app channel delivered it: only then does it show in the inbox and stream.
    inbox_at: datetime | None = Field(default=None, sa_type=_tz())
    created_at: datetime = Field(sa_type=_tz())
    read_at: datetime | None = Field(default=None, sa_type=_tz())
    archived_at: datetime | None = Field(default=None, sa_type=_tz())


class Delivery(SQLModel, table=True):
    """Status of one notification on one channel, fed by sends and provider callbacks."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        UniqueConstraint("notification_id", "channel", name="uq_deliveries_notification_channel"),
        Index("ix_deliveries_provider_id", "provider_message_id"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    notification_id: int = Field(sa_type=BigId, foreign_key="notifications.id")
    channel: str = Field(max_length=16)
    status: str = Field(default="queued", max_length=16)
    provider_message_id: str | None = Field(default=None, max_length=200)
    attempts: int = 0
    error: str | None = None
    updated_at: datetime = Field(sa_type=_tz())


class SendRecord(SQLModel, table=True):
    """One send of a notification on a channel that can be looked up at the provider (SMS), per
    escalation step: written before the provider is called, so that a retry knows an earlier attempt may
    have created the message even when its answer (and the SID) was lost."""

    __tablename__ = "notify_sends"

    notification_id: int = Field(sa_type=BigId, primary_key=True)
    channel: str = Field(primary_key=True, max_length=16)
    step: int = Field(default=0, primary_key=True)
    #: When the first attempt whose outcome is unknown started; the provider lookup starts here.
    started_at: datetime = Field(sa_type=_tz())
    #: pending (an attempt may be in flight or lost), sent (``provider_message_id`` known) or failed.
    outcome: str = Field(default="pending", max_length=16)
    provider_message_id: str | None = Field(default=None, max_length=200)
    updated_at: datetime = Field(sa_type=_tz())


class DetectionRecord(SQLModel, table=True):
    """The notifications one detection batch created, by its cause: a retried activity whose first
    attempt committed returns the same answer instead of losing the notifications."""

    __tablename__ = "notify_detections"

    cause: str = Field(primary_key=True, max_length=200)
    notification_ids: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_type=_tz())


# -- queries -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchEntry:
    """A subscription watching one changed entity: ids and rules only."""

    entity_key: str
    subscription_id: str
    user_id: str
    #: The rules as their stored JSON text: watchers of a busy entity mostly share a few definitions,
    #: which the caller parses once each (decoding every row's JSON cost more than the query).
    rules_json: str


class WatchGeneration(SQLModel, table=True):
    """One row, moved by every change of who watches what and with which rules, in the transaction of the
    change: detection keeps the watchers of each entity in memory while it stands still."""

    __tablename__ = "notify_watch_generation"

    id: int = Field(default=1, primary_key=True)
    generation: int = 0


def watch_generation(session: Session) -> int:
    stmt = select(col(WatchGeneration.generation)).where(col(WatchGeneration.id) == 1)
    value = session.execute(stmt).scalar()
    return int(value or 0)


def bump_watch_generation(session: Session) -> None:
    stmt = upsert_insert(session)(WatchGeneration).values(id=1, generation=1)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"], set_={"generation": col(WatchGeneration.generation) + 1}
        )
    )


def wallets_watched(session: Session) -> bool:
    """Whether any subscription watches a wallet (its own or a portfolio's): one probe of the key index."""
    probe = (
        select(col(SubscriptionKey.entity_key))
        .where(col(SubscriptionKey.entity_key) >= "wallet:", col(SubscriptionKey.entity_key) < "wallet;")
        .limit(1)
    )
    return session.execute(probe).first() is not None


def watch_entries(session: Session, entity_keys: Iterable[str]) -> list[WatchEntry]:
    """Who watches any of ``entity_keys`` and with which rules, by user then subscription.

    Plain columns, no objects: a busy collection has hundreds of watchers, and only the few whose rules
    fire need their user and subscription loaded (``users_to_update``, ``subscriptions_by_id``).
    """
    keys = sorted(set(entity_keys))
    out: list[WatchEntry] = []
    for start in range(0, len(keys), 500):
        # (entity key, subscription id, user id, rules as JSON text): the column types are not inferred.
        rows: Sequence[Any] = session.execute(
            select(
                col(SubscriptionKey.entity_key),
                col(Subscription.id),
                col(Subscription.user_id),
                cast(col(Subscription.rules), Text),
            )
            .join(Subscription, col(Subscription.id) == col(SubscriptionKey.subscription_id))
            .where(one_of(session, col(SubscriptionKey.entity_key), keys[start : start + 500]))
        ).all()
        out += [WatchEntry(key, sub_id, user_id, rules) for key, sub_id, user_id, rules in rows]
    return sorted(out, key=lambda w: (w.user_id, w.subscription_id, w.entity_key))


def users_to_update(session: Session, user_ids: Iterable[str], *, lock: bool) -> dict[str, NotifyUser]:
    """The users whose budget a detection is about to change; ``lock`` takes their row locks (Postgres) so
    that two detections for one user serialise instead of losing an update, and reads them afresh."""
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    stmt = select(NotifyUser).where(one_of(session, col(NotifyUser.id), ids)).order_by(col(NotifyUser.id))
    if lock:
        stmt = stmt.with_for_update()
    rows: Iterable[NotifyUser] = session.execute(stmt.execution_options(populate_existing=True)).scalars()
    return {user.id: user for user in rows}


def subscriptions_by_id(session: Session, ids: Iterable[str]) -> dict[str, Subscription]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows: Iterable[Subscription] = session.execute(
        select(Subscription).where(one_of(session, col(Subscription.id), wanted))
    ).scalars()
    return {sub.id: sub for sub in rows}


def rule_states(session: Session, triples: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
    """Stored rule states (``RuleState.to_dict()`` as JSON text) by (subscription, rule, entity) for the
    given triples. Text, not decoded: a batch reads thousands, most of them equal, and the caller decodes
    each distinct one once."""
    wanted = set(triples)
    if not wanted:
        return {}
    subs = sorted({t[0] for t in wanted})
    rows: Iterable[Any] = session.execute(
        select(
            col(RuleStateRecord.subscription_id),
            col(RuleStateRecord.rule_id),
            col(RuleStateRecord.entity_key),
            cast(col(RuleStateRecord.state), Text),
        ).where(one_of(session, col(RuleStateRecord.subscription_id), subs))
    )
    return {(sub, rule, entity): state for sub, rule, entity, state in rows if (sub, rule, entity) in wanted}


def save_rule_states(session: Session, states: dict[tuple[str, str, str], Any], at: datetime) -> None:
    """Store rule states by (subscription, rule, entity): one upsert for all of them. A state is its dict
    or, encoded once for the many watchers that share it, an ``orjson.Fragment``."""
    if not states:
        return

    def upsert(stmt: Any) -> Any:
        return stmt.on_conflict_do_update(
            index_elements=["subscription_id", "rule_id", "entity_key"],
            set_={"state": stmt.excluded.state, "updated_at": stmt.excluded.updated_at},
        )

    rows = [
        {"subscription_id": sub, "rule_id": rule, "entity_key": entity, "state": state, "updated_at": at}
        for (sub, rule, entity), state in states.items()
    ]
    insert_many(session, RuleStateRecord.__table__, rows, upsert)  # type: ignore[attr-defined]


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
        table = Notification.__table__  # type: ignore[attr-defined]
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

    insert_many(session, Delivery.__table__, rows, skip_stored)  # type: ignore[attr-defined]


def set_workflow_ids(session: Session, workflow_ids: dict[int, str]) -> None:
    """Point notifications (by id) at their workflows: one statement executed with many parameter sets."""
    if not workflow_ids:
        return
    table = Notification.__table__  # type: ignore[attr-defined]
    session.connection().execute(
        update(table).where(table.c.id == bindparam("b_id")).values(workflow_id=bindparam("b_wf")),
        [{"b_id": nid, "b_wf": wf} for nid, wf in workflow_ids.items()],
    )


_NOTIFICATION_COLUMNS = [c.name for c in Notification.__table__.columns if c.name != "id"]  # type: ignore[attr-defined]


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
    return rows


def replace_subscription_keys(session: Session, subscription_id: str, keys: Iterable[str]) -> None:
    """Make the index rows of a subscription exactly ``keys``. Every change of a subscription (create,
    update, delete) goes through here, and so moves the watch generation."""
    bump_watch_generation(session)
    session.execute(delete(SubscriptionKey).where(col(SubscriptionKey.subscription_id) == subscription_id))
    for key in sorted(set(keys)):
        session.add(SubscriptionKey(entity_key=key, subscription_id=subscription_id))


def delete_subscription(session: Session, subscription_id: str) -> None:
    """Remove a subscription, its index rows and its rule state."""
    replace_subscription_keys(session, subscription_id, [])
    session.execute(delete(RuleStateRecord).where(col(RuleStateRecord.subscription_id) == subscription_id))
    session.execute(delete(Subscription).where(col(Subscription.id) == subscription_id))


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


# -- holdings: what detection needs to match portfolios and value the user's exposure ---------------------


@dataclass(frozen=True)
class EntityFacts:
    """The few read-model fields detection needs of one changed NFT or collection."""

    key: str
    kind: str
    collection_key: str
    #: NFT: current owner (lower case), price estimate, last sale price and their currency.
    owner: str | None = None
    price_estimate: str | None = None
    last_sale: str | None = None
    #: Collection: floor and quote currency.
    floor: str | None = None
    currency: str | None = None


def _view_text(*path: str) -> Any:
    view = EntityView.__table__.c.view  # type: ignore[attr-defined]
    return view[path if len(path) > 1 else path[0]].as_string()


def entity_facts(session: Session, keys: Iterable[str]) -> dict[str, EntityFacts]:
    """Owner and value fields of the given NFT and collection read models: one query on the primary key,
    reading only those JSON fields (a batch may change thousands of NFTs)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    stmt = select(
        col(EntityView.key),
        col(EntityView.kind),
        col(EntityView.collection_key),
        _view_text("owner"),
        _view_text("price_estimate", "value"),
        _view_text("price_estimate", "currency"),
        _view_text("last_sale", "price"),
        _view_text("last_sale", "currency"),
        _view_text("floor"),
        _view_text("currency"),
    ).where(one_of(session, col(EntityView.key), wanted))
    out: dict[str, EntityFacts] = {}
    rows: list[Any] = list(session.execute(stmt).all())
    for key, kind, coll, owner, estimate, est_ccy, sale, sale_ccy, floor, ccy in rows:
        out[key] = EntityFacts(
            key=key,
            kind=kind,
            collection_key=coll,
            owner=owner.lower() if owner else None,
            price_estimate=estimate,
            last_sale=sale,
            floor=floor,
            currency=ccy or est_ccy or sale_ccy,
        )
    return out


def portfolio_wallets(session: Session, user_ids: Iterable[str]) -> dict[str, set[str]]:
    """The wallets each user declared as their own (portfolio subscriptions), through the user index."""
    users = sorted(set(user_ids))
    out: dict[str, set[str]] = {u: set() for u in users}
    if not users:
        return out
    rows: list[Any] = list(
        session.execute(
            select(col(Subscription.user_id), col(Subscription.wallets)).where(
                one_of(session, col(Subscription.user_id), users), col(Subscription.target) == "portfolio"
            )
        ).all()
    )
    for user_id, wallets in rows:
        out[user_id].update(str(w).lower() for w in wallets or [])
    return out


def held_counts(
    session: Session, collection_keys: Iterable[str], wallets: Iterable[str]
) -> dict[tuple[str, str], int]:
    """Tokens per (collection, owner) for the given collections and wallets: one grouped query over the
    collections' NFT read models (indexed by collection)."""
    colls, owners = sorted(set(collection_keys)), sorted({w.lower() for w in wallets})
    if not colls or not owners:
        return {}
    owner = _view_text("owner")
    rows: list[Any] = list(
        session.execute(
            select(col(EntityView.collection_key), owner, func.count())
            .where(
                one_of(session, col(EntityView.collection_key), colls),
                col(EntityView.kind) == "nft",
                one_of(session, owner, owners),
            )
            .group_by(col(EntityView.collection_key), owner)
        ).all()
    )
    return {(str(coll), str(w)): int(n) for coll, w, n in rows}


def rates_to(session: Session, currencies: Iterable[str], quote: str, at: datetime) -> dict[str, Decimal]:
    """The latest rate at or before ``at`` from each currency to ``quote`` (price ticks), where known."""
    out: dict[str, Decimal] = {}
    for base in sorted({c.upper() for c in currencies} - {quote}):
        row = session.execute(
            select(col(Rate.rate))
            .where(col(Rate.base) == base, col(Rate.quote) == quote, col(Rate.at) <= at)
            .order_by(col(Rate.at).desc())
            .limit(1)
        ).scalar_one_or_none()
        if row is not None:
            out[base] = Decimal(row)
    return out
