"""Standard Webhooks signing verified by the ``standardwebhooks`` package, retries and URL vetting."""

from __future__ import annotations

import base64

import pytest
from standardwebhooks.webhooks import Webhook

from nftpulse.channels.base import OutboundMessage, PermanentDeliveryError, TransientDeliveryError
from nftpulse.channels.webhook import RETRY_SCHEDULE, WebhookChannel, WebhookConfig, next_retry_delay, sign
from nftpulse.core.delivery import InvalidWebhookUrl, validate_webhook_url
from nftpulse.core.delivery import generate_webhook_secret as generate_secret
from tests.notify.conftest import Receiver


def _message(url: str, secret: str, key: str = "ntf_wh1") -> OutboundMessage:
    return OutboundMessage(
        idempotency_key=key,
        user_id="u1",
        kind="trust_change",
        severity="warning",
        to=url + "/hooks/pulse",
        webhook_secret=secret,
        payload={"id": key, "title": "Trust score fell", "detected_at": "2025-01-01T00:00:00Z"},
    )


async def test_signed_delivery_verifies_with_standardwebhooks(receiver: Receiver) -> None:
    secret = generate_secret()
    channel = WebhookChannel(WebhookConfig(allow_private=True))
    try:
        receipt = await channel.send(_message(receiver.url, secret))
        # A retry of the same notification carries the same webhook-id, so receivers can deduplicate.
        await channel.send(_message(receiver.url, secret))
    finally:
        await channel.aclose()
    assert receipt.status == "delivered"
    first, second = receiver.requests
    payload = Webhook(secret).verify(first.body, first.headers)
    assert payload["type"] == "notification.trust_change"
    assert payload["data"]["title"] == "Trust score fell"
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "msg_ntf_wh1"
    assert first.headers["webhook-signature"].startswith("v1,")
    with pytest.raises(Exception):  # noqa: B017 - the library raises its own verification error type
        Webhook(generate_secret()).verify(first.body, first.headers)


def test_signature_matches_specification_vector() -> None:
    # The example from the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


async def test_410_disables_endpoint(receiver: Receiver) -> None:
    receiver.respond = lambda _r: (410, {}, b"gone")
    channel = WebhookChannel(WebhookConfig(allow_private=True))
    try:
        with pytest.raises(PermanentDeliveryError) as info:
            await channel.send(_message(receiver.url, generate_secret()))
    finally:
        await channel.aclose()
    assert info.value.disable_endpoint is True


@pytest.mark.parametrize("status", [400, 404, 500, 503])
async def test_other_failures_are_retried(receiver: Receiver, status: int) -> None:
    receiver.respond = lambda _r: (status, {"Retry-After": "30"}, b"no")
    channel = WebhookChannel(WebhookConfig(allow_private=True))
    try:
        with pytest.raises(TransientDeliveryError) as info:
            await channel.send(_message(receiver.url, generate_secret()))
    finally:
        await channel.aclose()
    assert info.value.code == status
    assert info.value.retry_after == 30.0


async def test_loopback_refused_without_allow_private(receiver: Receiver) -> None:
    channel = WebhookChannel(WebhookConfig(allow_private=False))
    try:
        with pytest.raises(PermanentDeliveryError) as info:
            await channel.send(_message(receiver.url, generate_secret()))
    finally:
        await channel.aclose()
    assert info.value.code == "invalid_url"
    assert receiver.requests == []


def test_retry_schedule() -> None:
    assert RETRY_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert [next_retry_delay(n) for n in range(1, 9)] == [*RETRY_SCHEDULE, None]


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://192.168.0.10/x",
        "https://172.16.5.4/x",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/x",
        "https://[::1]/x",
        "https://[fe80::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://0.0.0.0/x",
        "https://localhost/x",
        "http://93.184.215.14/x",
        "https://user:pw@93.184.215.14/x",
        "ftp://93.184.215.14/x",
    ],
)
async def test_url_validator_refuses(url: str) -> None:
    with pytest.raises(InvalidWebhookUrl):
        await validate_webhook_url(url)


async def test_url_validator_checks_every_resolved_address() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]  # one public, one private: refused

    with pytest.raises(InvalidWebhookUrl):
        await validate_webhook_url("https://hooks.example.com/x", resolver=resolver)

    async def public(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    assert await validate_webhook_url("https://hooks.example.com/x", resolver=public) == ["93.184.215.14"]


async def test_url_validator_allow_private() -> None:
    assert await validate_webhook_url("http://127.0.0.1:9/x", allow_private=True) == ["127.0.0.1"]


def test_generated_secret_shape() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) == 24
