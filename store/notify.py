"""Notification tables: users, subscriptions (with rule state), the inbox and deliveries. Their queries are
in ``store/watching.py`` (what detection reads) and ``store/notifications.py`` (the inbox, deliveries).

Matching a changed entity to its watchers goes through ``notify_subscription_keys`` — one row per
(entity key, subscription), indexed on the entity key — so detection costs one indexed lookup per batch of
changed entities, never a scan over users. A portfolio subscription writes one key row per wallet.

Rule state lives in its own table, keyed by (subscription, rule, entity): a portfolio rule keeps separate
hysteresis per wallet, and writing state never rewrites the subscription the user edits.

These tables register on ``SQLModel.metadata`` when this module is imported; ``store/db.py`` must import
it (``from nftpulse.store import notify  # noqa: F401``) for the migrations to see them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Index,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from nftpulse.store.models import BigId, UtcDateTime


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
    #: ``learned``: non-urgent items wait for the hour the user reads most (``domain.sendtime``); null or
    #: ``immediate``: they go out when they happen.
    send_time: str | None = Field(default=None, max_length=16)
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
    #: ``Rule.model_dump(mode="json")`` for each rule: what detection evaluates, adapted by feedback.
    rules: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: The user's own rules as they set them, kept while feedback has adapted any of them (else null).
    original_rules: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    #: ``{rule_id: RuleAdaptation}`` (``domain.feedback``): sensitivity step, mode, reason, notice due.
    adaptation: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(sa_type=_tz())
    updated_at: datetime = Field(sa_type=_tz())
    #: Set when one of its rules raised in detection: detection leaves the subscription out until its
    #: owner updates the rules (which validates them again and clears both).
    disabled_at: datetime | None = Field(default=None, sa_type=_tz())
    disabled_reason: str | None = Field(default=None, max_length=500)


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


#: A correction (``store.retractions``) detection has not handed to delivery or the inbox yet.
_PENDING_CORRECTION = text("kind = 'correction' AND workflow_id IS NULL AND inbox_at IS NULL")


class Notification(SQLModel, table=True):
    """One notification: an inbox row, whatever channels also carry it. Unique on its idempotency key."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_notifications_idempotency_key"),
        Index("ix_notifications_user_seq", "user_id", "id"),
        Index("ix_notifications_user_unread", "user_id", "read_at", "id"),
        # Detection looks for corrections not handed on yet after every batch: an index of just those
        # (none, nearly always) instead of a scan of every notification.
        Index(
            "ix_notifications_pending_corrections",
            "id",
            postgresql_where=_PENDING_CORRECTION,
            sqlite_where=_PENDING_CORRECTION,
        ),
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


class WatchGeneration(SQLModel, table=True):
    """One row, moved by every change of who watches what and with which rules, in the transaction of the
    change: detection keeps the watchers of each entity in memory while it stands still."""

    __tablename__ = "notify_watch_generation"

    id: int = Field(default=1, primary_key=True)
    generation: int = 0


class FeedbackRecord(SQLModel, table=True):
    """A user's verdict on one notification (``useful``, ``not_useful``, ``too_many``); the latest wins.
    Rule, kinds and channel are copied from the notification so that adaptation reads one table."""

    __tablename__ = "notification_feedback"
    __table_args__ = (Index("ix_notification_feedback_rule", "subscription_id", "rule_id", "updated_at"),)

    notification_id: int = Field(sa_type=BigId, primary_key=True)
    user_id: str = Field(max_length=120)
    subscription_id: str | None = Field(default=None, max_length=40)
    rule_id: str | None = Field(default=None, max_length=80)
    kind: str = Field(max_length=32)
    rule_kind: str = Field(max_length=32)
    #: Where the verdict came from: in_app (the API), email, push, webhook.
    channel: str = Field(max_length=16)
    verdict: str = Field(max_length=16)
    created_at: datetime = Field(sa_type=_tz())
    updated_at: datetime = Field(sa_type=_tz())


class ReadHours(SQLModel, table=True):
    """When a user reads: how many reads (in-app reads, e-mail opens and clicks, push clicks, SMS replies)
    fell into each local hour of the day, for send-time learning (``domain.sendtime``)."""

    __tablename__ = "notify_read_hours"

    user_id: str = Field(primary_key=True, max_length=120)
    #: 24 counts, index = local hour.
    hours: list[int] = Field(default_factory=lambda: [0] * 24, sa_column=Column(JSON, nullable=False))
    reads: int = 0
    updated_at: datetime = Field(sa_type=_tz())
