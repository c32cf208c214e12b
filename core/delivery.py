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
from dataclasses import dataclass
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


def webhook_message_id(idempotency_key: str) -> str:
    """``webhook-id`` of a message: derived from its idempotency key, so stable across retries."""
    return "msg_" + idempotency_key


class InvalidWebhookUrl(ValueError):
    """A webhook URL or web-push endpoint refused at registration or before sending."""


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def _resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _resolve_blocking(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: IPv6 ranges that only tunnel or translate to IPv4 and have no business as a delivery target:
#: IPv4-compatible (``::a.b.c.d``, deprecated), IPv4-translated (``::ffff:0:a.b.c.d``), local-use NAT64,
#: Teredo.
_TUNNELS = tuple(ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "2001::/32"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def refused_address(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public delivery target (None: it is). An IPv6 address that carries an IPv4
    address (mapped, NAT64, 6to4) is judged by the IPv4 address too, since that is where it leads."""
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _TUNNELS):
            return "an IPv4-compatible, translated or tunnelled IPv6 address"
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and refused_address(embedded):
            return f"it leads to {embedded}, not a public address"
    # is_global is False for private, loopback, link-local, CGNAT (100.64/10), documentation, reserved
    # and unspecified ranges; multicast is refused separately because some multicast ranges are global.
    if not ip.is_global or ip.is_multicast:
        return "not a public address"
    return None


def _refused(ip: IPAddress) -> bool:
    return refused_address(ip) is not None


@dataclass(frozen=True)
class Destination:
    """A vetted URL and the addresses it resolved to: the request goes to one of *these* (see
    :meth:`pinned`), so a second DNS answer (rebinding) cannot send it elsewhere."""

    scheme: str
    host: str
    port: int
    target: str
    addresses: tuple[str, ...]

    def pinned(self) -> PinnedRequest:
        """Where to connect (the first checked address), and the Host header and TLS server name that
        keep the request addressed to the URL's host."""
        address = self.addresses[0]
        literal = f"[{address}]" if ":" in address else address
        default = 443 if self.scheme == "https" else 80
        shown = f"[{self.host}]" if ":" in self.host else self.host
        host_header = shown if self.port == default else f"{shown}:{self.port}"
        try:
            ipaddress.ip_address(self.host)
            sni = None  # an address literal has no server name to send
        except ValueError:
            sni = self.host if self.scheme == "https" else None
        return PinnedRequest(f"{self.scheme}://{literal}:{self.port}{self.target}", host_header, sni)


@dataclass(frozen=True)
class PinnedRequest:
    url: str
    host_header: str
    #: TLS server name (SNI) and the name the certificate is checked against; None for plain http.
    sni_hostname: str | None


#: Characters no delivery URL needs and parsers disagree on (``https://a#@b/``, ``https://a\\@b/``).
_AMBIGUOUS = re.compile(r"[\s\\@#\x00-\x1f\x7f]")
#: ``inet_aton`` also reads ``2130706433``, ``0x7f000001``, ``127.1`` and ``0177.0.0.1`` as addresses.
_DOTTED_QUAD = re.compile(r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")


def _reads_as_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _shape(url: str, allow_private: bool) -> tuple[str, str, int, str]:
    """The scheme, host, port and path?query of a delivery URL, or :class:`InvalidWebhookUrl`."""
    if _AMBIGUOUS.search(url):
        raise InvalidWebhookUrl(
            "URL must not contain whitespace, control characters, '\\', '@' or a '#' fragment"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrl(f"malformed URL: {exc}") from exc
    allowed_schemes = {"https", "http"} if allow_private else {"https"}
    if parts.scheme not in allowed_schemes:
        raise InvalidWebhookUrl(f"scheme must be {' or '.join(sorted(allowed_schemes))}")
    host = parts.hostname
    if not host:
        raise InvalidWebhookUrl("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhookUrl("credentials in the URL are not accepted; use the signing secret")
    if ":" not in host and not _DOTTED_QUAD.match(host) and _reads_as_ipv4(host):
        raise InvalidWebhookUrl(f"host {host!r} is an IPv4 address in a non-standard form")
    port = port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port, target


def _checked(
    scheme: str, host: str, port: int, target: str, addresses: list[str], allow_private: bool
) -> Destination:
    if not addresses:
        raise InvalidWebhookUrl(f"host {host!r} does not resolve")
    if not allow_private:
        bad = [a for a in addresses if _refused(ipaddress.ip_address(a.split("%")[0]))]
        if bad:
            raise InvalidWebhookUrl(f"host {host!r} resolves to a non-public address ({', '.join(bad)})")
    return Destination(scheme, host, port, target, tuple(addresses))


def _literal(host: str) -> list[str] | None:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return None


async def vet_destination(
    url: str, *, allow_private: bool = False, resolver: Resolver | None = None
) -> Destination:
    """Vet a webhook URL or push endpoint and resolve it once; raises :class:`InvalidWebhookUrl`.

    https only, no credentials, fragment or ambiguous characters, no IPv4 address in a non-standard
    form, and every resolved address public (in every IPv6 encoding: see :func:`refused_address`)
    unless ``allow_private`` (tests, intranets), which also accepts plain http. All addresses are
    checked, not just the first. Send to :meth:`Destination.pinned`, never to the URL again.
    """
    scheme, host, port, target = _shape(url, allow_private)
    addresses = _literal(host)
    if addresses is None:
        try:
            addresses = await (resolver or _resolve)(host, port)
        except OSError as exc:
            raise InvalidWebhookUrl(f"host {host!r} does not resolve: {exc}") from exc
    return _checked(scheme, host, port, target, addresses, allow_private)


def vet_destination_blocking(url: str, *, allow_private: bool = False) -> Destination:
    """:func:`vet_destination` for code running in a thread (the web-push client is synchronous)."""
    scheme, host, port, target = _shape(url, allow_private)
    addresses = _literal(host)
    if addresses is None:
        try:
            addresses = _resolve_blocking(host, port)
        except OSError as exc:
            raise InvalidWebhookUrl(f"host {host!r} does not resolve: {exc}") from exc
    return _checked(scheme, host, port, target, addresses, allow_private)


async def validate_webhook_url(
    url: str, *, allow_private: bool = False, resolver: Resolver | None = None
) -> list[str]:
    """Vet a webhook URL (see :func:`vet_destination`); returns the addresses it resolves to."""
    destination = await vet_destination(url, allow_private=allow_private, resolver=resolver)
    return list(destination.addresses)


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
