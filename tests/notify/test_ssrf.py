"""SSRF: webhook URLs and web-push endpoints reach public addresses only, in whatever form the address is
written, and the request goes to the address that was checked (no second DNS answer, no redirect)."""

from __future__ import annotations

import httpx
import pytest

from nftpulse.api.app import create_app
from nftpulse.channels.base import OutboundMessage, PermanentDeliveryError, TransientDeliveryError
from nftpulse.channels.push import WebPushChannel, WebPushConfig
from nftpulse.channels.webhook import WebhookChannel, WebhookConfig
from nftpulse.core import delivery
from nftpulse.core.delivery import (
    InvalidWebhookUrl,
    generate_webhook_secret,
    vet_destination,
    vet_destination_blocking,
)
from nftpulse.core.settings import Settings
from nftpulse.store import keys
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database
from tests.notify.conftest import Receiver
from tests.notify.test_webpush import Browser, _vapid_key
from tests.notify.test_webpush import _message as push_message

REFUSED = [
    # loopback, private, link-local (the cloud metadata address), CGNAT, unspecified, multicast
    "https://127.0.0.1/hook",
    "https://10.1.2.3/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://100.64.0.1/hook",
    "https://0.0.0.0/hook",
    "https://224.0.0.1/hook",
    "https://[::1]/hook",
    "https://[fe80::1]/hook",
    "https://[fc00::1]/hook",
    # IPv4 inside IPv6: compatible, mapped, translated, NAT64 (well-known and local-use), 6to4, Teredo
    "https://[::7f00:1]/hook",
    "https://[::127.0.0.1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:7f00:1]/hook",
    "https://[::ffff:0:7f00:1]/hook",
    "https://[64:ff9b::7f00:1]/hook",
    "https://[64:ff9b::a9fe:a9fe]/hook",
    "https://[64:ff9b:1::5db8:d822]/hook",
    "https://[2002:7f00:1::]/hook",
    "https://[2002:a9fe:a9fe::1]/hook",
    "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",
    # IPv4 in decimal, hex, octal and short forms
    "https://2130706433/hook",
    "https://0x7f000001/hook",
    "https://0x7f.0.0.1/hook",
    "https://0177.0.0.1/hook",
    "https://127.1/hook",
    "https://017700000001/hook",
    # parser tricks: userinfo, fragments, backslashes, whitespace
    "https://93.184.216.34#@127.0.0.1/",
    "https://93.184.216.34\\@127.0.0.1/",
    "https://user:pw@93.184.216.34/hook",
    "https://93.184.216.34@127.0.0.1/hook",
    "https://93.184.216.34/ho ok",
    # a name that resolves inward
    "https://localhost/hook",
    # plain http, and other schemes
    "http://93.184.216.34/hook",
    "file:///etc/passwd",
    "gopher://93.184.216.34/",
]

ACCEPTED = [
    "https://93.184.216.34/hook",
    "https://93.184.216.34:8443/hook?x=1",
    "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
    # NAT64 of a public address leads to that public address
    "https://[64:ff9b::5db8:d822]/hook",
]


@pytest.mark.parametrize("url", REFUSED)
async def test_refused(url: str) -> None:
    with pytest.raises(InvalidWebhookUrl):
        await vet_destination(url)
    with pytest.raises(InvalidWebhookUrl):
        vet_destination_blocking(url)


@pytest.mark.parametrize("url", ACCEPTED)
async def test_accepted(url: str) -> None:
    destination = await vet_destination(url)
    assert destination.addresses
    assert vet_destination_blocking(url) == destination


def test_pinned_request_keeps_the_host() -> None:
    destination = delivery.Destination("https", "hooks.example.com", 443, "/in?a=1", ("93.184.216.34",))
    pinned = destination.pinned()
    assert pinned.url == "https://93.184.216.34:443/in?a=1"
    assert pinned.host_header == "hooks.example.com"
    assert pinned.sni_hostname == "hooks.example.com"
    v6 = delivery.Destination("https", "2606:2800::1", 8443, "/", ("2606:2800::1",)).pinned()
    assert (v6.url, v6.host_header, v6.sni_hostname) == (
        "https://[2606:2800::1]:8443/",
        "[2606:2800::1]:8443",
        None,
    )


def _hook(url: str) -> OutboundMessage:
    return OutboundMessage(
        idempotency_key="ntf_ssrf",
        user_id="u1",
        kind="trust_change",
        severity="warning",
        to=url,
        webhook_secret=generate_webhook_secret(),
        payload={"id": "ntf_ssrf", "detected_at": "2026-01-01T00:00:00Z"},
    )


async def test_webhook_connects_to_the_checked_address(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name resolves once, in the check: it exists only in that resolver, so a second resolution by
    the HTTP client would fail."""
    port = int(receiver.url.rsplit(":", 1)[1])

    async def once(host: str, _port: int) -> list[str]:
        assert host == "hooks.pulse.test"
        return ["127.0.0.1"]

    monkeypatch.setattr(delivery, "_resolve", once)
    channel = WebhookChannel(WebhookConfig(allow_private=True))
    try:
        receipt = await channel.send(_hook(f"http://hooks.pulse.test:{port}/in"))
    finally:
        await channel.aclose()
    assert receipt.status == "delivered"
    [request] = receiver.requests
    assert request.path == "/in" and request.headers["host"] == f"hooks.pulse.test:{port}"


async def test_webhook_refuses_inward_and_follows_no_redirect(receiver: Receiver) -> None:
    refusing = WebhookChannel(WebhookConfig(allow_private=False))
    try:
        with pytest.raises(PermanentDeliveryError) as refused:
            await refusing.send(_hook(receiver.url + "/in"))
    finally:
        await refusing.aclose()
    assert refused.value.code == "invalid_url" and receiver.requests == []

    receiver.respond = lambda _r: (302, {"Location": "http://169.254.169.254/"}, b"")
    channel = WebhookChannel(WebhookConfig(allow_private=True))
    try:
        with pytest.raises(TransientDeliveryError):
            await channel.send(_hook(receiver.url + "/in"))
    finally:
        await channel.aclose()
    assert len(receiver.requests) == 1


async def test_push_endpoints_follow_the_same_rules(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _vapid_key()
    # A private endpoint is refused before any request, and the subscription is dropped.
    strict = WebPushChannel(WebPushConfig(vapid_private_key=key, vapid_subject="mailto:ops@pulse.example"))
    try:
        with pytest.raises(PermanentDeliveryError) as refused:
            await strict.send(push_message(Browser(receiver.url + "/push/1").subscription))
    finally:
        strict.close()
    assert refused.value.code == "invalid_url" and refused.value.disable_endpoint
    assert receiver.requests == []

    # Allowed (tests, intranets): sent to the checked address, and a redirect is not followed.
    port = int(receiver.url.rsplit(":", 1)[1])
    monkeypatch.setattr(delivery, "_resolve_blocking", lambda host, _port: ["127.0.0.1"])
    receiver.respond = lambda _r: (301, {"Location": "http://169.254.169.254/"}, b"")
    lenient = WebPushChannel(
        WebPushConfig(vapid_private_key=key, vapid_subject="mailto:ops@pulse.example", allow_private=True)
    )
    try:
        with pytest.raises((PermanentDeliveryError, TransientDeliveryError)):
            await lenient.send(push_message(Browser(f"http://push.pulse.test:{port}/push/2").subscription))
    finally:
        lenient.close()
    [request] = receiver.requests
    assert request.path == "/push/2" and request.headers["host"] == f"push.pulse.test:{port}"


async def test_api_refuses_inward_push_endpoints_and_webhooks(db: Database) -> None:
    app = create_app(Settings(allow_private_webhooks=False), db, NoCache(), None)
    admin = {"Authorization": f"Bearer {keys.create(db, 'admin', ['admin'])}"}
    body = {
        "channels": {
            "webhooks": [{"url": "https://[64:ff9b::a9fe:a9fe]/hook"}],
            "push": [{"endpoint": "https://[::ffff:127.0.0.1]/push/1", "p256dh": "x" * 87, "auth": "y" * 22}],
        }
    }
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://pulse.test"
    ) as http:
        resp = await http.put("/v1/users/eve", json=body, headers=admin)
    assert resp.status_code == 422, resp.text
    fields = {e["field"] for e in resp.json()["errors"]}
    assert fields == {"channels.webhooks.0.url", "channels.push.0.endpoint"}
