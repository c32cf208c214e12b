"""Webhooks signed per Standard Webhooks (https://www.standardwebhooks.com), and URL vetting.

Signing: ``webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>`` where the key is
the base64 part of the endpoint's ``whsec_…`` secret. ``webhook-id`` is derived from the notification's
idempotency key, so every retry carries the same id and receivers can deduplicate; the timestamp is
that of the attempt, as the specification asks.

Retries follow :data:`RETRY_SCHEDULE` (the workflow sleeps between attempts); a 410 disables the
endpoint at once. Any other non-2xx is a failure worth retrying, per the specification.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from nftpulse.channels.base import (
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
    parse_retry_after,
)

#: Seconds to wait before attempts 2…8: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
RETRY_SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
SECRET_PREFIX = "whsec_"


def next_retry_delay(attempt: int) -> float | None:
    """Delay before the next attempt after ``attempt`` failed attempts (1-based); None: give up."""
    if attempt < 1 or attempt > len(RETRY_SCHEDULE):
        return None
    return RETRY_SCHEDULE[attempt - 1]


def generate_secret() -> str:
    """A new endpoint secret: ``whsec_`` + base64 of 24 random bytes (what Svix and friends issue)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _secret_bytes(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
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
    return "msg_" + idempotency_key


class InvalidWebhookUrl(ValueError):
    """A webhook URL refused at registration or before sending."""


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def _resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global is False for private, loopback, link-local, CGNAT (100.64/10), documentation, reserved
    # and unspecified ranges; multicast is refused separately because some multicast ranges are global.
    return not ip.is_global or ip.is_multicast


async def validate_webhook_url(
    url: str, *, allow_private: bool = False, resolver: Resolver | None = None
) -> list[str]:
    """Vet a webhook URL; returns the addresses it resolves to, or raises :class:`InvalidWebhookUrl`.

    https only, no credentials in the URL, and every resolved address must be public unless
    ``allow_private`` (tests, intranets), in which case plain http is accepted too. All addresses are
    checked, not just the first, since the HTTP client may pick any of them.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrl(f"malformed URL: {exc}") from exc
    allowed_schemes = {"https", "http"} if allow_private else {"https"}
    if parts.scheme not in allowed_schemes:
        raise InvalidWebhookUrl(f"scheme must be {' or '.join(sorted(allowed_schemes))}")
    if not parts.hostname:
        raise InvalidWebhookUrl("URL has no host")
    if parts.username or parts.password:
        raise InvalidWebhookUrl("credentials in the URL are not accepted; use the signing secret")
    host = parts.hostname
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = await (resolver or _resolve)(host, port)
        except OSError as exc:
            raise InvalidWebhookUrl(f"host {host!r} does not resolve: {exc}") from exc
    if not addresses:
        raise InvalidWebhookUrl(f"host {host!r} does not resolve")
    if not allow_private:
        bad = [a for a in addresses if _refused(ipaddress.ip_address(a))]
        if bad:
            raise InvalidWebhookUrl(f"host {host!r} resolves to a non-public address ({', '.join(bad)})")
    return addresses


@dataclass(frozen=True)
class WebhookConfig:
    """Webhook delivery settings."""

    allow_private: bool = False
    timeout_s: float = 15.0
    user_agent: str = "Pulse-Webhooks/1"
    #: vet the URL (DNS) before every attempt too, not only at registration: DNS may have changed.
    validate_on_send: bool = True


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
    """Signed webhook POSTs with httpx; redirects are not followed (they could lead inward)."""

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
        if self.config.validate_on_send:
            try:
                await validate_webhook_url(message.to, allow_private=self.config.allow_private)
            except InvalidWebhookUrl as exc:
                raise PermanentDeliveryError(self.name, str(exc), code="invalid_url") from exc
        body = webhook_body(message)
        msg_id = message_id(message.idempotency_key)
        try:
            headers = signed_headers(message.webhook_secret, msg_id, body)
        except ValueError as exc:
            raise PermanentDeliveryError(self.name, str(exc), code="bad_secret") from exc
        try:
            response = await self._client.post(message.to, content=body, headers=headers)
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
