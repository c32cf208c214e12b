"""Digests: send one digest of a user's pending items on their digest channels and show the items in the
inbox. Each channel gets the digest templates (``templates/sources/*/digest.j2``) rendered in the user's
locale and time zone, with the items' stored titles and times grouped by kind, then entity."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlmodel import col
from temporalio.exceptions import ApplicationError

from nftpulse.activities.contracts.notify import NOT_FOUND, SEND_DIGEST, SendDigestInput, SendDigestResult
from nftpulse.activities.notify.common import (
    TEMPLATE_CHANNEL,
    available_channels,
    entity_name,
    entity_url,
    fan_out,
    log,
    observe_delivery,
    transient,
    with_,
)
from nftpulse.channels.base import (
    OutboundMessage,
    PermanentDeliveryError,
    PushSubscription,
    TransientDeliveryError,
)
from nftpulse.channels.registry import ChannelRegistry
from nftpulse.domain.rules import AlertSeverity
from nftpulse.store import notifications
from nftpulse.store import notify as store
from nftpulse.store.db import Database
from nftpulse.templates.renderer import (
    DigestContext,
    DigestGroupContext,
    DigestItemContext,
    inbox_text,
    render_digest,
)

_REASONS = ("schedule", "magnitude", "manual")


class DigestActivities:
    """Digest sends, built once by the worker with the channels it can send on."""

    def __init__(
        self, db: Database, registry: ChannelRegistry, *, public_base_url: str = "http://127.0.0.1:8000"
    ) -> None:
        self._db = db
        self._registry = registry
        self._base = public_base_url.rstrip("/")

    @SEND_DIGEST.implement
    async def send_digest(self, inp: SendDigestInput) -> SendDigestResult:
        """Send one digest on the user's digest channels and show its items in the inbox."""
        loaded = await asyncio.to_thread(self._load, inp)
        if loaded is None:
            raise ApplicationError(f"user {inp.user_id} not found", type=NOT_FOUND, non_retryable=True)
        user, context = loaded
        ids = [i for g in inp.groups for i in g.notification_ids]
        # Nothing left to show (every item gone): an empty digest sends nothing.
        sent = await self._send_all(user, inp, context) if context is not None else []
        await asyncio.to_thread(self._mark_delivered, ids, sent)
        return SendDigestResult(inp.digest_key, ["in_app", *sent], len(ids))

    async def _send_all(
        self, user: store.NotifyUser, inp: SendDigestInput, context: DigestContext
    ) -> list[str]:
        """Send the digest on each of the user's digest channels; returns those that took it. The items
        themselves land in the inbox (``_mark_delivered``), so in-app needs no message of its own."""
        wanted = (user.preferences or {}).get("digest") or (["email"] if user.email else ["in_app"])
        available = available_channels(user, self._registry)
        severity = max((g.severity for g in inp.groups), key=lambda x: AlertSeverity(x).rank)
        sent: list[str] = []
        for name in [c for c in wanted if c in available and c != "in_app"]:
            rendered = render_digest(TEMPLATE_CHANNEL[name], user.locale, context)
            message = OutboundMessage(
                idempotency_key=inp.digest_key,
                user_id=user.id,
                kind="digest",
                severity=severity,
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                payload=rendered.data or {"title": rendered.subject, "body": rendered.text},
                locale=user.locale,
                event_type="notification.digest",
                collapse_key="digest",
            )
            try:
                await self._send(user, name, message)
            except TransientDeliveryError as exc:
                raise transient(exc) from exc
            except PermanentDeliveryError as exc:
                log.warning("notify.digest_channel_failed", extra={"channel": name, "error": str(exc)})
                continue
            sent.append(name)
        return sent

    async def _send(self, user: store.NotifyUser, name: str, message: OutboundMessage) -> None:
        channel = self._registry.get(name)
        if name == "webhook":
            targets = [
                (w["url"], with_(message, to=w["url"], webhook_secret=w.get("secret")))
                for w in user.webhooks
                if not w.get("disabled")
            ]
            await fan_out(self._db, user.id, name, channel, targets)
        elif name == "push":
            targets = [
                (p["endpoint"], with_(message, push_subscription=PushSubscription(**p)))
                for p in user.push_subscriptions
            ]
            await fan_out(self._db, user.id, name, channel, targets)
        else:
            await channel.send(with_(message, to=user.email if name == "email" else user.phone or ""))

    def _load(self, inp: SendDigestInput) -> tuple[store.NotifyUser, DigestContext | None] | None:
        """The user and the digest's template context (items' titles, severities and times from their
        stored notifications; the group's titles where a row is gone)."""
        with self._db.read() as s:
            user = s.get(store.NotifyUser, inp.user_id)
            if user is None:
                return None
            ids = [i for g in inp.groups for i in g.notification_ids]
            stored: list[store.Notification] = list(
                s.execute(select(store.Notification).where(col(store.Notification.id).in_(ids))).scalars()
            )
            rows = {r.id: r for r in stored if r.id is not None and "cancelled" not in r.context}
            cancelled = {r.id for r in stored if "cancelled" in r.context}
        now = datetime.now(UTC)
        groups: list[DigestGroupContext] = []
        for g in inp.groups:
            if g.notification_ids and all(i in cancelled for i in g.notification_ids):
                continue  # every item's cause was retracted while it waited
            found = sorted(
                (rows[i] for i in g.notification_ids if i in rows), key=lambda r: (r.created_at, r.id or 0)
            )
            items = [
                DigestItemContext(
                    title=inbox_text(r.kind, r.context, r.title, r.body)[0],
                    severity=r.severity,
                    at=r.created_at,
                )
                for r in found
            ] or [DigestItemContext(title=t, severity=g.severity, at=now) for t in g.titles]
            if not items:
                continue
            groups.append(
                DigestGroupContext.model_validate(
                    {
                        "kind": g.kind,
                        "entity_key": g.entity_key,
                        "entity_name": entity_name(g.entity_key),
                        "entity_url": entity_url(self._base, g.entity_key),
                        "severity": g.severity,
                        "items": items,
                    }
                )
            )
        if not groups:
            return user, None
        context = DigestContext.model_validate(
            {
                "digest_key": inp.digest_key,
                "reason": inp.reason if inp.reason in _REASONS else "schedule",
                "timezone": user.timezone,
                "generated_at": now,
                "groups": groups,
                "inbox_url": f"{self._base}/v1/users/{user.id}/notifications",
                "preferences_url": f"{self._base}/v1/users/{user.id}",
            }
        )
        return user, context

    def _mark_delivered(self, ids: list[int], channels: list[str]) -> None:
        """In the inbox (delivered) and, for ``channels``, sent."""
        now = datetime.now(UTC)
        with self._db.write() as s:
            rows: Iterable[store.Notification] = s.execute(
                select(store.Notification).where(col(store.Notification.id).in_(ids))
            ).scalars()
            found: list[int] = []
            for row in rows:
                if "cancelled" in row.context:
                    continue  # its cause was retracted while it waited: left out of the digest
                if row.inbox_at is None:
                    row.inbox_at = now
                    s.add(row)
                observe_delivery("in_app", "delivered", row.created_at)
                found.append(row.id or 0)
            notifications.upsert_deliveries(
                s,
                [(nid, "in_app", "delivered") for nid in found]
                + [(nid, name, "sent") for nid in found for name in channels],
                now,
            )
