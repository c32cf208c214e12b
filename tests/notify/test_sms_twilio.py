"""Twilio SMS through the official SDK against a local HTTP receiver."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import parse_qs

import pytest

from channels.base import OutboundMessage, PermanentDeliveryError, TransientDeliveryError
from channels.sms import (
    TwilioConfig,
    TwilioSmsChannel,
    is_e164,
    map_twilio_status,
    twilio_callback_signature,
    validate_status_callback,
)
from tests.notify.conftest import Receiver, Recorded

SID = "AC" + "0" * 32
TOKEN = "test-auth-token"


def _message(to: str = "+4915112345678", text: str = "Pulse URGENT: floor fell 21.6%") -> OutboundMessage:
    return OutboundMessage(
        idempotency_key="ntf_sms1", user_id="u1", kind="price_movement", severity="critical", to=to, text=text
    )


def _channel(receiver: Receiver, **kw: object) -> TwilioSmsChannel:
    cfg = TwilioConfig(
        account_sid=SID,
        auth_token=TOKEN,
        from_number="+15005550006",
        base_url=receiver.url,
        status_callback_url="https://pulse.example/v1/callbacks/twilio",
        timeout_s=2.0,
    )
    return TwilioSmsChannel(cfg if not kw else TwilioConfig(**{**cfg.__dict__, **kw}))  # type: ignore[arg-type]


def _created(_req: Recorded) -> tuple[int, dict[str, str], bytes]:
    body = {
        "sid": "SM" + "1" * 32,
        "status": "queued",
        "num_segments": "1",
        "account_sid": SID,
        "to": "+4915112345678",
        "from": "+15005550006",
        "body": "x",
        "error_code": None,
    }
    return 201, {"content-type": "application/json"}, json.dumps(body).encode()


async def test_send_posts_messages_resource(receiver: Receiver) -> None:
    receiver.respond = _created
    receipt = await _channel(receiver).send(_message())
    assert receipt.status == "queued"
    assert receipt.provider_message_id == "SM" + "1" * 32
    assert receipt.segments == 1
    [req] = receiver.requests
    assert req.method == "POST"
    assert req.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
    assert form["To"] == "+4915112345678"
    assert form["From"] == "+15005550006"
    assert form["Body"].startswith("Pulse URGENT")
    assert form["StatusCallback"] == "https://pulse.example/v1/callbacks/twilio?key=ntf_sms1"
    assert req.headers["authorization"] == "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()


async def test_invalid_number_code_is_permanent(receiver: Receiver) -> None:
    err = {"code": 21211, "message": "Invalid 'To' Phone Number", "more_info": "", "status": 400}
    receiver.respond = lambda _r: (400, {"content-type": "application/json"}, json.dumps(err).encode())
    with pytest.raises(PermanentDeliveryError) as info:
        await _channel(receiver).send(_message())
    assert info.value.code == 21211


async def test_malformed_number_is_refused_before_any_request(receiver: Receiver) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await _channel(receiver).send(_message(to="015112345678"))
    assert info.value.code == "invalid_number"
    assert receiver.requests == []


async def test_429_carries_retry_after(receiver: Receiver) -> None:
    receiver.respond = lambda _r: (
        429,
        {"Retry-After": "7", "content-type": "application/json"},
        b'{"code": 20429, "message": "Too Many Requests", "status": 429}',
    )
    with pytest.raises(TransientDeliveryError) as info:
        await _channel(receiver).send(_message())
    assert info.value.retry_after == 7.0
    assert info.value.code == 429


async def test_5xx_is_transient(receiver: Receiver) -> None:
    receiver.respond = lambda _r: (503, {"content-type": "text/plain"}, b"upstream unavailable")
    with pytest.raises(TransientDeliveryError) as info:
        await _channel(receiver).send(_message())
    assert info.value.retry_after is None


async def test_timeout_is_transient(receiver: Receiver) -> None:
    def slow(_r: Recorded) -> tuple[int, dict[str, str], bytes]:
        time.sleep(0.6)
        return _created(_r)

    receiver.respond = slow
    with pytest.raises(TransientDeliveryError):
        await _channel(receiver, timeout_s=0.2).send(_message())


def test_e164() -> None:
    assert is_e164("+4915112345678")
    assert is_e164("+12025550123")
    for bad in ("4915112345678", "+0151", "+49 151 1234", "+1234567890123456", "+"):
        assert not is_e164(bad)


def test_status_callback_signature_round_trip() -> None:
    url = "https://pulse.example/v1/callbacks/twilio?key=ntf_sms1"
    params = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered", "AccountSid": SID}
    sig = twilio_callback_signature(TOKEN, url, params)
    assert validate_status_callback(TOKEN, url, params, sig)
    assert not validate_status_callback(TOKEN, url, {**params, "MessageStatus": "failed"}, sig)
    assert not validate_status_callback("other-token", url, params, sig)
    assert not validate_status_callback(TOKEN, url, params, None)


def test_status_mapping() -> None:
    assert map_twilio_status("delivered") == "delivered"
    assert map_twilio_status("undelivered") == "failed"
    assert map_twilio_status("sending") == "queued"
    assert map_twilio_status("read") == "read"
