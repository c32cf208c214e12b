"""SMS through Twilio's official SDK. (Status callbacks arrive at the API: ``api/callbacks.py``.)

The SDK is blocking (requests), so sends run in a worker thread. A small ``TwilioHttpClient`` subclass
turns 429 (with its Retry-After) and 5xx into :class:`TransientDeliveryError` before the SDK flattens
them into a ``TwilioRestException`` without headers; everything else the SDK raises is mapped below.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from nftpulse.channels.base import (
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
    parse_retry_after,
)
from nftpulse.core.delivery import is_e164, map_twilio_status

#: Twilio error codes that no retry can fix: invalid/unreachable number, opted out, not permitted.
PERMANENT_TWILIO_CODES = frozenset(
    {21211, 21214, 21217, 21219, 21408, 21606, 21610, 21612, 21614, 21635, 30003, 30005, 30006, 30007}
)


@dataclass(frozen=True)
class TwilioConfig:
    """Twilio credentials and sender. Either ``from_number`` or ``messaging_service_sid`` is needed."""

    account_sid: str
    auth_token: str
    from_number: str | None = None
    messaging_service_sid: str | None = None
    #: overrides https://api.twilio.com (tests, a validating mock)
    base_url: str | None = None
    #: public URL of Pulse's Twilio status callback endpoint; None: no callbacks
    status_callback_url: str | None = None
    timeout_s: float = 10.0


class _ClassifyingHttpClient(TwilioHttpClient):
    """Raises transient errors with Retry-After before the SDK turns the response into an exception."""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:  # type: ignore[override]
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.RequestException as exc:  # timeouts, refused connections, resets
            raise TransientDeliveryError(
                "sms",
                f"connection failed: {exc.__class__.__name__}: {exc}",
                outcome_unknown=method.upper() == "POST" and not _never_sent(exc),
            ) from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientDeliveryError(
                "sms",
                f"HTTP {response.status_code}: {response.text[:200]}",
                retry_after=parse_retry_after((response.headers or {}).get("Retry-After")),
                code=response.status_code,
            )
        return response


def _never_sent(exc: requests.RequestException) -> bool:
    """Whether the request certainly did not reach Twilio (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


class TwilioSmsChannel:
    """SMS through Twilio's Messages resource."""

    name = "sms"

    def __init__(self, config: TwilioConfig) -> None:
        if not (config.from_number or config.messaging_service_sid):
            raise ValueError("TwilioConfig needs from_number or messaging_service_sid")
        self.config = config
        self._client = Client(
            config.account_sid,
            config.auth_token,
            http_client=_ClassifyingHttpClient(timeout=config.timeout_s),
        )
        if config.base_url:
            # The SDK's documented hook: every product domain has its own base_url.
            self._client.api.base_url = config.base_url.rstrip("/")

    def _callback_url(self, message: OutboundMessage) -> str | None:
        base = self.config.status_callback_url
        if not base:
            return None
        sep = "&" if "?" in base else "?"
        return f"{base}{sep}{urlencode({'key': message.idempotency_key})}"

    def _create(self, message: OutboundMessage) -> Any:
        kwargs: dict[str, Any] = {"to": message.to, "body": message.text}
        if self.config.messaging_service_sid:
            kwargs["messaging_service_sid"] = self.config.messaging_service_sid
        else:
            kwargs["from_"] = self.config.from_number
        callback = self._callback_url(message)
        if callback:
            kwargs["status_callback"] = callback
        return self._client.api.v2010.accounts(self.config.account_sid).messages.create(**kwargs)

    async def send(self, message: OutboundMessage) -> DeliveryReceipt:
        """Send one SMS; Twilio splits long bodies into concatenated segments itself."""
        if not is_e164(message.to):
            raise PermanentDeliveryError(
                self.name, f"not an E.164 number: {message.to!r}", code="invalid_number"
            )
        if not message.text:
            raise PermanentDeliveryError(self.name, "empty SMS body", code="empty_body")
        try:
            created = await asyncio.to_thread(self._create, message)
        except TwilioRestException as exc:
            code = exc.code if exc.code is not None else exc.status
            if exc.status == 429 or exc.status >= 500:  # pragma: no cover - the http client raises first
                raise TransientDeliveryError(self.name, str(exc.msg), code=code) from exc
            raise PermanentDeliveryError(self.name, f"Twilio {code}: {exc.msg}", code=code) from exc
        except TwilioException as exc:  # SDK-side failures such as an unparsable response
            raise TransientDeliveryError(self.name, str(exc)) from exc
        segments = int(created.num_segments) if str(created.num_segments or "").isdigit() else None
        status = map_twilio_status(str(created.status or "queued"))
        if status == "failed":
            raise PermanentDeliveryError(self.name, f"Twilio {created.error_code}: {created.error_message}")
        return DeliveryReceipt(
            channel=self.name,
            status=status,
            provider_message_id=created.sid,
            segments=segments,
            detail={"twilio_status": str(created.status)},
        )

    def _recent(self, to: str) -> list[Any]:
        # Newest first; a retry follows its lost attempt within minutes, so one page reaches back far
        # enough. (Twilio's DateSent filters are by day and skip messages not yet sent.)
        messages = self._client.api.v2010.accounts(self.config.account_sid).messages
        return list(messages.list(to=to, limit=50, page_size=50))

    async def find_sent(self, message: OutboundMessage, since: datetime) -> DeliveryReceipt | None:
        """The message an earlier attempt created for ``message``: same recipient and body, created at or
        after ``since`` (Twilio keeps whole seconds). The message resource does not echo the
        StatusCallback URL, so the body is what identifies it; it is rendered the same on every attempt."""
        try:
            recent = await asyncio.to_thread(self._recent, message.to)
        except TwilioException as exc:
            # Not knowing is not "not sent": retry later rather than risk a second SMS.
            raise TransientDeliveryError(self.name, f"message lookup failed: {exc}") from exc
        floor = since.replace(microsecond=0) - timedelta(seconds=1)
        for found in recent:
            created = found.date_created
            if (
                found.body == message.text
                and found.to == message.to
                and isinstance(created, datetime)
                and created >= floor
                and str(found.direction or "outbound-api").startswith("outbound")
            ):
                segments = str(found.num_segments or "")
                return DeliveryReceipt(
                    channel=self.name,
                    status=map_twilio_status(str(found.status or "queued")),
                    provider_message_id=found.sid,
                    segments=int(segments) if segments.isdigit() else None,
                    detail={"twilio_status": str(found.status), "reconciled": True},
                )
        return None
