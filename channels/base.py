"""The one interface every delivery provider implements, and the errors it may raise.

A channel either returns a :class:`DeliveryReceipt` or raises:

- :class:`TransientDeliveryError` — try again later (timeouts, 429, 5xx); ``retry_after`` carries the
  provider's Retry-After in seconds when it sent one. Activities let Temporal retry these.
- :class:`PermanentDeliveryError` — retrying cannot help (invalid number, gone subscription, 410). The
  activity turns it into ``ApplicationError(non_retryable=True)``; a critical alert falls back to the next
  channel. ``disable_endpoint`` says the destination itself should be switched off (web push 404/410,
  webhook 410).

Messages and receipts are frozen dataclasses so that they pass through Temporal's data converter as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, runtime_checkable

from nftpulse.core.delivery import DeliveryStatus


@dataclass(frozen=True)
class PushSubscription:
    """A browser's PushSubscription (``subscription.toJSON()``): endpoint and the two client keys."""

    endpoint: str
    p256dh: str
    auth: str

    def as_info(self) -> dict[str, Any]:
        """The ``subscription_info`` shape pywebpush expects."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


@dataclass(frozen=True)
class OutboundMessage:
    """One rendered notification for one destination.

    ``to`` is the channel's address: an e-mail address, an E.164 number, a webhook URL, the user id for
    in-app; web push uses ``push_subscription`` instead. ``payload`` is the structured body (webhook JSON,
    push data, in-app row), ``text``/``html``/``subject`` the human-readable forms.
    """

    idempotency_key: str
    user_id: str
    kind: str
    severity: str
    to: str = ""
    subject: str = ""
    text: str = ""
    html: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    locale: str = "en"
    notification_id: str | None = None
    push_subscription: PushSubscription | None = None
    webhook_secret: str | None = None
    #: e.g. ``notification.price_movement``; the Standard Webhooks ``type`` field.
    event_type: str | None = None
    #: groups messages that replace each other (web push ``Topic``, in-app collapse key).
    collapse_key: str | None = None


@dataclass(frozen=True)
class DeliveryReceipt:
    """A provider accepted the message."""

    channel: str
    status: DeliveryStatus
    provider_message_id: str | None = None
    accepted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: SMS: segments billed (from the provider when it says so).
    segments: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class DeliveryError(Exception):
    """Base class of delivery failures; ``code`` is the provider's error code or HTTP status, if any."""

    def __init__(self, channel: str, message: str, *, code: str | int | None = None) -> None:
        super().__init__(f"{channel}: {message}")
        self.channel = channel
        self.message = message
        self.code = code


class TransientDeliveryError(DeliveryError):
    """Worth retrying; ``retry_after`` (seconds) when the provider said how long to wait.

    ``outcome_unknown``: the request may have reached the provider and been accepted before the answer
    was lost (a read timeout, a connection reset after sending). A blind retry could then deliver twice;
    channels that can look their messages up (:class:`Reconciling`) are asked first.
    """

    def __init__(
        self,
        channel: str,
        message: str,
        *,
        retry_after: float | None = None,
        code: str | int | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(channel, message, code=code)
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown


class PermanentDeliveryError(DeliveryError):
    """Not worth retrying; ``disable_endpoint`` when the destination is gone for good."""

    def __init__(
        self, channel: str, message: str, *, disable_endpoint: bool = False, code: str | int | None = None
    ) -> None:
        super().__init__(channel, message, code=code)
        self.disable_endpoint = disable_endpoint


@runtime_checkable
class Channel(Protocol):
    """A delivery provider."""

    name: str

    async def send(self, message: OutboundMessage) -> DeliveryReceipt:
        """Deliver ``message`` or raise a :class:`DeliveryError` subclass."""
        ...


@runtime_checkable
class Reconciling(Protocol):
    """A channel that can find a message an earlier attempt may have created (Twilio's message list)."""

    name: str

    async def find_sent(self, message: OutboundMessage, since: datetime) -> DeliveryReceipt | None:
        """The provider's record of ``message`` created at or after ``since``, or None if there is none.
        Raises :class:`TransientDeliveryError` when the provider cannot be asked right now."""
        ...


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def classify_http_status(
    channel: str, status: int, body: str = "", retry_after: str | None = None
) -> DeliveryError | None:
    """The error for a provider's HTTP status, or ``None`` for success (2xx).

    408, 425, 429 and 5xx are transient; other statuses permanent. Channels with their own rules (web
    push, webhooks) adjust before calling this.
    """
    if 200 <= status < 300:
        return None
    snippet = body[:300]
    if status in (408, 425, 429) or status >= 500:
        return TransientDeliveryError(
            channel, f"HTTP {status}: {snippet}", retry_after=parse_retry_after(retry_after), code=status
        )
    return PermanentDeliveryError(channel, f"HTTP {status}: {snippet}", code=status)
