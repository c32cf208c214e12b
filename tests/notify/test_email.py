"""E-mail: SendGrid's SDK against a local receiver (``host=``) and SMTP through aiosmtpd."""

from __future__ import annotations

import email
import email.policy
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from nftpulse.api.callbacks import SendGridStatus, parse_sendgrid_events
from nftpulse.channels.base import OutboundMessage, PermanentDeliveryError, TransientDeliveryError
from nftpulse.channels.email import (
    SendGridConfig,
    SendGridEmailChannel,
    SmtpConfig,
    SmtpEmailChannel,
)
from tests.notify.conftest import Receiver


def _message(to: str = "ada@example.com") -> OutboundMessage:
    return OutboundMessage(
        idempotency_key="ntf_mail1",
        user_id="u1",
        kind="fraud_finding",
        severity="critical",
        to=to,
        subject="Urgent: Fraud finding for Apes",
        text="Plain body",
        html="<p>Html &amp; body</p>",
        notification_id="n-42",
    )


def _sendgrid(receiver: Receiver) -> SendGridEmailChannel:
    return SendGridEmailChannel(
        SendGridConfig(api_key="SG.test", from_email="alerts@pulse.example", host=receiver.url, timeout_s=2)
    )


async def test_sendgrid_mail_send(receiver: Receiver) -> None:
    receiver.respond = lambda _r: (202, {"X-Message-Id": "sg-abc"}, b"")
    receipt = await _sendgrid(receiver).send(_message())
    assert receipt.status == "queued"
    assert receipt.provider_message_id == "sg-abc"
    [req] = receiver.requests
    assert req.path == "/v3/mail/send"
    assert req.headers["authorization"] == "Bearer SG.test"
    body = req.json()
    assert body["personalizations"][0]["to"] == [{"email": "ada@example.com"}]
    assert body["personalizations"][0]["custom_args"] == {
        "pulse_idempotency_key": "ntf_mail1",
        "pulse_notification_id": "n-42",
    }
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["from"]["email"] == "alerts@pulse.example"


@pytest.mark.parametrize(
    ("status", "error", "retry_after"),
    [
        (429, TransientDeliveryError, 3.0),
        (500, TransientDeliveryError, None),
        (400, PermanentDeliveryError, None),
    ],
)
async def test_sendgrid_errors(
    receiver: Receiver, status: int, error: type[Exception], retry_after: Any
) -> None:
    errors = {"errors": [{"message": "nope", "field": None, "help": None}]}
    receiver.respond = lambda _r: (
        status,
        {"Retry-After": "3"} if status == 429 else {},
        json.dumps(errors).encode(),
    )
    with pytest.raises(error) as info:
        await _sendgrid(receiver).send(_message())
    if retry_after is not None:
        assert info.value.retry_after == retry_after  # type: ignore[attr-defined]


async def test_sendgrid_connection_refused_is_transient() -> None:
    channel = SendGridEmailChannel(
        SendGridConfig(
            api_key="SG.test", from_email="a@pulse.example", host="http://127.0.0.1:9", timeout_s=1
        )
    )
    with pytest.raises(TransientDeliveryError):
        await channel.send(_message())


def test_sendgrid_event_mapping() -> None:
    body = json.dumps(
        [
            {"event": "delivered", "pulse_idempotency_key": "k"},
            {"event": "bounce", "pulse_notification_id": "7"},
            {"event": "open", "pulse_idempotency_key": "k", "pulse_notification_id": 8},
            {"event": "group_resubscribe", "pulse_idempotency_key": "k"},  # says nothing about delivery
            {"event": "delivered"},  # no custom args: not mail Pulse sent
        ]
    )
    assert parse_sendgrid_events(body) == [
        SendGridStatus("delivered", None, "k"),
        SendGridStatus("failed", 7, None),
        SendGridStatus("read", 8, "k"),
    ]


class _Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, email.message.EmailMessage]] = []
        self.reject: tuple[int, str] | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.reject:
            return f"{self.reject[0]} {self.reject[1]}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        self.messages.append((envelope, parsed))  # type: ignore[arg-type]
        return "250 Message accepted"


@pytest.fixture
def smtp_sink() -> Iterator[tuple[_Sink, int]]:
    sink = _Sink()
    # aiosmtpd's controller probes its own port on start, so it needs a concrete free one, not 0.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


def _smtp(port: int) -> SmtpEmailChannel:
    return SmtpEmailChannel(
        SmtpConfig(
            host="127.0.0.1", port=port, from_email="alerts@pulse.example", starttls=False, timeout_s=5
        )
    )


async def test_smtp_delivers_multipart(smtp_sink: tuple[_Sink, int]) -> None:
    sink, port = smtp_sink
    receipt = await _smtp(port).send(_message())
    assert receipt.status == "sent"
    [(envelope, mail)] = sink.messages
    assert envelope.rcpt_tos == ["ada@example.com"]
    assert mail["Subject"] == "Urgent: Fraud finding for Apes"
    assert mail["X-Pulse-Idempotency-Key"] == "ntf_mail1"
    assert mail["Message-ID"] == receipt.provider_message_id
    assert mail.get_body(("plain",)).get_content().strip() == "Plain body"  # type: ignore[union-attr]
    assert "Html &amp; body" in mail.get_body(("html",)).get_content()  # type: ignore[union-attr]


@pytest.mark.parametrize(("code", "error"), [(550, PermanentDeliveryError), (451, TransientDeliveryError)])
async def test_smtp_rejections(smtp_sink: tuple[_Sink, int], code: int, error: type[Exception]) -> None:
    sink, port = smtp_sink
    sink.reject = (code, "mailbox unavailable")
    with pytest.raises(error):
        await _smtp(port).send(_message())


async def test_smtp_unreachable_is_transient() -> None:
    with pytest.raises(TransientDeliveryError):
        await _smtp(9).send(_message())
