"""Twilio SMS through the official SDK against a local HTTP receiver, including a retry whose first
attempt lost Twilio's answer."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from temporalio.exceptions import ApplicationError

from nftpulse.activities.contracts.notify import DeliverInput, DetectInput
from nftpulse.activities.contracts.pipeline import ChangeSet
from nftpulse.activities.notify.delivery import DeliveryActivities
from nftpulse.activities.notify.detection import DetectionActivities
from nftpulse.api.callbacks import twilio_callback_signature, validate_status_callback
from nftpulse.channels.base import OutboundMessage, PermanentDeliveryError, TransientDeliveryError
from nftpulse.channels.registry import ChannelRegistry
from nftpulse.channels.sms import TwilioConfig, TwilioSmsChannel
from nftpulse.core.delivery import is_e164, map_twilio_status
from nftpulse.domain.changes import MetricChange
from nftpulse.store import notifications, watching
from nftpulse.store import notify as notify_store
from nftpulse.store.db import Database
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


# -- a retry after a lost answer must not send the SMS twice ----------------------------------------------


class _FakeTwilio:
    """The Messages resource as a local receiver: creates (and keeps) messages, lists them newest first.
    ``slow_creates`` answers that many creates only after the client gave up (its timeout)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []
        self.slow_creates = 0
        self.lock = threading.Lock()

    def __call__(self, req: Recorded) -> tuple[int, dict[str, str], bytes]:
        headers = {"content-type": "application/json"}
        if req.method == "GET":
            query = parse_qs(urlsplit(req.path).query)
            with self.lock:
                found = [m for m in reversed(self.messages) if m["to"] == query.get("To", [""])[0]]
            page = {
                "messages": found,
                "next_page_uri": None,
                "previous_page_uri": None,
                "first_page_uri": urlsplit(req.path).path,
                "uri": req.path,
                "page": 0,
                "page_size": 50,
                "start": 0,
                "end": max(len(found) - 1, 0),
            }
            return 200, headers, json.dumps(page).encode()
        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        with self.lock:
            message = {
                "sid": f"SM{len(self.messages) + 1:032d}",
                "account_sid": SID,
                "to": form["To"],
                "from": form.get("From"),
                "body": form["Body"],
                "status": "queued",
                "direction": "outbound-api",
                "num_segments": "1",
                "date_created": format_datetime(datetime.now(UTC), usegmt=True),
                "error_code": None,
            }
            self.messages.append(message)
            slow = self.slow_creates > 0
            self.slow_creates -= 1
        if slow:
            time.sleep(0.8)  # accepted, but the answer arrives after the client's timeout
        return 201, headers, json.dumps(message).encode()


def _notified(db: Database, phone: str) -> int:
    """A stored notification for a user with ``phone`` (through detection, so its context is real)."""
    now = datetime.now(UTC)
    entity = "collection:ethereum:0x" + "cd" * 20
    with db.write() as s:
        s.add(notify_store.NotifyUser(id="ada", phone=phone, updated_at=now))
        s.flush()
        s.add(
            notify_store.Subscription(
                id="sub_ada",
                user_id="ada",
                target="collection",
                entity_key=entity,
                rules=[{"id": "floor-20", "kind": "relative_change", "metric": "floor", "pct": 0.2}],
                created_at=now,
                updated_at=now,
            )
        )
        s.flush()
        watching.replace_subscription_keys(s, "sub_ada", [entity])
    acts = DetectionActivities(db, ChannelRegistry())
    changes = ChangeSet.of([MetricChange(entity, "floor", "10", "7")])
    (req,) = acts.detect(DetectInput(changes, now.isoformat(), cause="sms-dup")).notifications
    return req.notification_id


async def test_retry_after_lost_answer_does_not_send_twice(db: Database, receiver: Receiver) -> None:
    twilio = _FakeTwilio()
    twilio.slow_creates = 1
    receiver.respond = twilio
    channel = _channel(receiver, timeout_s=0.3)
    acts = DeliveryActivities(db, ChannelRegistry([channel]))
    nid = _notified(db, "+4915112345678")

    # Attempt 1: Twilio creates the message, the answer is lost to the client's timeout.
    with pytest.raises(ApplicationError) as info:
        await acts.deliver(DeliverInput(nid, "sms"))
    assert not info.value.non_retryable
    assert len(twilio.messages) == 1
    # Attempt 2 (Temporal's retry): finds the message in Twilio's list and records it, no second create.
    result = await acts.deliver(DeliverInput(nid, "sms"))
    assert result.already and result.provider_message_id == twilio.messages[0]["sid"]
    assert len(twilio.messages) == 1
    assert [r.method for r in receiver.requests] == ["POST", "GET"]
    # Attempt 3 (say the activity's completion was lost too): the record answers, Twilio is not asked.
    again = await acts.deliver(DeliverInput(nid, "sms"))
    assert again.already and again.provider_message_id == twilio.messages[0]["sid"]
    assert len(receiver.requests) == 2
    with db.read() as s:
        # Detection here has no SMS channel, so it also stored the notification as delivered in-app.
        by_channel = {d.channel: d for d in notifications.deliveries_for(s, [nid])[nid]}
    assert sorted(by_channel) == ["in_app", "sms"]
    delivery = by_channel["sms"]
    assert delivery.provider_message_id == twilio.messages[0]["sid"] and delivery.status == "queued"


async def test_retry_after_refused_connection_sends(db: Database, receiver: Receiver) -> None:
    """A connection that was never made cannot have created a message: the retry sends without a lookup."""
    twilio = _FakeTwilio()
    receiver.respond = twilio
    nid = _notified(db, "+4915112345678")
    dead = DeliveryActivities(db, ChannelRegistry([_channel(receiver, base_url="http://127.0.0.1:9")]))
    with pytest.raises(ApplicationError):
        await dead.deliver(DeliverInput(nid, "sms"))
    acts = DeliveryActivities(db, ChannelRegistry([_channel(receiver)]))
    result = await acts.deliver(DeliverInput(nid, "sms"))
    assert not result.already and result.provider_message_id == twilio.messages[0]["sid"]
    assert [r.method for r in receiver.requests] == ["POST"]


async def test_lookup_ignores_other_bodies_and_older_messages(receiver: Receiver) -> None:
    twilio = _FakeTwilio()
    receiver.respond = twilio
    channel = _channel(receiver)
    await channel.send(_message(text="another alert"))
    since = datetime.now(UTC) + timedelta(seconds=5)  # the earlier message predates the attempt
    assert await channel.find_sent(_message(text="another alert"), since) is None
    assert await channel.find_sent(_message(), datetime.now(UTC) - timedelta(minutes=1)) is None
    found = await channel.find_sent(_message(text="another alert"), datetime.now(UTC) - timedelta(minutes=1))
    assert found is not None and found.provider_message_id == twilio.messages[0]["sid"]
