"""What the delivery channels and the API must agree on: delivery statuses, contact validation (e-mail,
E.164 phone numbers, the webhook URL policy and secrets) and the providers' status vocabularies.

Why here, in core: the channels (``channels/``) check a destination again before each send and map a
provider's answer to a status; the API checks the same destinations when a user registers them and maps
the same provider statuses when a callback arrives. Channels may import only core, and the API may not
import channels, so core is the one layer both reach. Nothing here knows Pulse's domain or storage:
these are the providers' and the standards' rules (E.164, Standard Webhooks secrets, Twilio's and
SendGrid's status names), and this module imports nothing of Pulse.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Literal
from urllib.parse import urlsplit

#: Where a notification's delivery on one channel stands; statuses only move forward (``store.notify``).
DeliveryStatus = Literal["queued", "sent", "delivered", "failed", "read"]

# -- contacts ---------------------------------------------------------------------------------------------

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
#: Deliberately loose (local part, ``@``, a dotted domain): the provider is the final judge, and a strict
#: pattern refuses real addresses.
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def is_e164(number: str) -> bool:
    """Whether ``number`` is in E.164 form: ``+``, country code, at most 15 digits in all."""
    return bool(E164.match(number))


def is_email(address: str) -> bool:
    """Whether ``address`` looks like an e-mail address (see :data:`EMAIL`)."""
    return bool(EMAIL.match(address))


#: Standard Webhooks' secret format: this prefix, then base64.
WEBHOOK_SECRET_PREFIX = "whsec_"


def generate_webhook_secret() -> str:
    """A new endpoint secret: ``whsec_`` + base64 of 24 random bytes (what Svix and friends issue)."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


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


# -- providers' status vocabularies -----------------------------------------------------------------------

_TWILIO_STATUS: dict[str, DeliveryStatus] = {
    "accepted": "queued",
    "scheduled": "queued",
    "queued": "queued",
    "sending": "queued",
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}


def map_twilio_status(status: str) -> DeliveryStatus:
    """Pulse's delivery status for a Twilio MessageStatus (the send's answer or a status callback)."""
    return _TWILIO_STATUS.get(status.lower(), "queued")


#: SendGrid ``custom_args`` the e-mail channel sets on every message: they come back in SendGrid's event
#: webhook (and bounce messages), which is how a status finds its notification.
SENDGRID_IDEMPOTENCY_ARG = "pulse_idempotency_key"
SENDGRID_NOTIFICATION_ARG = "pulse_notification_id"

#: SendGrid event → Pulse delivery status. ``deferred`` is SendGrid retrying a temporary refusal: the mail
#: is still on its way, so it says no more than ``processed``. Events that say nothing about delivery
#: (unsubscribe, spam report, group changes) are left out: they arrive after delivery and must not fail it.
SENDGRID_EVENTS: dict[str, DeliveryStatus] = {
    "processed": "sent",
    "deferred": "sent",
    "delivered": "delivered",
    "open": "read",
    "click": "read",
    "bounce": "failed",
    "dropped": "failed",
}
