"""Web push with VAPID (RFC 8292) and aes128gcm payload encryption (RFC 8291) through ``pywebpush``.

The push service's answer decides: 201/202 accepted; 404/410 the subscription is gone (permanent, and
the subscription should be deleted); 413 payload too large (permanent); 429/5xx transient.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import httpx
import requests
from py_vapid import Vapid, Vapid01
from pywebpush import WebPushException, webpush
from requests.structures import CaseInsensitiveDict

from nftpulse.channels.base import (
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
    classify_http_status,
)
from nftpulse.core.delivery import InvalidWebhookUrl, vet_destination_blocking

#: Push services cap the encrypted record at 4 KiB; leave room for the aes128gcm header and padding.
MAX_PAYLOAD_BYTES = 3800


@dataclass(frozen=True)
class WebPushConfig:
    """VAPID identity: the private key (PEM, or base64url raw/DER as ``vapid --gen`` prints) and the
    ``sub`` claim (``mailto:`` or ``https:`` contact)."""

    vapid_private_key: str
    vapid_subject: str
    ttl_s: int = 24 * 3600
    timeout_s: float = 10.0
    #: Accept endpoints on private or loopback addresses and plain http (tests, intranets): the webhook
    #: policy (``PULSE_ALLOW_PRIVATE_WEBHOOKS``), since a push endpoint is a URL a user hands in too.
    allow_private: bool = False


def load_vapid(private_key: str) -> Vapid01:
    """A py_vapid key from PEM or base64url text."""
    if "BEGIN" in private_key:
        return Vapid.from_pem(private_key.encode())
    return Vapid.from_string(private_key)


def vapid_public_key(private_key: str) -> str:
    """The application server key browsers pass to ``pushManager.subscribe`` (base64url, uncompressed)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = load_vapid(private_key).public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def topic_for(collapse_key: str) -> str:
    """A Web Push ``Topic`` (≤ 32 base64url characters): a newer message with the same topic replaces
    an undelivered older one at the push service, so a phone that was offline sees only the latest."""
    return base64.urlsafe_b64encode(hashlib.sha256(collapse_key.encode()).digest()[:24]).decode()


class VettedPushSession(requests.Session):
    """What pywebpush posts through: each endpoint is vetted as a webhook URL is (``core.delivery``:
    https, public addresses only in every encoding) and the request goes, with httpx and no redirects,
    to the very address that was vetted, with the endpoint's Host and TLS server name."""

    def __init__(self, allow_private: bool, timeout_s: float) -> None:
        super().__init__()
        self._allow_private = allow_private
        self._http = httpx.Client(follow_redirects=False, timeout=timeout_s)

    def post(  # type: ignore[override]
        self, url: str | bytes, data: Any = None, json: Any = None, **kwargs: Any
    ) -> requests.Response:
        endpoint = url.decode() if isinstance(url, bytes) else url
        pinned = vet_destination_blocking(endpoint, allow_private=self._allow_private).pinned()
        headers = {str(k): str(v) for k, v in (kwargs.get("headers") or {}).items()}
        headers["host"] = pinned.host_header
        try:
            answer = self._http.post(
                pinned.url,
                content=data,
                headers=headers,
                timeout=kwargs.get("timeout") or httpx.USE_CLIENT_DEFAULT,
                extensions={"sni_hostname": pinned.sni_hostname} if pinned.sni_hostname else None,
            )
        except httpx.HTTPError as exc:
            raise requests.ConnectionError(f"{exc.__class__.__name__}: {exc}") from exc
        response = requests.Response()
        response.status_code = answer.status_code
        response.reason = answer.reason_phrase
        response.headers = CaseInsensitiveDict(answer.headers)
        response._content = answer.content
        response.encoding = answer.encoding
        response.url = endpoint
        return response

    def close(self) -> None:
        self._http.close()
        super().close()


class WebPushChannel:
    """Web push to one browser subscription."""

    name = "push"

    def __init__(self, config: WebPushConfig) -> None:
        self.config = config
        self._vapid = load_vapid(config.vapid_private_key)
        self._session = VettedPushSession(config.allow_private, config.timeout_s)

    def _payload(self, message: OutboundMessage) -> str:
        data: dict[str, Any] = {
            "title": message.subject,
            "body": message.text,
            "kind": message.kind,
            "severity": message.severity,
            "idempotency_key": message.idempotency_key,
            **message.payload,
        }
        raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        if len(raw.encode()) > MAX_PAYLOAD_BYTES:
            # Keep what a notification needs to show itself; the app fetches the rest from the inbox.
            slim = {k: data[k] for k in ("title", "body", "kind", "severity", "idempotency_key")}
            slim["url"] = data.get("url")
            raw = json.dumps(slim, ensure_ascii=False, separators=(",", ":"))
        return raw

    def _send_blocking(self, message: OutboundMessage, payload: str) -> requests.Response:
        assert message.push_subscription is not None
        headers: dict[str, str | int | float] = {
            "Urgency": "high" if message.severity == "critical" else "normal"
        }
        if message.collapse_key:
            headers["Topic"] = topic_for(message.collapse_key)
        response = webpush(
            subscription_info=message.push_subscription.as_info(),
            data=payload,
            vapid_private_key=self._vapid,
            # A fresh dict each call: pywebpush writes aud and exp into it.
            vapid_claims={"sub": self.config.vapid_subject},
            ttl=self.config.ttl_s,
            timeout=self.config.timeout_s,
            headers=headers,
            requests_session=self._session,
        )
        assert isinstance(response, requests.Response)
        return response

    async def send(self, message: OutboundMessage) -> DeliveryReceipt:
        """Encrypt and post one push message."""
        if message.push_subscription is None:
            raise PermanentDeliveryError(self.name, "no push subscription", code="no_subscription")
        payload = self._payload(message)
        try:
            response = await asyncio.to_thread(self._send_blocking, message, payload)
        except WebPushException as exc:
            resp = exc.response
            if resp is None:
                # Bad subscription keys and the like: pywebpush refuses before any request.
                raise PermanentDeliveryError(self.name, str(exc), code="invalid_subscription") from exc
            status = int(resp.status_code)
            if status in (404, 410):
                raise PermanentDeliveryError(
                    self.name, f"subscription gone (HTTP {status})", disable_endpoint=True, code=status
                ) from exc
            error = classify_http_status(self.name, status, resp.text, resp.headers.get("Retry-After"))
            raise (error or TransientDeliveryError(self.name, str(exc))) from exc
        except InvalidWebhookUrl as exc:
            raise PermanentDeliveryError(
                self.name, f"push endpoint refused: {exc}", disable_endpoint=True, code="invalid_url"
            ) from exc
        except requests.RequestException as exc:
            raise TransientDeliveryError(self.name, f"connection failed: {exc}") from exc
        except ValueError as exc:  # malformed keys surface as ValueError from the crypto layer
            raise PermanentDeliveryError(
                self.name, f"invalid subscription: {exc}", code="invalid_subscription"
            ) from exc
        return DeliveryReceipt(
            channel=self.name,
            status="sent",
            provider_message_id=response.headers.get("Location"),
            detail={"http_status": response.status_code},
        )

    def close(self) -> None:
        """Release pooled connections."""
        self._session.close()
