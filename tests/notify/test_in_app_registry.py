"""In-app channel with an injected writer, the explicit registry, and render-to-channel wiring."""

from __future__ import annotations

import pytest
from py_vapid import Vapid

from nftpulse.channels.base import Channel, OutboundMessage, PermanentDeliveryError, parse_retry_after
from nftpulse.channels.email import SendGridConfig, SmtpConfig
from nftpulse.channels.in_app import InAppChannel
from nftpulse.channels.push import WebPushConfig
from nftpulse.channels.registry import ChannelRegistry, ChannelsConfig, UnknownChannelError, build_registry
from nftpulse.channels.sms import TwilioConfig


class Inbox:
    """Stands in for the store's inbox writer: idempotent on the key, as the protocol requires."""

    def __init__(self) -> None:
        self.rows: dict[str, OutboundMessage] = {}

    async def __call__(self, message: OutboundMessage) -> str:
        self.rows.setdefault(message.idempotency_key, message)
        return f"row-{list(self.rows).index(message.idempotency_key)}"


def _msg(key: str = "ntf_1", user: str = "u1") -> OutboundMessage:
    return OutboundMessage(
        idempotency_key=key,
        user_id=user,
        kind="trust_change",
        severity="info",
        subject="s",
        text="t",
        payload={"title": "s"},
    )


async def test_in_app_writes_once_per_key() -> None:
    inbox = Inbox()
    channel = InAppChannel(inbox)
    first = await channel.send(_msg())
    again = await channel.send(_msg())
    other = await channel.send(_msg("ntf_2"))
    assert first.status == "delivered" and first.provider_message_id == again.provider_message_id == "row-0"
    assert other.provider_message_id == "row-1" and len(inbox.rows) == 2
    with pytest.raises(PermanentDeliveryError):
        await channel.send(_msg(user=""))


async def test_registry_from_config() -> None:
    key = Vapid()
    key.generate_keys()
    config = ChannelsConfig(
        sendgrid=SendGridConfig(api_key="SG.x", from_email="a@pulse.example"),
        smtp=SmtpConfig(host="127.0.0.1"),
        twilio=TwilioConfig(account_sid="AC" + "0" * 32, auth_token="t", from_number="+15005550006"),
        webpush=WebPushConfig(vapid_private_key=key.private_pem().decode(), vapid_subject="mailto:a@b.c"),
    )
    registry = build_registry(config, inbox_writer=Inbox())
    try:
        assert sorted(registry.names()) == ["email", "in_app", "push", "sms", "webhook"]
        assert type(registry.get("email")).__name__ == "SendGridEmailChannel"  # SendGrid preferred over SMTP
        assert all(isinstance(registry.get(n), Channel) for n in registry)
        with pytest.raises(UnknownChannelError):
            registry.get("fax")
        with pytest.raises(ValueError):
            registry.register(InAppChannel(Inbox()))
    finally:
        await registry.aclose()
    smtp_only = build_registry(ChannelsConfig(smtp=SmtpConfig(host="127.0.0.1"), webhook=None))
    assert smtp_only.names() == ["email"] and type(smtp_only.get("email")).__name__ == "SmtpEmailChannel"
    assert ChannelRegistry().names() == []


def test_retry_after_forms() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
