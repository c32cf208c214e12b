"""Notifications end to end: events through the API → pipeline → detection → delivery (inbox and a signed
webhook to a local receiver) → read stops escalation. Plus the users/subscriptions/inbox API itself.

The pipeline workflows do not call detection yet (the lead adds the hook, see the report); here the
partition workflow is composed with the hook by a subclass registered under the same workflow name, so
this test needs nothing beyond the notification modules.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import event as sa_event
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from nftpulse.activities.contracts.notify import (
    DeliverInput,
    DetectInput,
    DigestGroupOut,
    SendDigestInput,
    notification_workflow_id,
)
from nftpulse.activities.contracts.pipeline import ChangeSet
from nftpulse.activities.notify.common import entity_name
from nftpulse.activities.notify.delivery import DeliveryActivities
from nftpulse.activities.notify.detection import DetectionActivities
from nftpulse.activities.notify.digests import DigestActivities
from nftpulse.api.callbacks import twilio_callback_signature
from nftpulse.channels.base import DeliveryReceipt, OutboundMessage, TransientDeliveryError
from nftpulse.channels.registry import ChannelRegistry
from nftpulse.channels.webhook import WebhookChannel, WebhookConfig
from nftpulse.domain.changes import MetricChange
from nftpulse.store import entities, keys, notifications, watching
from nftpulse.store import notify as notify_store
from nftpulse.store.db import Database
from nftpulse.store.models import EntityView
from nftpulse.templates.renderer import inbox_text, render
from nftpulse.workflows.notify import NotificationOutcome, NotificationWorkflow
from tests.conftest import local_http_server, replay_under_sandbox, run_pulse

CONTRACT = "0x" + "cd" * 20
COLLECTION = f"collection:ethereum:{CONTRACT}"
ALICE_WALLET = "0x" + "a1" * 20

# SendGrid's event webhook key pair: P-256, the public half as the base64 DER SubjectPublicKeyInfo the
# SendGrid console shows (what PULSE_SENDGRID_WEBHOOK_PUBLIC_KEY holds).
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC_KEY = base64.b64encode(
    SENDGRID_KEY.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
).decode()


# -- a local webhook receiver ---------------------------------------------------------------------------


@dataclass
class Hooks:
    """Requests the local webhook receiver got."""

    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    got = Hooks()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            got.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    with local_http_server(Handler) as url:
        got.url = f"{url}/hooks/pulse"
        yield got


# -- a running Pulse with notifications -----------------------------------------------------------------


@dataclass
class NotifyPulse:
    """What the tests drive: the API client, keys by name, the database and the Temporal client."""

    http: httpx.AsyncClient
    db: Database
    client: Client
    prefix: str
    keys: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


@pytest_asyncio.fixture
async def npulse(database_url: str, temporal_client: Client) -> AsyncIterator[NotifyPulse]:
    """The shared running Pulse (``tests.conftest.run_pulse``) with two users' keys, signed Twilio callbacks
    and webhooks to 127.0.0.1 allowed."""
    async with run_pulse(
        database_url,
        temporal_client,
        allow_private_webhooks=True,
        twilio_auth_token="twilio-test-token",
        public_base_url="https://pulse.example",
        sendgrid_webhook_public_key=SENDGRID_PUBLIC_KEY,
    ) as running:
        test_keys = {
            "admin": running.keys.admin,
            "ingest": running.keys.ingest,
            "read": running.keys.read,
            "alice": keys.create(running.db, "alice", ["user:alice"]),
            "bob": keys.create(running.db, "bob", ["user:bob"]),
        }
        yield NotifyPulse(
            running.http, running.db, running.client, running.settings.workflow_id_prefix, test_keys
        )


_CLOCK = itertools.count()


def _ev(eid: str, kind: str, data: dict[str, Any], token: str) -> dict[str, Any]:
    # Each event a minute after the previous: the book orders facts by time (a listing must follow its mint).
    at = datetime(2026, 11, 1, 10, 0, tzinfo=UTC) + timedelta(minutes=next(_CLOCK))
    return {
        "id": eid,
        "source": "ntest",
        "type": kind,
        "occurred_at": at.isoformat(),
        "chain": "ethereum",
        "contract": CONTRACT,
        "token_id": token,
        "data": data,
    }


ZERO = "0x" + "0" * 40


async def _mint(p: NotifyPulse, prefix: str, n: int = 6) -> None:
    """Alice's tokens 1…n: listings need an owner."""
    await _ingest(
        p, [_ev(f"{prefix}m{i}", "mint", {"from": ZERO, "to": ALICE_WALLET}, str(i)) for i in range(1, n + 1)]
    )


def _listing(eid: str, token: str, price: str) -> dict[str, Any]:
    return _ev(eid, "listing", {"seller": ALICE_WALLET, "price": {"amount": price, "currency": "ETH"}}, token)


async def _ingest(p: NotifyPulse, events: list[dict[str, Any]]) -> None:
    resp = await p.http.post("/v1/events", json={"events": events}, headers=p.auth("ingest"))
    assert resp.status_code == 202, resp.text
    for e in events:
        for _ in range(300):
            st = (await p.http.get(f"/v1/events/ntest/{e['id']}", headers=p.auth("read"))).json()["status"]
            if st in ("processed", "failed"):
                assert st == "processed"
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"event {e['id']} not processed")


async def _inbox(p: NotifyPulse, **params: Any) -> dict[str, Any]:
    resp = await p.http.get("/v1/users/alice/notifications", params=params, headers=p.auth("alice"))
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def _eventually(check: Any, limit_s: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def _setup_alice(p: NotifyPulse, hooks: Hooks, critical_pct: float | None) -> str:
    profile = {
        "locale": "en",
        "timezone": "Europe/Berlin",
        "channels": {"webhooks": [{"url": hooks.url}]},
        "preferences": {"default": ["in_app", "webhook"]},
        "escalation": {"chain": ["in_app", "webhook"], "delay_s": 3600, "max_repeats": 2},
    }
    resp = await p.http.put("/v1/users/alice", json=profile, headers=p.auth("alice"))
    assert resp.status_code == 200, resp.text
    secret = resp.json()["channels"]["webhooks"][0]["secret"]
    assert secret.startswith("whsec_")
    rule: dict[str, Any] = {"id": "floor-20", "kind": "relative_change", "metric": "floor", "pct": 0.2}
    if critical_pct is not None:
        rule["critical_pct"] = critical_pct
    resp = await p.http.post(
        "/v1/users/alice/subscriptions",
        json={"target": "collection", "entity_key": COLLECTION, "label": "my apes", "rules": [rule]},
        headers=p.auth("alice"),
    )
    assert resp.status_code == 201, resp.text
    return str(secret)


async def test_floor_move_notifies_once_and_small_moves_do_not(npulse: NotifyPulse, hooks: Hooks) -> None:
    secret = await _setup_alice(npulse, hooks, critical_pct=None)
    await _mint(npulse, "a")
    await _ingest(npulse, [_listing("l1", "1", "10")])  # first floor: nothing to compare with yet
    await _ingest(npulse, [_listing("l2", "2", "7.5")])  # -25 %: past the 20 % rule
    await _eventually(lambda: _inbox_items(npulse, 1))
    await _eventually(lambda: _async(len(hooks.requests) >= 1))
    # Repeated small moves (each under 20 %, and the rule is disarmed until the floor comes back).
    await _ingest(npulse, [_listing("l3", "3", "7.4")])
    await _ingest(npulse, [_listing("l4", "4", "7.3")])
    await _ingest(npulse, [_listing("l5", "5", "7.25")])
    await asyncio.sleep(1.5)
    body = await _inbox(npulse)
    assert len(body["items"]) == 1 and body["unread_count"] == 1
    item = body["items"][0]
    assert item["kind"] == "price_movement" and item["severity"] == "warning"
    assert item["entity_key"] == COLLECTION and item["rule_id"] == "floor-20"
    assert item["evidence"]["before"] == "10" and item["evidence"]["after"] == "7.5"
    assert item["title"].startswith("Floor") and "25" in item["title"]
    assert item["deliveries"] == {"in_app": "delivered", "webhook": "delivered"}
    assert len(hooks.requests) == 1
    headers, raw = hooks.requests[0]
    payload = Webhook(secret).verify(raw, headers)
    assert payload["type"] == "notification.price_movement"
    assert payload["data"]["evidence"]["before"] == "10" and payload["data"]["evidence"]["after"] == "7.5"
    assert payload["data"]["rule"]["id"] == "floor-20"
    assert headers["webhook-id"] == f"msg_{item['idempotency_key']}"

    # Read it: gone from the unread filter; the stream replays it to a client that resumes from 0.
    resp = await npulse.http.post(
        f"/v1/users/alice/notifications/{item['id']}/read", headers=npulse.auth("alice")
    )
    assert resp.status_code == 200 and resp.json()["read_at"] is not None
    assert (await _inbox(npulse, unread="true"))["items"] == []
    resp = await npulse.http.get(
        "/v1/users/alice/notifications/stream",
        params={"after": "0", "max_s": "0.5"},
        headers=npulse.auth("alice"),
    )
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert f"id: {item['id']}\nevent: notification\n" in resp.text


async def test_reading_stops_escalation(npulse: NotifyPulse, hooks: Hooks) -> None:
    await _setup_alice(npulse, hooks, critical_pct=0.25)
    await _mint(npulse, "b")
    await _ingest(npulse, [_listing("c1", "1", "10")])
    await _ingest(npulse, [_listing("c2", "2", "6")])  # -40 %: critical
    items = await _eventually(lambda: _inbox_items(npulse, 1))
    item = items[0]
    assert item["severity"] == "critical"
    handle = npulse.client.get_workflow_handle_for(
        NotificationWorkflow.run, f"{npulse.prefix}notification/{item['id']}"
    )
    await _eventually(lambda: _async(len(hooks.requests) >= 1))
    resp = await npulse.http.post(
        f"/v1/users/alice/notifications/{item['id']}/read", headers=npulse.auth("alice")
    )
    assert resp.status_code == 200
    # The workflow was waiting an hour for the next step; the read signal ends it now.
    outcome: NotificationOutcome = await asyncio.wait_for(handle.result(), timeout=15)
    assert outcome.read and outcome.steps == 0
    assert len(hooks.requests) == 1
    # Its history (a signal, timers, activities) replays deterministically.
    assert handle.id in await replay_under_sandbox(npulse.client, npulse.prefix.rstrip("/"))


async def _inbox_items(p: NotifyPulse, n: int) -> list[dict[str, Any]] | None:
    items = (await _inbox(p))["items"]
    return items if len(items) >= n else None


async def _async(value: bool) -> bool:
    return value


# -- the API on its own ---------------------------------------------------------------------------------


async def test_access_and_validation(npulse: NotifyPulse) -> None:
    p = npulse
    ok = await p.http.put("/v1/users/alice", json={"timezone": "Asia/Tokyo"}, headers=p.auth("alice"))
    assert ok.status_code == 200
    assert (await p.http.get("/v1/users/alice", headers=p.auth("bob"))).status_code == 403
    assert (await p.http.get("/v1/users/alice", headers=p.auth("read"))).status_code == 403
    assert (await p.http.get("/v1/users/alice", headers=p.auth("admin"))).status_code == 200
    assert (await p.http.get("/v1/users/alice/notifications", headers=p.auth("bob"))).status_code == 403

    bad = await p.http.put(
        "/v1/users/alice",
        json={
            "timezone": "Mars/Olympus",
            "channels": {"phone": "0151 123", "webhooks": [{"url": "ftp://x"}]},
        },
        headers=p.auth("alice"),
    )
    assert bad.status_code == 422
    fields = {e["field"] for e in bad.json()["errors"]}
    assert {"timezone", "channels.phone"} <= fields
    hook = await p.http.put(
        "/v1/users/alice",
        json={"channels": {"webhooks": [{"url": "ftp://example.com/x"}]}},
        headers=p.auth("alice"),
    )
    assert hook.status_code == 422 and hook.json()["errors"][0]["field"] == "channels.webhooks.0.url"

    sub = await p.http.post(
        "/v1/users/alice/subscriptions",
        json={
            "target": "collection",
            "entity_key": "collection:ethereum:0x12",
            "rules": [{"kind": "threshold"}],
        },
        headers=p.auth("alice"),
    )
    assert sub.status_code == 422 and sub.json()["errors"][0]["field"] == "entity_key"
    sub = await p.http.post(
        "/v1/users/alice/subscriptions",
        json={
            "target": "collection",
            "entity_key": "collection:ethereum:0x" + "CD" * 20,  # addresses are case-insensitive
            "rules": [{"kind": "relative_change", "metric": "floor", "pct": -1}],
        },
        headers=p.auth("alice"),
    )
    assert sub.status_code == 422 and sub.json()["errors"][0]["field"] == "rules.0.pct"


async def test_subscription_crud_and_portfolio(npulse: NotifyPulse) -> None:
    p = npulse
    await p.http.put("/v1/users/alice", json={}, headers=p.auth("alice"))
    rule = {"kind": "threshold", "metric": "trust", "level": "50"}
    created = await p.http.post(
        "/v1/users/alice/subscriptions",
        json={"target": "portfolio", "wallets": [ALICE_WALLET.upper().replace("0X", "0x")], "rules": [rule]},
        headers=p.auth("alice"),
    )
    assert created.status_code == 201, created.text
    sub = created.json()
    assert sub["wallets"] == [ALICE_WALLET] and sub["rules"][0]["id"] == "r1"
    listed = (await p.http.get("/v1/users/alice/subscriptions", headers=p.auth("alice"))).json()["items"]
    assert [s["id"] for s in listed] == [sub["id"]]
    patched = await p.http.patch(
        f"/v1/users/alice/subscriptions/{sub['id']}", json={"label": "cold wallet"}, headers=p.auth("alice")
    )
    assert patched.status_code == 200 and patched.json()["label"] == "cold wallet"
    assert (
        await p.http.get(f"/v1/users/bob/subscriptions/{sub['id']}", headers=p.auth("admin"))
    ).status_code == 404
    deleted = await p.http.delete(f"/v1/users/alice/subscriptions/{sub['id']}", headers=p.auth("alice"))
    assert deleted.status_code == 204
    assert (await p.http.get("/v1/users/alice/subscriptions", headers=p.auth("alice"))).json()["items"] == []


async def test_twilio_callback_checks_signature(npulse: NotifyPulse) -> None:
    p = npulse
    params = {"MessageSid": "SM123", "MessageStatus": "delivered"}
    url = "https://pulse.example/v1/callbacks/twilio"
    good = twilio_callback_signature("twilio-test-token", url, params)
    resp = await p.http.post(
        "/v1/callbacks/twilio",
        content="MessageSid=SM123&MessageStatus=delivered",
        headers={"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": good},
    )
    assert resp.status_code == 204
    resp = await p.http.post(
        "/v1/callbacks/twilio",
        content="MessageSid=SM123&MessageStatus=failed",
        headers={"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": good},
    )
    assert resp.status_code == 403


def _sendgrid_post(
    body: bytes, key: ec.EllipticCurvePrivateKey = SENDGRID_KEY, timestamp: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of a POST signed the way SendGrid signs its event webhook (now, by default)."""
    timestamp = timestamp or str(int(time.time()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "content": body,
        "headers": {
            "content-type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        },
    }


def _stored_notification(db: Database, user_id: str, key: str) -> int:
    now = datetime.now(UTC)
    with db.write() as s:
        if s.get(notify_store.NotifyUser, user_id) is None:
            s.add(notify_store.NotifyUser(id=user_id, email=f"{user_id}@example.com", updated_at=now))
            s.flush()
        row = notify_store.Notification(
            idempotency_key=key,
            user_id=user_id,
            kind="price_movement",
            severity="warning",
            entity_key=COLLECTION,
            created_at=now,
        )
        s.add(row)
        s.flush()
        assert row.id is not None
        notifications.upsert_delivery(s, row.id, "email", "queued", now, provider_message_id="sg-1")
        return row.id


def _email_status(db: Database, nid: int) -> str:
    with db.read() as s:
        (row,) = [d for d in notifications.deliveries_for(s, [nid])[nid] if d.channel == "email"]
        return row.status


async def test_sendgrid_event_webhook(npulse: NotifyPulse) -> None:
    p = npulse
    first = _stored_notification(p.db, "alice", "ntf_sg_first")
    second = _stored_notification(p.db, "alice", "ntf_sg_second")
    third = _stored_notification(p.db, "alice", "ntf_sg_third")
    events = [
        {"event": "processed", "email": "alice@example.com", "pulse_notification_id": str(first)},
        {"event": "delivered", "email": "alice@example.com", "pulse_notification_id": str(first)},
        {"event": "processed", "pulse_notification_id": str(second)},
        {"event": "bounce", "type": "bounce", "pulse_notification_id": str(second)},
        # Only the key (and an escalation repeat's suffix): found through the idempotency key.
        {"event": "open", "pulse_idempotency_key": "ntf_sg_third_s1"},
        # Mail Pulse did not send, events that move no status, an unknown notification: skipped.
        {"event": "delivered", "email": "someone@example.com"},
        {"event": "group_resubscribe", "pulse_notification_id": str(first)},
        {"event": "delivered", "pulse_notification_id": "999999999"},
    ]
    body = json.dumps(events).encode()
    resp = await p.http.post("/v1/callbacks/sendgrid", **_sendgrid_post(body))
    assert resp.status_code == 204, resp.text
    assert (_email_status(p.db, first), _email_status(p.db, second), _email_status(p.db, third)) == (
        "delivered",
        "failed",
        "read",
    )
    # A late "processed" never moves a delivered mail back, a bounce after delivery does not fail it.
    late = json.dumps(
        [{"event": e, "pulse_notification_id": str(first)} for e in ("processed", "bounce")]
    ).encode()
    assert (await p.http.post("/v1/callbacks/sendgrid", **_sendgrid_post(late))).status_code == 204
    assert _email_status(p.db, first) == "delivered"

    # Signatures: another key, a changed body, a changed timestamp, missing headers.
    flip = json.dumps([{"event": "open", "pulse_notification_id": str(second)}]).encode()
    other = ec.generate_private_key(ec.SECP256R1())
    assert (await p.http.post("/v1/callbacks/sendgrid", **_sendgrid_post(flip, other))).status_code == 403
    tampered = _sendgrid_post(flip)
    tampered["content"] = flip.replace(b"open", b"click")
    assert (await p.http.post("/v1/callbacks/sendgrid", **tampered)).status_code == 403
    moved = _sendgrid_post(flip)
    signed_at = int(moved["headers"]["X-Twilio-Email-Event-Webhook-Timestamp"])
    moved["headers"]["X-Twilio-Email-Event-Webhook-Timestamp"] = str(signed_at + 1)
    assert (await p.http.post("/v1/callbacks/sendgrid", **moved)).status_code == 403
    # Correctly signed but outside the replay window: ancient, zero, in the future, not a number.
    for stale in ("978307200", "0", str(int(time.time()) + 3600), "soon", f"{time.time():.3f}"):
        replayed = _sendgrid_post(flip, timestamp=stale)
        assert (await p.http.post("/v1/callbacks/sendgrid", **replayed)).status_code == 403, stale
    garbled = _sendgrid_post(flip)
    garbled["headers"]["X-Twilio-Email-Event-Webhook-Signature"] = "not base64!"
    assert (await p.http.post("/v1/callbacks/sendgrid", **garbled)).status_code == 403
    bare = await p.http.post("/v1/callbacks/sendgrid", content=flip)
    assert bare.status_code == 401 and "Signature" in bare.json()["detail"]
    assert _email_status(p.db, second) == "failed"

    # Signed but malformed: 422 naming the field, never a 500.
    cases = [
        (b"{not json", "body"),
        (b'{"event": "open"}', "body"),
        (b'["open"]', "body.0"),
        (b'[{"event": "open", "pulse_notification_id": "1"}, {"email": "x@example.com"}]', "body.1.event"),
        (b'[{"event": "open", "pulse_notification_id": "abc"}]', "body.0.pulse_notification_id"),
        (b'[{"event": "open", "pulse_idempotency_key": 7}]', "body.0.pulse_idempotency_key"),
        (b"\xff\xfe", "body"),
    ]
    for raw, field_name in cases:
        resp = await p.http.post("/v1/callbacks/sendgrid", **_sendgrid_post(raw))
        assert resp.status_code == 422, (raw, resp.text)
        assert resp.json()["errors"][0]["field"] == field_name, raw


# -- detection and delivery activities on their own (no Temporal) ----------------------------------------


def _seed(db: Database, user_id: str, entity: str, **profile: Any) -> None:
    now = datetime.now(UTC)
    with db.write() as s:
        s.add(notify_store.NotifyUser(id=user_id, updated_at=now, **profile))
        s.flush()
        sub = notify_store.Subscription(
            id=f"sub_{user_id}",
            user_id=user_id,
            target="collection",
            entity_key=entity,
            rules=[
                {"id": "floor-20", "kind": "relative_change", "metric": "floor", "pct": 0.2, "cooldown_s": 0}
            ],
            created_at=now,
            updated_at=now,
        )
        s.add(sub)
        s.flush()
        watching.replace_subscription_keys(s, sub.id, [entity])


def _floor(before: str | None, after: str) -> ChangeSet:
    return ChangeSet.of([MetricChange(COLLECTION, "floor", before, after)])


def test_detection_is_idempotent_and_only_touches_watchers(db: Database) -> None:
    other = "collection:ethereum:0x" + "ef" * 20
    _seed(db, "alice", COLLECTION)
    _seed(db, "carol", other)
    acts = DetectionActivities(db, ChannelRegistry())
    at = datetime(2026, 11, 2, 12, 0, tzinfo=UTC).isoformat()
    first = acts.detect(DetectInput(_floor("10", "7"), at, cause="p@1-1"))
    assert [(n.user_id, n.severity, n.route) for n in first.notifications] == [("alice", "warning", "now")]
    # A retried activity (same cause) answers the same and creates nothing new.
    again = acts.detect(DetectInput(_floor("10", "7"), at, cause="p@1-1"))
    assert [n.notification_id for n in again.notifications] == [first.notifications[0].notification_id]
    with db.read() as s:
        rows: list[notify_store.Notification] = list(s.execute(select(notify_store.Notification)).scalars())
        states: list[notify_store.RuleStateRecord] = list(
            s.execute(select(notify_store.RuleStateRecord)).scalars()
        )
    assert len(rows) == 1 and rows[0].user_id == "alice"
    assert {st.subscription_id for st in states} == {"sub_alice"}  # carol's rules were never evaluated


def test_detection_keeps_watchers_until_a_subscription_changes(db: Database) -> None:
    """Watchers are read from the database once per entity while no subscription changes; a new, changed
    or deleted subscription (each through ``replace_subscription_keys``) is seen by the next detection."""
    _seed(db, "alice", COLLECTION)
    acts = DetectionActivities(db, ChannelRegistry())
    lookups: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "notify_subscription_keys" in statement and "JOIN" in statement:  # watch_entries
            lookups.append(statement)

    def users_notified(cause: str, before: str, after: str) -> list[str]:
        at = datetime(2026, 11, 2, 12, 0, tzinfo=UTC).isoformat()
        result = acts.detect(DetectInput(_floor(before, after), at, cause=cause))
        return sorted(n.user_id for n in result.notifications)

    engines = {db.read_engine, db.write_engine}
    for engine in engines:
        sa_event.listen(engine, "before_cursor_execute", count)
    try:
        assert users_notified("p@1-1", "10", "7") == ["alice"]
        assert users_notified("p@2-2", "7", "10") == ["alice"]
        assert len(lookups) == 1, "the second detection used the watchers it had"
        _seed(db, "bob", COLLECTION)
        assert users_notified("p@3-3", "10", "7") == ["alice", "bob"]
        with db.write() as s:
            watching.delete_subscription(s, "sub_alice")
        assert users_notified("p@4-4", "7", "10") == ["bob"]
        assert len(lookups) == 3
    finally:
        for engine in engines:
            sa_event.remove(engine, "before_cursor_execute", count)


def test_inbox_only_notification_is_delivered_by_detection_and_rendered_when_read(db: Database) -> None:
    """In-app only, due now, not critical: detection's commit is its delivery (no workflow), and its text
    is rendered from the stored context when read, in the user's locale, as rendering it then would."""
    _seed(db, "alice", COLLECTION, locale="de")
    _seed(db, "bob", "collection:ethereum:0x" + "ef" * 20)
    with db.write() as s:
        bob_sub = s.get(notify_store.Subscription, "sub_bob")
        assert bob_sub is not None
        bob_sub.entity_key = COLLECTION
        s.add(bob_sub)
        watching.replace_subscription_keys(s, "sub_bob", [COLLECTION])
        bob = s.get(notify_store.NotifyUser, "bob")
        assert bob is not None
        bob.webhooks = [{"id": "wh1", "url": "https://hooks.example.com/pulse", "secret": "whsec_x"}]
        bob.preferences = {"default": ["webhook"]}
        s.add(bob)
    acts = DetectionActivities(db, ChannelRegistry([WebhookChannel(WebhookConfig(allow_private=True))]))
    at = datetime(2026, 11, 2, 12, 0, tzinfo=UTC).isoformat()
    result = acts.detect(DetectInput(_floor("10", "7"), at, cause="lazy@1-1"))
    by_user = {n.user_id: n for n in result.notifications}
    assert by_user["bob"].channels == ["webhook"]
    with db.read() as s:
        rows = {r.user_id: r for r in s.execute(select(notify_store.Notification)).scalars()}
        deliveries = notifications.deliveries_for(s, [r.id or 0 for r in rows.values()])
    alice, bob_row = rows["alice"], rows["bob"]
    assert alice.inbox_at is not None and alice.workflow_id is None and alice.title == ""
    assert [(d.channel, d.status) for d in deliveries[alice.id or 0]] == [("in_app", "delivered")]
    title, body = inbox_text(alice.kind, alice.context, alice.title, alice.body)
    expected = render(alice.kind, "in_app", "de", alice.context)
    assert (title, body) == (expected.subject, expected.text) and title.startswith("Mindestpreis")
    # Bob's goes out on his webhook through its workflow: rendered now, not in the inbox until delivered.
    assert bob_row.title and bob_row.inbox_at is None and deliveries[bob_row.id or 0] == []
    assert bob_row.workflow_id == notification_workflow_id("", bob_row.id or 0)
    assert inbox_text(bob_row.kind, bob_row.context, bob_row.title, bob_row.body) == (
        bob_row.title,
        bob_row.body,
    )


def test_saved_change_batches_are_detected_once_each_and_consumed(db: Database) -> None:
    """The pipeline saves each batch's changes for its workflow; detection uses them up, and a batch whose
    recalculation result was lost (a crash) is still detected the next time the workflow asks."""
    _seed(db, "alice", COLLECTION)
    acts = DetectionActivities(db, ChannelRegistry())
    with db.write() as s:
        entities.add_change_batch(s, "shard/1", "shard/1@1-5", _floor("10", "7").columns())
        entities.add_change_batch(s, "shard/2", "shard/2@6-6", _floor("10", "7").columns())
    first = acts.detect_saved("shard/1")
    assert [n.user_id for n in first.notifications] == ["alice"]
    # Consumed: asking again finds nothing, and the other workflow's batch is untouched.
    assert acts.detect_saved("shard/1").notifications == []
    with db.read() as s:
        assert [cause for _, cause, _ in entities.change_batches(s, "shard/2")] == ["shard/2@6-6"]
    # A batch saved again under a cause already detected (a recalculation retried after its commit)
    # answers with the first notification instead of creating another.
    with db.write() as s:
        entities.add_change_batch(s, "shard/1", "shard/1@1-5", _floor("10", "7").columns())
    again = acts.detect_saved("shard/1")
    assert [n.notification_id for n in again.notifications] == [first.notifications[0].notification_id]
    with db.read() as s:
        assert entities.change_batches(s, "shard/1") == []
        assert len(list(s.execute(select(notify_store.Notification)).scalars())) == 1


def test_budget_and_quiet_hours_route_to_digest_or_defer(db: Database) -> None:
    _seed(db, "alice", COLLECTION, hourly_budget=1, digest={"frequency": "daily", "at": "08:00"})
    acts = DetectionActivities(db, ChannelRegistry())
    base = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    r1 = acts.detect(DetectInput(_floor("10", "7"), base.isoformat(), cause="c1"))
    r2 = acts.detect(DetectInput(_floor("7", "10"), (base + timedelta(minutes=1)).isoformat(), cause="c2"))
    assert [n.route for n in r1.notifications] == ["now"]
    assert [n.route for n in r2.notifications] == ["digest"]  # past the hourly budget of one
    digest = r2.notifications[0].digest or {}
    assert (digest["frequency"], digest["at"], digest["tz"]) == ("daily", "08:00", "UTC")


def test_quiet_hours_defer_without_digest(db: Database) -> None:
    _seed(
        db, "alice", COLLECTION, timezone="Asia/Tokyo", quiet_hours={"start": "22:00:00", "end": "07:00:00"}
    )
    acts = DetectionActivities(db, ChannelRegistry())
    at = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)  # 00:00 in Tokyo
    result = acts.detect(DetectInput(_floor("10", "7"), at.isoformat(), cause="q1"))
    (req,) = result.notifications
    assert req.route == "defer"
    assert req.not_before == datetime(2026, 11, 2, 22, 0, tzinfo=UTC).isoformat()  # 07:00 Tokyo


@dataclass
class _FlakySms:
    name: str = "sms"
    error: Exception | None = None
    sent: list[str] = field(default_factory=list)

    async def send(self, message: OutboundMessage) -> DeliveryReceipt:
        if self.error is not None:
            raise self.error
        self.sent.append(message.to)
        return DeliveryReceipt(channel="sms", status="sent", provider_message_id="SM1")


async def test_deliver_maps_errors_and_never_sends_twice(db: Database) -> None:
    _seed(db, "alice", COLLECTION, phone="+4915112345678")
    sms = _FlakySms(error=TransientDeliveryError("sms", "429", retry_after=30))
    acts = DeliveryActivities(db, ChannelRegistry([sms]))
    (req,) = (
        DetectionActivities(db, ChannelRegistry([sms]))
        .detect(DetectInput(_floor("10", "7"), datetime.now(UTC).isoformat(), cause="d1"))
        .notifications
    )
    with pytest.raises(ApplicationError) as info:
        await acts.deliver(DeliverInput(req.notification_id, "sms"))
    assert not info.value.non_retryable and info.value.next_retry_delay == timedelta(seconds=30)
    sms.error = None
    assert (await acts.deliver(DeliverInput(req.notification_id, "sms"))).status == "sent"
    assert (await acts.deliver(DeliverInput(req.notification_id, "sms"))).already
    assert sms.sent == ["+4915112345678"]
    with pytest.raises(ApplicationError) as info:
        await acts.deliver(DeliverInput(req.notification_id, "push"))  # no push channel configured
    assert info.value.non_retryable and info.value.type == "PermanentDeliveryError"


# -- portfolios: changes of held NFTs reach the holder, ranked by exposure ----------------------------------

BOB_WALLET = "0x" + "b2" * 20
CAROL_WALLET = "0x" + "c3" * 20


def _nft(token: str) -> str:
    return f"nft:ethereum:{CONTRACT}:{token}"


def _views(db: Database, owners: dict[str, str], estimates: dict[str, str | None], floor: str) -> None:
    """NFT and collection read models as the pipeline writes them (only the fields detection reads)."""
    now = datetime.now(UTC)
    with db.write() as s:
        for token, owner in owners.items():
            estimate = estimates.get(token)
            s.add(
                EntityView(
                    key=_nft(token),
                    kind="nft",
                    collection_key=COLLECTION,
                    version=1,
                    view={
                        "owner": owner,
                        "price_estimate": {"value": estimate, "currency": "ETH"},
                        "last_sale": {"price": "1.5", "currency": "ETH"},
                    },
                    updated_at=now,
                )
            )
        s.add(
            EntityView(
                key=COLLECTION,
                kind="collection",
                collection_key=COLLECTION,
                version=1,
                view={"floor": floor, "currency": "ETH"},
                updated_at=now,
            )
        )


def _portfolio(db: Database, user_id: str, wallets: list[str], **profile: Any) -> None:
    now = datetime.now(UTC)
    rules = [{"id": "trust-50", "kind": "threshold", "metric": "trust", "level": "50", "cooldown_s": 0}]
    with db.write() as s:
        if s.get(notify_store.NotifyUser, user_id) is None:
            s.add(notify_store.NotifyUser(id=user_id, updated_at=now, **profile))
            s.flush()
        sub = notify_store.Subscription(
            id=f"pf_{user_id}",
            user_id=user_id,
            target="portfolio",
            wallets=wallets,
            rules=rules,
            created_at=now,
            updated_at=now,
        )
        s.add(sub)
        s.flush()
        watching.replace_subscription_keys(s, sub.id, [f"wallet:{w}" for w in wallets])


def test_portfolio_matches_held_nfts_ranked_by_exposure(db: Database) -> None:
    # Alice holds tokens 1, 2 and 4 (and watches the collection's floor); Bob holds 3; Carol nothing here.
    _views(
        db,
        {"1": ALICE_WALLET, "2": ALICE_WALLET, "3": BOB_WALLET, "4": ALICE_WALLET},
        {"1": "12", "2": "2"},
        "3",
    )
    _seed(db, "alice", COLLECTION, hourly_budget=3, digest={"frequency": "daily", "at": "08:00"})
    _portfolio(db, "alice", [ALICE_WALLET])
    _portfolio(db, "bob", [BOB_WALLET])
    _portfolio(db, "carol", [CAROL_WALLET])
    changes = ChangeSet.of(
        [
            MetricChange(_nft("2"), "trust", 60, 40),
            MetricChange(_nft("1"), "trust", 61, 41),
            MetricChange(_nft("3"), "trust", 62, 42),
            MetricChange(_nft("4"), "trust", 63, 43),  # no estimate: valued at its last sale (1.5)
            MetricChange(COLLECTION, "floor", "4", "3"),
            MetricChange(_nft("1"), "price_estimate", "13", "12"),  # no rule on it: evaluated, silent
        ]
    )
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = db.write_engine
    sa_event.listen(engine, "before_cursor_execute", count)
    try:
        acts = DetectionActivities(db, ChannelRegistry())
        at = datetime(2026, 11, 2, 12, 0, tzinfo=UTC).isoformat()
        result = acts.detect(DetectInput(changes, at, cause="pf@1"))
    finally:
        sa_event.remove(engine, "before_cursor_execute", count)
    got = [(n.user_id, n.entity_key, n.route) for n in result.notifications]
    # Alice: most exposed first — token 1 (12 ETH), her 3 tokens at the floor (9 ETH), token 2 (2 ETH),
    # token 4 (1.5 ETH); a budget of three sends the first three now, the least exposed to the digest.
    assert got == [
        ("alice", _nft("1"), "now"),
        ("alice", COLLECTION, "now"),
        ("alice", _nft("2"), "now"),
        ("alice", _nft("4"), "digest"),
        ("bob", _nft("3"), "now"),
    ]
    with db.read() as s:
        rows = {
            r.entity_key: r
            for r in s.execute(
                select(notify_store.Notification).where(notify_store.Notification.user_id == "alice")
            ).scalars()
        }
    assert rows[_nft("1")].context["holding"] == {
        "label": entity_name(_nft("1")),
        "quantity": 1,
        "value": "12",
        "currency": "ETH",
    }
    assert rows[COLLECTION].context["holding"]["quantity"] == 3
    assert rows[COLLECTION].context["holding"]["value"] == "9"
    # Stored least exposed first, so the inbox (newest first) opens with the largest position.
    by_id = sorted(rows.values(), key=lambda r: r.id or 0, reverse=True)
    assert [r.entity_key for r in by_id] == [_nft("1"), COLLECTION, _nft("2"), _nft("4")]
    # Owners: one read of the changed entities' read models; no query lists users without a filter.
    reads = [st for st in statements if "FROM entity_views" in st]
    assert len(reads) == 2  # the changed entities' owners and values; alice's token count in the collection
    assert not any("FROM notify_users" in st and "WHERE" not in st for st in statements)


def test_transfer_between_own_wallets_notifies_once(db: Database) -> None:
    other = "0x" + "a2" * 20
    _views(db, {"1": other}, {"1": "5"}, "3")
    now = datetime.now(UTC)
    with db.write() as s:
        s.add(notify_store.NotifyUser(id="alice", updated_at=now))
        s.flush()
        sub = notify_store.Subscription(
            id="pf_alice",
            user_id="alice",
            target="portfolio",
            wallets=[ALICE_WALLET, other],
            rules=[{"id": "own", "kind": "new_risk", "metric": "owner"}],
            created_at=now,
            updated_at=now,
        )
        s.add(sub)
        s.flush()
        watching.replace_subscription_keys(s, sub.id, [f"wallet:{ALICE_WALLET}", f"wallet:{other}"])
    acts = DetectionActivities(db, ChannelRegistry())
    changes = ChangeSet.of(
        [MetricChange(_nft("1"), "owner", ALICE_WALLET, other), MetricChange(_nft("1"), "trust", 70, 20)]
    )
    result = acts.detect(DetectInput(changes, now.isoformat(), cause="pf@2"))
    # The transfer reached the portfolio under both wallets' keys; its rule ran once (the trust change
    # does not match an owner rule).
    assert result.evaluated == 1


async def test_send_digest_renders_templates_per_channel(db: Database, hooks: Hooks) -> None:
    """The digest activity with the real webhook channel (signed, to a local receiver): the body is the
    digest template's, in the user's language, grouped by kind and entity."""
    _seed(
        db,
        "alice",
        COLLECTION,
        locale="de",
        timezone="Europe/Berlin",
        hourly_budget=0,
        digest={"frequency": "daily", "at": "08:00"},
        preferences={"digest": ["webhook", "in_app"]},
    )
    secret = "whsec_" + base64.b64encode(b"digest-test-secret-32-bytes-long").decode()
    with db.write() as s:
        user = s.get(notify_store.NotifyUser, "alice")
        assert user is not None
        user.webhooks = [{"url": hooks.url, "secret": secret}]
        s.add(user)
    webhook = WebhookChannel(WebhookConfig(allow_private=True))
    registry = ChannelRegistry([webhook])
    acts = DetectionActivities(db, registry, public_base_url="https://pulse.example")
    digests = DigestActivities(db, registry, public_base_url="https://pulse.example")
    at = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    first = acts.detect(DetectInput(_floor("10", "7"), at.isoformat(), cause="g1")).notifications
    second = acts.detect(DetectInput(_floor("7", "10"), (at + timedelta(hours=1)).isoformat(), cause="g2"))
    reqs = [*first, *second.notifications]
    assert [r.route for r in reqs] == ["digest", "digest"]  # a budget of zero: everything to the digest
    group = DigestGroupOut(
        kind="price_movement",
        entity_key=COLLECTION,
        severity="warning",
        titles=[r.title for r in reqs],
        notification_ids=[r.notification_id for r in reqs],
    )
    try:
        result = await digests.send_digest(SendDigestInput("alice", "dgst_test", "schedule", [group]))
    finally:
        await webhook.aclose()
    assert result.channels == ["in_app", "webhook"] and result.items == 2
    ((headers, raw),) = hooks.requests
    payload = Webhook(secret).verify(raw, headers)
    assert payload["type"] == "notification.digest"
    data = payload["data"]
    assert data["title"] == "Ihre Pulse-Übersicht: 2 Meldungen" and data["locale"] == "de"
    assert [s["label"] for s in data["sections"]] == ["Preisbewegungen"]
    (out,) = data["groups"]
    assert out["entity"]["key"] == COLLECTION
    assert [i["title"] for i in out["items"]] == [r.title for r in reqs]  # oldest first
    assert out["items"][0]["at"] == at.isoformat()
    with db.read() as s:
        rows = notifications.deliveries_for(s, [r.notification_id for r in reqs])
    assert all(
        {d.channel: d.status for d in ds} == {"in_app": "delivered", "webhook": "sent"}
        for ds in rows.values()
    )


def test_notifications_are_stored_in_bulk_once_per_key(db: Database) -> None:
    now = datetime.now(UTC)

    def note(key: str) -> notify_store.Notification:
        return notify_store.Notification(
            idempotency_key=key,
            user_id="u1",
            kind="price_movement",
            severity="info",
            entity_key=COLLECTION,
            created_at=now,
        )

    with db.write() as s:
        s.add(notify_store.NotifyUser(id="u1", updated_at=now))
        s.flush()
        [(old, new)] = notifications.insert_notifications(s, [note("k-old")])
        assert new and old.id is not None
    with db.write() as s:
        stored = notifications.insert_notifications(s, [note("k-a"), note("k-old"), note("k-b"), note("k-a")])
    flags = [new for _, new in stored]
    ids = [row.id for row, _ in stored]
    # The stored key and the repeat within the batch are reported as existing, with the first row's id.
    assert flags == [True, False, True, False]
    assert ids[1] == old.id and ids[3] == ids[0] and ids[0] < ids[2]


def test_watchers_in_the_same_state_share_an_evaluation_but_not_their_outcome(db: Database) -> None:
    """Three watchers of one collection with the same rule: two armed alike (evaluated once) are both
    notified; the third, whose rule already fired on the first drop and is disarmed, stays silent. Each
    keeps a state of its own."""
    _seed(db, "cid", COLLECTION)
    acts = DetectionActivities(db, ChannelRegistry())
    at = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    first = acts.detect(DetectInput(_floor("10", "7"), at.isoformat(), cause="cid-only@1"))
    assert [n.user_id for n in first.notifications] == ["cid"]
    _seed(db, "ann", COLLECTION)
    _seed(db, "ben", COLLECTION)
    later = (at + timedelta(minutes=1)).isoformat()
    result = acts.detect(DetectInput(_floor("10", "7.5"), later, cause="all@2"))
    assert sorted(n.user_id for n in result.notifications) == ["ann", "ben"]
    assert len({n.idempotency_key for n in result.notifications}) == 2
    with db.read() as s:
        states = {
            r.subscription_id: r.state for r in s.execute(select(notify_store.RuleStateRecord)).scalars()
        }
    assert set(states) == {"sub_ann", "sub_ben", "sub_cid"}
    assert states["sub_ann"] == states["sub_ben"] != states["sub_cid"]
