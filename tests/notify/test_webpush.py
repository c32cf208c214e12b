"""Web push through pywebpush to a local receiver that decrypts (http_ece) and verifies VAPID (py_vapid)."""

from __future__ import annotations

import base64
import json
import os

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid, Vapid02

from nftpulse.channels.base import (
    OutboundMessage,
    PermanentDeliveryError,
    PushSubscription,
    TransientDeliveryError,
)
from nftpulse.channels.push import WebPushChannel, WebPushConfig, topic_for, vapid_public_key
from tests.notify.conftest import Receiver, Recorded


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Browser:
    """The user agent's side of a push subscription: its ECDH key and auth secret."""

    def __init__(self, endpoint: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        public = self.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.subscription = PushSubscription(
            endpoint=endpoint, p256dh=_b64url(public), auth=_b64url(self.auth)
        )

    def decrypt(self, req: Recorded) -> dict[str, object]:
        assert req.headers["content-encoding"] == "aes128gcm"
        plain = http_ece.decrypt(req.body, private_key=self.key, auth_secret=self.auth, version="aes128gcm")
        return json.loads(plain)


def _vapid_key() -> str:
    v = Vapid()
    v.generate_keys()
    return v.private_pem().decode()


def _message(sub: PushSubscription, severity: str = "critical") -> OutboundMessage:
    return OutboundMessage(
        idempotency_key="ntf_push1",
        user_id="u1",
        kind="risk_change",
        severity=severity,
        subject="Risk level of Apes is now critical",
        text="High -> critical.",
        push_subscription=sub,
        payload={"url": "https://pulse.example/c/1"},
        collapse_key="collection:ethereum:0xabc:r1",
    )


async def test_push_is_encrypted_and_vapid_signed(receiver: Receiver) -> None:
    browser = Browser(receiver.url + "/push/sub-1")
    receiver.respond = lambda _r: (201, {"Location": receiver.url + "/m/1"}, b"")
    key = _vapid_key()
    channel = WebPushChannel(
        WebPushConfig(vapid_private_key=key, vapid_subject="mailto:ops@pulse.example", allow_private=True)
    )
    try:
        receipt = await channel.send(_message(browser.subscription))
    finally:
        channel.close()
    assert receipt.status == "sent"
    assert receipt.provider_message_id == receiver.url + "/m/1"
    [req] = receiver.requests
    assert req.path == "/push/sub-1"
    data = browser.decrypt(req)
    assert data["title"] == "Risk level of Apes is now critical"
    assert data["url"] == "https://pulse.example/c/1"
    assert data["idempotency_key"] == "ntf_push1"
    auth = req.headers["authorization"]
    assert auth.startswith("vapid ")
    assert Vapid02.verify(auth) is True
    parts = dict(p.split("=", 1) for p in auth.split(" ", 1)[1].split(","))
    assert parts["k"] == vapid_public_key(key)
    claims = json.loads(_unb64url(parts["t"].split(".")[1]))
    assert claims["aud"] == receiver.url
    assert claims["sub"] == "mailto:ops@pulse.example"
    assert req.headers["urgency"] == "high"
    assert req.headers["topic"] == topic_for("collection:ethereum:0xabc:r1")
    assert len(req.headers["topic"]) <= 32
    assert int(req.headers["ttl"]) > 0


def test_tampered_vapid_token_fails() -> None:
    key = Vapid()
    key.generate_keys()
    header = key.sign({"aud": "http://127.0.0.1", "sub": "mailto:a@b.c", "exp": 9999999999})["Authorization"]
    token = header.split("t=", 1)[1].split(",", 1)[0]
    head, body, _sig = token.split(".")
    forged_body = _b64url(
        json.dumps({"aud": "http://evil", "sub": "mailto:a@b.c", "exp": 9999999999}).encode()
    )
    assert Vapid02.verify(header) is True
    assert Vapid02.verify(header.replace(f"{head}.{body}.", f"{head}.{forged_body}.")) is False


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_subscription_is_permanent(receiver: Receiver, status: int) -> None:
    receiver.respond = lambda _r: (status, {}, b"")
    channel = WebPushChannel(
        WebPushConfig(
            vapid_private_key=_vapid_key(), vapid_subject="mailto:ops@pulse.example", allow_private=True
        )
    )
    try:
        with pytest.raises(PermanentDeliveryError) as info:
            await channel.send(_message(Browser(receiver.url + "/push/x").subscription))
    finally:
        channel.close()
    assert info.value.disable_endpoint is True


async def test_rate_limit_is_transient(receiver: Receiver) -> None:
    receiver.respond = lambda _r: (429, {"Retry-After": "12"}, b"slow down")
    channel = WebPushChannel(
        WebPushConfig(
            vapid_private_key=_vapid_key(), vapid_subject="mailto:ops@pulse.example", allow_private=True
        )
    )
    try:
        with pytest.raises(TransientDeliveryError) as info:
            await channel.send(_message(Browser(receiver.url + "/push/x").subscription, severity="info"))
    finally:
        channel.close()
    assert info.value.retry_after == 12.0
    assert receiver.requests[0].headers["urgency"] == "normal"
