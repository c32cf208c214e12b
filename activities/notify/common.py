"""What detection, delivery and digests share: entity names and links for templates, the channels a user
can be reached on, multi-endpoint sends, delivery metrics and the mapping of delivery errors to Temporal's
retry rules (``activities.contracts.notify``)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.exceptions import ApplicationError

from nftpulse.activities.contracts.notify import PERMANENT_DELIVERY, TRANSIENT_DELIVERY
from nftpulse.channels.base import (
    Channel,
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from nftpulse.channels.registry import ChannelRegistry
from nftpulse.core.metrics import DELIVERIES, DELIVERY_SECONDS
from nftpulse.domain.routing import DeliveryRoute
from nftpulse.store import notify as store
from nftpulse.store.db import Database

log = logging.getLogger("pulse.notify")

#: Pulse channel name → template channel.
TEMPLATE_CHANNEL = {
    "in_app": "in_app",
    "email": "email_html",
    "sms": "sms",
    "push": "push",
    "webhook": "webhook",
}


def entity_name(key: str) -> str:
    """A readable name for an entity key when no better one is known."""
    parts = key.split(":")
    short = lambda a: a if len(a) <= 12 else f"{a[:6]}…{a[-4:]}"  # noqa: E731 - local formatting helper
    if parts[0] == "collection" and len(parts) >= 3:
        return f"Collection {short(parts[2])}"
    if parts[0] == "nft" and len(parts) >= 4:
        return f"{short(parts[2])} #{parts[3]}"
    if parts[0] in ("creator", "wallet") and len(parts) >= 2:
        return f"{parts[0].capitalize()} {short(parts[-1])}"
    return key


def entity_url(base: str, key: str) -> str:
    """The API URL of an entity's current state."""
    parts = key.split(":")
    if parts[0] == "collection" and len(parts) >= 3:
        return f"{base}/v1/collections/{parts[1]}/{parts[2]}"
    if parts[0] == "nft" and len(parts) >= 4:
        return f"{base}/v1/nfts/{parts[1]}/{parts[2]}/{parts[3]}"
    return f"{base}/v1/entities/{key}"


def destinations(user: store.NotifyUser) -> set[str]:
    """Channels the user has an address for (in-app always)."""
    out = {"in_app"}
    if user.email:
        out.add("email")
    if user.phone:
        out.add("sms")
    if user.push_subscriptions:
        out.add("push")
    if any(not w.get("disabled") for w in user.webhooks):
        out.add("webhook")
    return out


def available_channels(user: store.NotifyUser, registry: ChannelRegistry) -> set[str]:
    """The channels the user set up that this worker can send on."""
    return destinations(user) & ({"in_app"} | set(registry.names()))


def channels_for(user: store.NotifyUser, kind: str, available: set[str]) -> list[str]:
    """The channels the user wants ``kind`` on, among ``available``; the inbox when none is."""
    prefs = user.preferences or {}
    wanted = list(prefs.get(kind) or prefs.get("default") or ["in_app"])
    return [c for c in wanted if c in available] or ["in_app"]


def inbox_only(route: str, channels: list[str], *, critical: bool, not_before: object) -> bool:
    """Whether storing a notification in the inbox is its whole delivery: due now, in-app only and not
    critical (a critical one escalates)."""
    return route == DeliveryRoute.NOW.value and channels == ["in_app"] and not critical and not_before is None


def observe_delivery(channel: str, status: str, created_at: datetime) -> None:
    """Count a delivery outcome; a notification is created right after its event is processed, so its
    age is the latency from processed to delivered."""
    DELIVERIES.labels(channel, status).inc()
    if status in ("sent", "delivered"):
        created = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
        DELIVERY_SECONDS.labels(channel).observe(max(0.0, (datetime.now(UTC) - created).total_seconds()))


def with_(message: OutboundMessage, **changes: Any) -> OutboundMessage:
    """A copy of ``message`` with ``changes`` (its destination, secret, push subscription …)."""
    return replace(message, **changes)


def retry_delay(value: float | None) -> timedelta | None:
    """Retry-After as Temporal's next retry delay (None: the retry policy's own backoff)."""
    return timedelta(seconds=value) if value else None


def transient(exc: TransientDeliveryError, delay: float | None = None) -> ApplicationError:
    """The activity failure for a transient delivery error: retried, after ``delay`` (seconds) or the
    provider's Retry-After when it gave one."""
    return ApplicationError(
        str(exc), type=TRANSIENT_DELIVERY, next_retry_delay=retry_delay(delay or exc.retry_after)
    )


def permanent(exc: Exception) -> ApplicationError:
    """The activity failure for a permanent delivery error: never retried."""
    return ApplicationError(str(exc), type=PERMANENT_DELIVERY, non_retryable=True)


def disable_endpoint(db: Database, user_id: str, channel: str, address: str) -> None:
    """A destination answered "gone" (410, expired push subscription): stop sending to it."""
    with db.write() as s:
        user = s.get(store.NotifyUser, user_id, with_for_update=not db.is_sqlite)
        if user is None:
            return
        if channel == "webhook":
            user.webhooks = [dict(w, disabled=True) if w.get("url") == address else w for w in user.webhooks]
        elif channel == "push":
            user.push_subscriptions = [p for p in user.push_subscriptions if p.get("endpoint") != address]
        s.add(user)


async def fan_out(
    db: Database, user_id: str, name: str, channel: Channel, targets: list[tuple[str, OutboundMessage]]
) -> DeliveryReceipt:
    """Send to every endpoint of a multi-endpoint channel (push subscriptions, webhooks).

    Success on any endpoint is success; endpoints that are gone are disabled; a transient failure of
    any endpoint retries the activity (endpoints are idempotent on the message id, so the ones that
    succeeded deduplicate).
    """
    if not targets:
        raise PermanentDeliveryError(name, "no active endpoint", code="no_destination")
    receipts: list[DeliveryReceipt] = []
    transient_error: TransientDeliveryError | None = None
    permanent_error: PermanentDeliveryError | None = None
    for address, message in targets:
        try:
            receipts.append(await channel.send(message))
        except TransientDeliveryError as exc:
            transient_error = exc
        except PermanentDeliveryError as exc:
            permanent_error = exc
            if exc.disable_endpoint:
                await asyncio.to_thread(disable_endpoint, db, user_id, name, address)
    if transient_error is not None:
        raise transient_error
    if receipts:
        return receipts[0]
    assert permanent_error is not None
    raise permanent_error
