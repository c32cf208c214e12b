"""Delivery: render one stored notification for one channel and send it, at most once per channel and
escalation step, and the in-app channel's inbox writer.

A channel's failure becomes the activity failure its contract names (``activities.contracts.notify``):
transient ones are retried (after the provider's Retry-After, or the Standard Webhooks schedule for
webhooks), permanent ones are not. Channels that can look their messages up (Twilio) are asked, before a
retry sends again, whether an earlier attempt whose answer was lost reached the provider.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nftpulse.activities.contracts.notify import DELIVER, NOT_FOUND, DeliverInput, DeliverResult
from nftpulse.activities.notify.common import (
    TEMPLATE_CHANNEL,
    fan_out,
    log,
    observe_delivery,
    permanent,
    transient,
    with_,
)
from nftpulse.channels.base import (
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    PushSubscription,
    Reconciling,
    TransientDeliveryError,
)
from nftpulse.channels.registry import ChannelRegistry, UnknownChannelError
from nftpulse.channels.webhook import next_retry_delay
from nftpulse.core.metrics import DELIVERIES
from nftpulse.store import feedback, notifications
from nftpulse.store import notify as store
from nftpulse.store.db import Database
from nftpulse.templates.renderer import NotificationContext, render


def click_url(row: store.Notification) -> str | None:
    """The web-push click beacon of a notification (``api.callbacks``): records the click, which stops
    the escalation, and redirects to the entity. None for rows stored without a click token."""
    token, base = row.context.get("click_token"), row.context.get("click_base")
    if not token or not base or row.id is None:
        return None
    return f"{base}/v1/callbacks/push/{row.id}/click?token={token}"


def reset_url(row: store.Notification) -> str | None:
    """The link in an adapted rule's notice that puts the rule back to the user's own setting
    (``api.feedback``), proved by the notification's token like its feedback links."""
    token, base = row.context.get("click_token"), row.context.get("click_base")
    if not token or not base or row.id is None:
        return None
    return f"{base}/v1/callbacks/feedback/{row.id}/reset?token={token}"


class DbInboxWriter:
    """The in-app channel's writer: shows the stored notification in the inbox (idempotent: the row
    already exists under its key; this only stamps ``inbox_at`` once). The live stream polls for it."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _write(self, message: OutboundMessage) -> str:
        with self._db.write() as s:
            row = notifications.by_idempotency_key(s, message.idempotency_key)
            if row is None or row.id is None:
                raise PermanentDeliveryError("in_app", "notification not stored", code="missing")
            if row.inbox_at is None:
                row.inbox_at = datetime.now(UTC)
                s.add(row)
            return str(row.id)

    async def __call__(self, message: OutboundMessage) -> str:
        """Stamp the inbox row; returns its id."""
        return await asyncio.to_thread(self._write, message)


class DeliveryActivities:
    """Delivery, built once by the worker with the channels it can send on."""

    def __init__(self, db: Database, registry: ChannelRegistry) -> None:
        self._db = db
        self._registry = registry

    @DELIVER.implement
    async def deliver(self, inp: DeliverInput) -> DeliverResult:
        """Render and send one notification on one channel; maps delivery errors to Temporal's retry rules."""
        loaded = await asyncio.to_thread(self._load, inp.notification_id)
        if loaded is None:
            raise ApplicationError(
                f"notification {inp.notification_id} not found", type=NOT_FOUND, non_retryable=True
            )
        row, user, done = loaded
        if "cancelled" in row.context:
            # Its cause was retracted before it went out (``store.retractions.withdraw``): nothing to send.
            return DeliverResult(row.id or 0, inp.channel, "cancelled", None, True)
        current = next((d for d in done if d.channel == inp.channel), None)
        if (
            inp.step == 0
            and current is not None
            and notifications.STATUS_RANK.get(current.status, -1) >= notifications.STATUS_RANK["sent"]
        ):
            # An earlier attempt (or the workflow's previous run) delivered it: never send twice.
            return DeliverResult(row.id or 0, inp.channel, current.status, current.provider_message_id, True)
        nid = row.id or 0
        reconciling = self._reconciling(inp.channel)
        if reconciling is not None:
            earlier = await self._earlier_send(row, user, inp, reconciling)
            if earlier is not None:
                return earlier
        try:
            receipt = await self._send(row, user, inp.channel, inp.step)
        except TransientDeliveryError as exc:
            # A lost answer leaves the send record pending, so that the retry looks before it sends.
            finished = None if exc.outcome_unknown or reconciling is None else "failed"
            await asyncio.to_thread(
                self._record, nid, inp.channel, "queued", None, str(exc), inp.step, finished
            )
            delay = exc.retry_after
            if inp.channel == "webhook":
                # Standard Webhooks' schedule (5 s, 5 min, 30 min, …) unless the receiver asked for longer.
                scheduled = next_retry_delay(activity.info().attempt)
                delay = max(delay or 0.0, scheduled or 0.0) or None
            raise transient(exc, delay) from exc
        except (PermanentDeliveryError, UnknownChannelError) as exc:
            DELIVERIES.labels(inp.channel, "failed").inc()
            finished = "failed" if reconciling is not None else None
            await asyncio.to_thread(
                self._record, nid, inp.channel, "failed", None, str(exc), inp.step, finished
            )
            raise permanent(exc) from exc
        await asyncio.to_thread(
            self._record,
            nid,
            inp.channel,
            receipt.status,
            receipt.provider_message_id,
            None,
            inp.step,
            "sent" if reconciling is not None else None,
        )
        observe_delivery(inp.channel, receipt.status, row.created_at)
        return DeliverResult(nid, inp.channel, receipt.status, receipt.provider_message_id)

    def _reconciling(self, channel_name: str) -> Reconciling | None:
        """The channel, if it can look up messages an earlier attempt may have created."""
        try:
            channel = self._registry.get(channel_name)
        except UnknownChannelError:
            return None
        return channel if isinstance(channel, Reconciling) else None

    async def _earlier_send(
        self, row: store.Notification, user: store.NotifyUser, inp: DeliverInput, channel: Reconciling
    ) -> DeliverResult | None:
        """What an earlier attempt of this send already achieved, or None when it is safe to send now.

        The send record is written before the provider is called. Finding it pending on a retry means an
        earlier attempt timed out or died after it may have reached the provider: the provider's message
        list answers whether the message exists, and if it does, its id is recorded instead of sending a
        second one.
        """
        nid = row.id or 0
        earlier = await asyncio.to_thread(self._begin_send, nid, inp.channel, inp.step)
        if earlier is None:
            return None
        outcome, since, provider_id = earlier
        if outcome == "sent":
            return DeliverResult(nid, inp.channel, "sent", provider_id, True)
        try:
            message = self._message(row, user, inp.channel, inp.step)
        except PermanentDeliveryError:
            return None  # the send itself reports it
        try:
            found = await channel.find_sent(message, since)
        except TransientDeliveryError as exc:
            raise transient(exc) from exc
        if found is None:
            return None
        log.info(
            "notify.send_reconciled",
            extra={"notification_id": nid, "channel": inp.channel, "provider_id": found.provider_message_id},
        )
        await asyncio.to_thread(
            self._record, nid, inp.channel, found.status, found.provider_message_id, None, inp.step, "sent"
        )
        observe_delivery(inp.channel, found.status, row.created_at)
        return DeliverResult(nid, inp.channel, found.status, found.provider_message_id, True)

    def _begin_send(
        self, notification_id: int, channel: str, step: int
    ) -> tuple[str, datetime, str | None] | None:
        """Open the send record; returns (outcome, started_at, provider id) of an earlier attempt's record
        that is still pending or sent, None when this is the first attempt (or the last one failed)."""
        now = datetime.now(UTC)
        with self._db.write() as s:
            record = s.get(store.SendRecord, (notification_id, channel, step))
            earlier = (
                (record.outcome, record.started_at, record.provider_message_id)
                if record is not None and record.outcome in ("pending", "sent")
                else None
            )
            notifications.begin_send(s, notification_id, channel, step, now)
            return earlier

    def _load(
        self, notification_id: int
    ) -> tuple[store.Notification, store.NotifyUser, list[store.Delivery]] | None:
        with self._db.read() as s:
            row = s.get(store.Notification, notification_id)
            if row is None:
                return None
            user = s.get(store.NotifyUser, row.user_id)
            if user is None:
                return None
            return row, user, notifications.deliveries_for(s, [notification_id])[notification_id]

    def _record(
        self,
        notification_id: int,
        channel: str,
        status: str,
        provider_id: str | None,
        error: str | None,
        step: int = 0,
        finished: str | None = None,
    ) -> None:
        """Store an attempt's outcome; ``finished`` also closes its send record (sent or failed) in the
        same transaction, so the SID is never stored without the record saying so."""
        now = datetime.now(UTC)
        with self._db.write() as s:
            notifications.upsert_delivery(
                s,
                notification_id,
                channel,
                status,
                now,
                provider_message_id=provider_id,
                error=error,
                attempt=True,
            )
            if finished is not None:
                notifications.finish_send(s, notification_id, channel, step, finished, now, provider_id)

    def _message(
        self, row: store.Notification, user: store.NotifyUser, channel_name: str, step: int = 0
    ) -> OutboundMessage:
        """The rendered message for ``channel_name``, addressed for single-destination channels."""
        template = TEMPLATE_CHANNEL.get(channel_name)
        if template is None:
            raise PermanentDeliveryError(channel_name, "unknown channel", code="unknown_channel")
        context = {k: v for k, v in row.context.items() if k in NotificationContext.model_fields}
        context["timezone"] = user.timezone
        if channel_name == "push":
            context["click_url"] = click_url(row)
        links = feedback.feedback_links(row, channel_name)
        if links is not None:
            context["feedback"] = {**links, "url": feedback.feedback_url(row, channel_name)}
        if isinstance(context.get("adaptation"), dict):
            context["adaptation"] = {**context["adaptation"], "reset_url": reset_url(row)}
        try:
            ctx = NotificationContext.model_validate(context)
        except ValidationError as exc:
            raise PermanentDeliveryError(
                channel_name, f"stored context invalid: {exc}", code="context"
            ) from exc
        rendered = render(row.kind, template, user.locale, ctx)
        base = OutboundMessage(
            # A repeat of an escalation step is a new message for providers that deduplicate by id.
            idempotency_key=row.idempotency_key if step == 0 else f"{row.idempotency_key}_s{step}",
            user_id=user.id,
            kind=row.kind,
            severity=row.severity,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            payload=rendered.data or {"title": rendered.subject, "body": rendered.text},
            locale=user.locale,
            notification_id=str(row.id),
            collapse_key=f"{row.rule_id}:{row.entity_key}",
        )
        if channel_name == "in_app":
            return with_(base, to=user.id)
        if channel_name == "email":
            if not user.email:
                raise PermanentDeliveryError("email", "user has no e-mail address", code="no_destination")
            return with_(base, to=user.email)
        if channel_name == "sms":
            if not user.phone:
                raise PermanentDeliveryError("sms", "user has no phone number", code="no_destination")
            return with_(base, to=user.phone)
        return base

    async def _send(
        self, row: store.Notification, user: store.NotifyUser, channel_name: str, step: int = 0
    ) -> DeliveryReceipt:
        channel = self._registry.get(channel_name)
        base = self._message(row, user, channel_name, step)
        if channel_name in ("in_app", "email", "sms"):
            return await channel.send(base)
        if channel_name == "push":
            targets = [
                (p["endpoint"], with_(base, push_subscription=PushSubscription(**p)))
                for p in user.push_subscriptions
            ]
        else:
            targets = [
                (
                    w["url"],
                    with_(
                        base,
                        to=w["url"],
                        webhook_secret=w.get("secret"),
                        event_type=f"notification.{row.kind}",
                    ),
                )
                for w in user.webhooks
                if not w.get("disabled")
            ]
        return await fan_out(self._db, user.id, channel_name, channel, targets)
