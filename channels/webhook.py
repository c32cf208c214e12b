"""Webhooks signed per Standard Webhooks (https://www.standardwebhooks.com).

Signing: ``webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>`` where the key is
the base64 part of the endpoint's ``whsec_…`` secret. ``webhook-id`` is derived from the notification's
idempotency key, so every retry carries the same id and receivers can deduplicate; the timestamp is
that of the attempt, as the specification asks.

Retries follow :data:`RETRY_SCHEDULE` (the workflow sleeps between attempts); a 410 disables the
endpoint at once. Any other non-2xx is a failure worth retrying, per the specification.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from nftpulse.channels.base import (
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
    parse_retry_after,
)
from nftpulse.core.delivery import (
    WEBHOOK_SECRET_PREFIX,
    InvalidWebhookUrl,
    vet_destination,
    webhook_message_id,
)

#: Seconds to wait before attempts 2…8: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
RETRY_SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


def next_retry_delay(attempt: int) -> float | None:
    """Delay before the next attempt after ``attempt`` failed attempts (1-based); None: give up."""
    if attempt < 1 or attempt > len(RETRY_SCHEDULE):
        return None
    return RETRY_SCHEDULE[attempt - 1]


def _secret_bytes(secret: str) -> bytes:
    raw = secret[len(WEBHOOK_SECRET_PREFIX) :] if secret.startswith(WEBHOOK_SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise ValueError("webhook secret must be whsec_ followed by base64") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers plus the content type."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
        "content-type": "application/json",
    }


def message_id(idempotency_key: str) -> str:
    """``webhook-id`` for a notification: stable across retries."""
    return webhook_message_id(idempotency_key)


@dataclass(frozen=True)
class WebhookConfig:
    """Webhook delivery settings."""

    allow_private: bool = False
    timeout_s: float = 15.0
    user_agent: str = "Pulse-Webhooks/1"


def webhook_body(message: OutboundMessage) -> bytes:
    """The JSON body: Standard Webhooks' ``{type, timestamp, data}`` envelope around the payload."""
    envelope: dict[str, Any] = {
        "type": message.event_type or f"notification.{message.kind}",
        "timestamp": message.payload.get("detected_at") or message.payload.get("at"),
        "data": message.payload,
    }
    return json.dumps(
        envelope, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str
    ).encode()


class WebhookChannel:
    """Signed webhook POSTs with httpx to the address the URL was vetted at; redirects are not followed
    (they could lead inward)."""

    name = "webhook"

    def __init__(self, config: WebhookConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=config.timeout_s,
            follow_redirects=False,
            headers={"user-agent": config.user_agent},
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def send(self, message: OutboundMessage) -> DeliveryReceipt:
        """POST one signed event; 2xx is success, 410 disables the endpoint, the rest is retried."""
        if not message.webhook_secret:
            raise PermanentDeliveryError(self.name, "endpoint has no signing secret", code="no_secret")
        # Vetted again before every attempt (DNS may have changed since registration), and the request
        # goes to the address vetted here: httpx resolving the name again could be answered otherwise.
        try:
            destination = await vet_destination(message.to, allow_private=self.config.allow_private)
        except InvalidWebhookUrl as exc:
            raise PermanentDeliveryError(self.name, str(exc), code="invalid_url") from exc
        pinned = destination.pinned()
        body = webhook_body(message)
        msg_id = message_id(message.idempotency_key)
        try:
            headers = signed_headers(message.webhook_secret, msg_id, body)
        except ValueError as exc:
            raise PermanentDeliveryError(self.name, str(exc), code="bad_secret") from exc
        try:
            response = await self._client.post(
                pinned.url,
                content=body,
                headers={**headers, "host": pinned.host_header},
                extensions={"sni_hostname": pinned.sni_hostname} if pinned.sni_hostname else None,
            )
        except httpx.HTTPError as exc:
            raise TransientDeliveryError(
                self.name, f"request failed: {exc.__class__.__name__}: {exc}"
            ) from exc
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryReceipt(
                channel=self.name,
                status="delivered",
                provider_message_id=msg_id,
                detail={"http_status": status},
            )
        if status == 410:
            raise PermanentDeliveryError(
                self.name, "endpoint answered 410 Gone", disable_endpoint=True, code=status
            )
        raise TransientDeliveryError(
            self.name,
            f"HTTP {status}: {response.text[:200]}",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            code=status,
        )

    async def aclose(self) -> None:
        """Close the HTTP client if this channel created it."""
        if self._own_client:
            await self._client.aclose()
