"""core/delivery.py: one definition of a contact's validity, shared by the API (which registers contacts)
and the channels (which check them again before sending): what one refuses, the other refuses too."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nftpulse.api.users import ChannelsIn, WebhookIn
from nftpulse.channels.base import OutboundMessage, PermanentDeliveryError
from nftpulse.channels.email import SmtpConfig, SmtpEmailChannel
from nftpulse.channels.sms import TwilioConfig, TwilioSmsChannel
from nftpulse.channels.webhook import WebhookChannel, WebhookConfig, signed_headers
from nftpulse.core.delivery import generate_webhook_secret, is_e164, is_email

BAD_EMAILS = ["ada", "ada@", "@example.com", "ada@example", "a da@example.com"]
BAD_PHONES = ["015112345678", "+0151123", "+49 151 12345678", "+1234567890123456"]


def _message(to: str, **kw: str) -> OutboundMessage:
    return OutboundMessage(
        idempotency_key="ntf_vocab", user_id="u1", kind="trust_change", severity="info", to=to, text="x", **kw
    )


def test_email_addresses() -> None:
    assert is_email("ada@example.com") and is_email("a.b+c@mail.example.co.uk")
    for bad in BAD_EMAILS:
        assert not is_email(bad), bad


@pytest.mark.parametrize("bad", BAD_EMAILS)
async def test_the_api_and_the_email_channel_refuse_the_same_addresses(bad: str) -> None:
    with pytest.raises(ValidationError, match="not an e-mail address"):
        ChannelsIn(email=bad)
    # Port 9 (discard) is never reached: the address is refused before any connection.
    channel = SmtpEmailChannel(SmtpConfig(host="127.0.0.1", port=9, timeout_s=0.5))
    with pytest.raises(PermanentDeliveryError) as info:
        await channel.send(_message(bad))
    assert info.value.code == "invalid_address"


@pytest.mark.parametrize("bad", BAD_PHONES)
async def test_the_api_and_the_sms_channel_refuse_the_same_numbers(bad: str) -> None:
    assert not is_e164(bad)
    with pytest.raises(ValidationError, match=r"E\.164"):
        ChannelsIn(phone=bad)
    channel = TwilioSmsChannel(
        TwilioConfig(
            account_sid="AC" + "0" * 32,
            auth_token="t",
            from_number="+15005550006",
            base_url="http://127.0.0.1:9",
        )
    )
    with pytest.raises(PermanentDeliveryError) as info:
        await channel.send(_message(bad))
    assert info.value.code == "invalid_number"


async def test_the_webhook_channel_refuses_what_registration_refuses() -> None:
    channel = WebhookChannel(WebhookConfig(allow_private=False))
    try:
        with pytest.raises(PermanentDeliveryError) as info:
            await channel.send(_message("http://127.0.0.1:9/hook", webhook_secret=generate_webhook_secret()))
    finally:
        await channel.aclose()
    assert info.value.code == "invalid_url"


def test_generated_secrets_are_accepted_where_secrets_are_given_and_sign() -> None:
    secret = generate_webhook_secret()
    assert WebhookIn(url="https://hooks.example.com/x", secret=secret).secret == secret
    assert signed_headers(secret, "msg_1", b"{}", timestamp=1)["webhook-signature"].startswith("v1,")
