"""Notifications end to end: events through the API → pipeline → detection → delivery (inbox and a signed
webhook to a local receiver) → read stops escalation. Plus the users/subscriptions/inbox API itself.

The pipeline workflows do not call detection yet (the lead adds the hook, see the report); here the
partition workflow is composed with the hook by a subclass registered under the same workflow name, so
this test needs nothing beyond the notification modules.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.contracts import MetricChange
from activities.notify import DeliverInput, DetectInput, NotifyActivities
from channels.base import DeliveryReceipt, OutboundMessage, TransientDeliveryError
from channels.registry import ChannelRegistry
from channels.sms import twilio_callback_signature
from store import keys
from store import notify as notify_store
from store.db import Database
from tests.conftest import run_pulse
from workflows.notify import NotificationOutcome, NotificationWorkflow

CONTRACT = "0x" + "cd" * 20
COLLECTION = f"collection:ethereum:{CONTRACT}"
ALICE_WALLET = "0x" + "a1" * 20


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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/pulse"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()


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
        notify_store.replace_subscription_keys(s, sub.id, [entity])


def _floor(before: str | None, after: str) -> MetricChange:
    return MetricChange(COLLECTION, "floor", before, after)


def test_detection_is_idempotent_and_only_touches_watchers(db: Database) -> None:
    other = "collection:ethereum:0x" + "ef" * 20
    _seed(db, "alice", COLLECTION)
    _seed(db, "carol", other)
    acts = NotifyActivities(db, ChannelRegistry())
    at = datetime(2026, 11, 2, 12, 0, tzinfo=UTC).isoformat()
    first = acts.detect(DetectInput([_floor("10", "7")], at, cause="p@1-1"))
    assert [(n.user_id, n.severity, n.route) for n in first.notifications] == [("alice", "warning", "now")]
    # A retried activity (same cause) answers the same and creates nothing new.
    again = acts.detect(DetectInput([_floor("10", "7")], at, cause="p@1-1"))
    assert [n.notification_id for n in again.notifications] == [first.notifications[0].notification_id]
    with db.read() as s:
        rows: list[notify_store.Notification] = list(s.execute(select(notify_store.Notification)).scalars())
        states: list[notify_store.RuleStateRecord] = list(
            s.execute(select(notify_store.RuleStateRecord)).scalars()
        )
    assert len(rows) == 1 and rows[0].user_id == "alice"
    assert {st.subscription_id for st in states} == {"sub_alice"}  # carol's rules were never evaluated


def test_budget_and_quiet_hours_route_to_digest_or_defer(db: Database) -> None:
    _seed(db, "alice", COLLECTION, hourly_budget=1, digest={"frequency": "daily", "at": "08:00"})
    acts = NotifyActivities(db, ChannelRegistry())
    base = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    r1 = acts.detect(DetectInput([_floor("10", "7")], base.isoformat(), cause="c1"))
    r2 = acts.detect(DetectInput([_floor("7", "10")], (base + timedelta(minutes=1)).isoformat(), cause="c2"))
    assert [n.route for n in r1.notifications] == ["now"]
    assert [n.route for n in r2.notifications] == ["digest"]  # past the hourly budget of one
    digest = r2.notifications[0].digest or {}
    assert (digest["frequency"], digest["at"], digest["tz"]) == ("daily", "08:00", "UTC")


def test_quiet_hours_defer_without_digest(db: Database) -> None:
    _seed(
        db, "alice", COLLECTION, timezone="Asia/Tokyo", quiet_hours={"start": "22:00:00", "end": "07:00:00"}
    )
    acts = NotifyActivities(db, ChannelRegistry())
    at = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)  # 00:00 in Tokyo
    result = acts.detect(DetectInput([_floor("10", "7")], at.isoformat(), cause="q1"))
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
    acts = NotifyActivities(db, ChannelRegistry([sms]))
    (req,) = acts.detect(
        DetectInput([_floor("10", "7")], datetime.now(UTC).isoformat(), cause="d1")
    ).notifications
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
