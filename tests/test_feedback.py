"""Feedback end to end on a running Pulse (API, worker and Temporal dev server; SQLite and Postgres): the
webhook payload, the e-mail links and the inbox carry the feedback action; verdicts given through each of
them are stored (the latest wins), counted, and adapt the rule that kept being rated negatively; the next
alert of that rule says so on its channels; the reset link puts the user's own setting back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest_asyncio
from prometheus_client import REGISTRY
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook
from temporalio.client import Client

from nftpulse.activities.contracts.notify import DetectInput
from nftpulse.activities.contracts.pipeline import ChangeSet
from nftpulse.activities.notify.delivery import DbInboxWriter, DeliveryActivities
from nftpulse.activities.notify.detection import DetectionActivities
from nftpulse.api.app import create_app
from nftpulse.channels.registry import ChannelRegistry, build_registry
from nftpulse.core.settings import Settings
from nftpulse.domain.changes import MetricChange
from nftpulse.store import feedback, keys, watching
from nftpulse.store import notify as store
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database
from nftpulse.worker import channels_config
from tests.conftest import run_pulse
from tests.test_notify_pipeline import Hooks, hooks  # noqa: F401  (the local webhook receiver fixture)

BASE = "https://pulse.example"
COLLECTION = "collection:ethereum:0x" + "fb" * 20
RULE = {"id": "floor-20", "kind": "relative_change", "metric": "floor", "pct": 0.2, "cooldown_s": 0}


@dataclass
class FeedbackPulse:
    http: httpx.AsyncClient
    db: Database
    detection: DetectionActivities
    keys: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    async def floor(self, before: str, after: str) -> list[int]:
        """One floor move of the collection through real detection, which starts the notifications'
        workflows on the running worker; returns the new notifications' ids."""
        changes = ChangeSet.of([MetricChange(COLLECTION, "floor", before, after)])
        cause = f"fb@{uuid.uuid4().hex[:8]}"
        result = await self.detection.detect_significant_changes(
            DetectInput(changes, datetime.now(UTC).isoformat(), cause=cause)
        )
        return [n.notification_id for n in result.notifications]


@pytest_asyncio.fixture
async def fpulse(database_url: str, temporal_client: Client) -> AsyncIterator[FeedbackPulse]:
    async with run_pulse(
        database_url, temporal_client, allow_private_webhooks=True, public_base_url=BASE
    ) as running:
        registry = build_registry(channels_config(running.settings), inbox_writer=DbInboxWriter(running.db))
        detection = DetectionActivities(
            running.db,
            registry,
            client=running.client,
            task_queue=running.settings.task_queue,
            workflow_id_prefix=running.settings.workflow_id_prefix,
            public_base_url=BASE,
        )
        test_keys = {
            "admin": running.keys.admin,
            "alice": keys.create(running.db, "alice", ["user:alice"]),
            "bob": keys.create(running.db, "bob", ["user:bob"]),
        }
        try:
            yield FeedbackPulse(running.http, running.db, detection, test_keys)
        finally:
            await registry.aclose()


async def _setup(p: FeedbackPulse, receiver: Hooks) -> tuple[str, str]:
    """Alice: inbox and a webhook, one floor rule on the collection. Returns (webhook secret, sub id)."""
    profile = {
        "timezone": "Europe/Berlin",
        "channels": {"webhooks": [{"url": receiver.url}]},
        "preferences": {"default": ["in_app", "webhook"]},
    }
    resp = await p.http.put("/v1/users/alice", json=profile, headers=p.auth("alice"))
    assert resp.status_code == 200, resp.text
    secret = resp.json()["channels"]["webhooks"][0]["secret"]
    body = {"target": "collection", "entity_key": COLLECTION, "rules": [RULE]}
    resp = await p.http.post("/v1/users/alice/subscriptions", json=body, headers=p.auth("alice"))
    assert resp.status_code == 201, resp.text
    return secret, resp.json()["id"]


async def _payloads(receiver: Hooks, secret: str, n: int) -> list[dict[str, Any]]:
    for _ in range(300):
        if len(receiver.requests) >= n:
            break
        await asyncio.sleep(0.1)
    assert len(receiver.requests) >= n, f"{len(receiver.requests)} webhook deliveries, expected {n}"
    return [Webhook(secret).verify(raw, headers) for headers, raw in receiver.requests]


def _by_notification(payloads: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Payloads by notification id (the feedback URL names it)."""
    return {int(urlsplit(d["data"]["feedback"]["url"]).path.rsplit("/", 1)[1]): d["data"] for d in payloads}


def _local(url: str) -> str:
    """The path and query of a link that names the public base URL (the test talks to the app directly)."""
    assert url.startswith(BASE), url
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def _counted(verdict: str, channel: str) -> float:
    labels = {
        "verdict": verdict,
        "kind": "price_movement",
        "rule_kind": "relative_change",
        "channel": channel,
    }
    return REGISTRY.get_sample_value("pulse_notification_feedback_total", labels) or 0.0


async def test_verdicts_from_every_channel_adapt_the_rule_and_the_next_alert_says_so(
    fpulse: FeedbackPulse,
    hooks: Hooks,  # noqa: F811
) -> None:
    p = fpulse
    secret, sub_id = await _setup(p, hooks)
    first = [*await p.floor("10", "7"), *await p.floor("7", "10"), *await p.floor("10", "7")]
    assert len(first) == 3
    by_id = _by_notification(await _payloads(hooks, secret, 3))
    assert set(by_id) == set(first)
    for nid, data in by_id.items():
        offered = data["feedback"]
        assert offered["url"].startswith(f"{BASE}/v1/callbacks/feedback/{nid}?token=")
        assert set(offered["links"]) == {"useful", "not_useful", "too_many"}
        assert "adaptation" not in data
    webhook_before, email_before = _counted("not_useful", "webhook"), _counted("too_many", "email")

    # 1. The webhook receiver answers through the payload's feedback URL (the token proves it).
    resp = await p.http.post(_local(by_id[first[0]]["feedback"]["url"]), json={"verdict": "not_useful"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["channel"] == "webhook" and resp.json()["adapted"] is None
    # 2. An e-mail reader clicks a link (the same token, via=email as the e-mail channel builds it).
    email_link = by_id[first[1]]["feedback"]["links"]["too_many"].replace("via=webhook", "via=email")
    resp = await p.http.get(_local(email_link))
    assert resp.status_code == 200 and "too many" in resp.text
    # 3. In the app: first "useful", then changed to "not_useful" (the latest wins); the third negative of
    # the last five makes the rule one step less sensitive.
    url = f"/v1/users/alice/notifications/{first[2]}/feedback"
    resp = await p.http.post(url, json={"verdict": "useful"}, headers=p.auth("alice"))
    assert resp.status_code == 200 and resp.json()["previous"] is None and resp.json()["adapted"] is None
    resp = await p.http.post(url, json={"verdict": "not_useful"}, headers=p.auth("alice"))
    body = resp.json()
    assert resp.status_code == 200 and body["previous"] == "useful"
    adapted = body["adapted"]
    assert adapted["step"] == 1 and adapted["factor"] == 1.5 and adapted["reason"] == "not_useful"
    assert adapted["rule"]["pct"] == 0.3 and adapted["own_rule"]["pct"] == 0.2
    # The same verdict again changes nothing (idempotent).
    again = (await p.http.post(url, json={"verdict": "not_useful"}, headers=p.auth("alice"))).json()
    assert again["previous"] == "not_useful" and again["adapted"] is None
    assert _counted("not_useful", "webhook") == webhook_before + 1
    assert _counted("too_many", "email") == email_before + 1

    inbox = (await p.http.get("/v1/users/alice/notifications", headers=p.auth("alice"))).json()["items"]
    verdicts = {int(i["id"]): i["feedback"]["verdict"] for i in inbox}
    assert verdicts == {first[0]: "not_useful", first[1]: "too_many", first[2]: "not_useful"}
    assert inbox[0]["feedback"]["url"] == f"/v1/users/alice/notifications/{inbox[0]['id']}/feedback"
    assert inbox[0]["feedback"]["links"]["useful"].startswith(f"{BASE}/v1/callbacks/feedback/")
    sens = await p.http.get(f"/v1/users/alice/subscriptions/{sub_id}/sensitivity", headers=p.auth("alice"))
    assert [(s["rule_id"], s["step"], s["rule"]["pct"]) for s in sens.json()["items"]] == [
        ("floor-20", 1, 0.3)
    ]
    with p.db.read() as s:
        sub = s.get(store.Subscription, sub_id)
        assert sub is not None and sub.original_rules is not None and sub.original_rules[0]["pct"] == 0.2
        assert sub.adaptation is not None and sub.adaptation["floor-20"]["step"] == 1

    # A 26 % move would have fired the user's 20 % rule; the adapted 30 % rule lets it pass.
    assert await p.floor("7", "8.8") == []
    # A 43 % move fires, and this first alert since the change explains it, with the way back.
    (fourth,) = await p.floor("8.8", "10")
    data = _by_notification(await _payloads(hooks, secret, 4))[fourth]
    notice = data["adaptation"]
    assert notice["step"] == 1 and notice["original"] == 0.2 and notice["current"] == 0.3
    assert "We now alert you on moves over 30.0% (your setting: 20.0%)" in notice["text"]
    assert (
        notice["reset_url"]
        == f"{BASE}/v1/callbacks/feedback/{fourth}/reset?"
        + urlsplit(data["feedback"]["url"]).query.split("&via=")[0]
    )
    item = (await p.http.get("/v1/users/alice/notifications", headers=p.auth("alice"))).json()["items"][0]
    assert item["id"] == str(fourth) and "30.0%" in item["body"] and "20.0%" in item["body"]
    # Only the first alert after a change carries the notice.
    (fifth,) = await p.floor("10", "6.5")
    assert "adaptation" not in _by_notification(await _payloads(hooks, secret, 5))[fifth]

    # "Keep your own setting": the link puts the user's 20 % back.
    resp = await p.http.get(_local(notice["reset_url"]))
    assert resp.status_code == 200 and "back to your own setting" in resp.text
    sens = await p.http.get(f"/v1/users/alice/subscriptions/{sub_id}/sensitivity", headers=p.auth("alice"))
    assert [(s["step"], s["rule"]["pct"], s["reason"]) for s in sens.json()["items"]] == [(0, 0.2, "reset")]
    sub_out = (await p.http.get(f"/v1/users/alice/subscriptions/{sub_id}", headers=p.auth("alice"))).json()
    assert sub_out["rules"][0]["pct"] == 0.2
    # Old verdicts do not count again: one more negative verdict does not step again at once.
    resp = await p.http.post(
        f"/v1/users/alice/notifications/{fifth}/feedback",
        json={"verdict": "too_many"},
        headers=p.auth("alice"),
    )
    assert resp.json()["adapted"] is None

    # Reading counts towards the user's send-time histogram, in their local hour.
    resp = await p.http.post(f"/v1/users/alice/notifications/{fifth}/read", headers=p.auth("alice"))
    assert resp.status_code == 200
    with p.db.read() as s:
        hours = s.get(store.ReadHours, "alice")
    assert hours is not None and hours.reads == 1
    assert hours.hours[datetime.now(ZoneInfo("Europe/Berlin")).hour] == 1 or sum(hours.hours) == 1


async def test_reset_and_pin_by_the_api_and_bad_verdicts(fpulse: FeedbackPulse, hooks: Hooks) -> None:  # noqa: F811
    p = fpulse
    _, sub_id = await _setup(p, hooks)
    ids = [*await p.floor("10", "7"), *await p.floor("7", "10"), *await p.floor("10", "7")]
    for nid in ids:
        resp = await p.http.post(
            f"/v1/users/alice/notifications/{nid}/feedback",
            json={"verdict": "too_many"},
            headers=p.auth("admin"),
        )
        assert resp.status_code == 200, resp.text
    assert resp.json()["adapted"]["step"] == 1 and resp.json()["adapted"]["reason"] == "too_many"

    # Anything but the three verdicts: 422 naming the field.
    url = f"/v1/users/alice/notifications/{ids[0]}/feedback"
    for bad in ({"verdict": "meh"}, {}, {"verdict": "useful", "extra": 1}, {"verdict": None}):
        resp = await p.http.post(url, json=bad, headers=p.auth("alice"))
        assert resp.status_code == 422, (bad, resp.text)
        assert {e["field"] for e in resp.json()["errors"]} <= {"verdict", "extra"}, resp.text
    resp = await p.http.post(
        "/v1/users/alice/notifications/x1/feedback", json={"verdict": "useful"}, headers=p.auth("alice")
    )
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "notification_id"
    # Someone else's key, someone else's notification, a wrong token.
    assert (await p.http.post(url, json={"verdict": "useful"}, headers=p.auth("bob"))).status_code == 403
    resp = await p.http.post(url.replace("alice", "bob"), json={"verdict": "useful"}, headers=p.auth("bob"))
    assert resp.status_code == 404
    resp = await p.http.post(f"/v1/callbacks/feedback/{ids[0]}?token=wrong", json={"verdict": "useful"})
    assert resp.status_code == 404
    with p.db.read() as s:
        row = s.get(store.Notification, ids[0])
        assert row is not None
        token = row.context["click_token"]
    resp = await p.http.get(f"/v1/callbacks/feedback/{ids[0]}", params={"token": token, "verdict": "meh"})
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "verdict"

    # Reset and pin: back to 20 %, and further negative verdicts no longer adapt it.
    reset = f"/v1/users/alice/subscriptions/{sub_id}/sensitivity/reset"
    resp = await p.http.post(reset, json={"rule_ids": ["nope"]}, headers=p.auth("alice"))
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "rule_ids.0"
    resp = await p.http.post(reset, json={"pin": True}, headers=p.auth("alice"))
    assert resp.status_code == 200
    assert [(s["step"], s["pinned"], s["rule"]["pct"]) for s in resp.json()["items"]] == [(0, True, 0.2)]
    more = [*await p.floor("7", "10"), *await p.floor("10", "7"), *await p.floor("7", "10")]
    for nid in more:
        resp = await p.http.post(
            f"/v1/users/alice/notifications/{nid}/feedback",
            json={"verdict": "not_useful"},
            headers=p.auth("alice"),
        )
        assert resp.json()["adapted"] is None
    with p.db.read() as s:
        stored = list(
            s.execute(select(store.FeedbackRecord).where(store.FeedbackRecord.user_id == "alice")).scalars()
        )  # type: ignore[arg-type]
    assert len(stored) == 6 and {r.rule_kind for r in stored} == {"relative_change"}


def test_useful_verdicts_step_the_rule_back_to_the_users_own(db: Database) -> None:
    """The store's side of the rule: 3 negative verdicts widen, 5 useful in a row narrow back, and once no
    rule differs from the user's own setting the kept copy goes."""
    now = datetime.now(UTC)
    with db.write() as s:
        s.add(store.NotifyUser(id="una", updated_at=now))
        s.flush()
        s.add(
            store.Subscription(
                id="sub_una",
                user_id="una",
                target="collection",
                entity_key=COLLECTION,
                rules=[RULE],
                created_at=now,
                updated_at=now,
            )
        )
        rows = [
            store.Notification(
                idempotency_key=f"ntf_una_{i}",
                user_id="una",
                subscription_id="sub_una",
                rule_id="floor-20",
                kind="price_movement",
                severity="warning",
                entity_key=COLLECTION,
                context={"rule": {"kind": "relative_change"}},
                created_at=now,
            )
            for i in range(8)
        ]
        s.add_all(rows)
        s.flush()
        ids = [r.id for r in rows]
    steps = []
    for i, (nid, verdict) in enumerate(zip(ids, ["not_useful"] * 3 + ["useful"] * 5, strict=True)):
        with db.write() as s:
            row = s.get(store.Notification, nid)
            assert row is not None
            # Each verdict a second after the previous: the window orders them by time.
            done = feedback.record_verdict(
                s, row, verdict, "in_app", now.replace(microsecond=0) + timedelta(seconds=i)
            )
            steps.append(done.adaptation.step if done.adaptation else None)
    assert steps == [None, None, 1, None, None, None, None, 0]
    with db.read() as s:
        sub = s.get(store.Subscription, "sub_una")
        assert sub is not None
        assert sub.rules[0]["pct"] == 0.2 and sub.original_rules is None
        state = feedback.adaptations(sub)["floor-20"]
        assert state.step == 0 and state.reason == "useful" and state.announce


async def test_the_email_and_push_links_record_the_verdict_with_their_channel(db: Database) -> None:
    """The links as the e-mail and push channels render them (``DeliveryActivities._message``), followed
    on the API: the verdict is stored under the channel the link came from."""
    now = datetime.now(UTC)
    with db.write() as s:
        s.add(store.NotifyUser(id="vic", email="vic@example.org", updated_at=now))
        s.flush()
        s.add(
            store.Subscription(
                id="sub_vic",
                user_id="vic",
                target="collection",
                entity_key=COLLECTION,
                rules=[RULE],
                created_at=now,
                updated_at=now,
            )
        )
        watching.replace_subscription_keys(s, "sub_vic", [COLLECTION])
    detection = DetectionActivities(db, ChannelRegistry(), public_base_url=BASE)
    changes = ChangeSet.of([MetricChange(COLLECTION, "floor", "10", "7")])
    (req,) = detection.detect(DetectInput(changes, now.isoformat(), cause="links@1")).notifications
    with db.read() as s:
        row = s.get(store.Notification, req.notification_id)
        user = s.get(store.NotifyUser, "vic")
    assert row is not None and user is not None
    delivery = DeliveryActivities(db, ChannelRegistry())
    email = delivery._message(row, user, "email")
    assert email.html is not None and email.to == "vic@example.org"
    link = next(line for line in email.text.splitlines() if "verdict=not_useful" in line).split(": ", 1)[1]
    assert "via=email" in link and link.replace("&", "&amp;") in email.html
    push = delivery._message(row, user, "push")
    actions = {a["action"]: a["url"] for a in push.payload["actions"]}
    assert set(actions) == {"useful", "not_useful", "too_many"} and "via=push" in actions["useful"]

    app = create_app(Settings(public_base_url=BASE), db, NoCache(), None)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://pulse.test"
    ) as http:
        assert (await http.get(_local(link))).status_code == 200
        with db.read() as s:
            stored = s.get(store.FeedbackRecord, req.notification_id)
            assert stored is not None and (stored.verdict, stored.channel) == ("not_useful", "email")
        assert (await http.get(_local(actions["useful"]))).status_code == 200
        with db.read() as s:
            stored = s.get(store.FeedbackRecord, req.notification_id)
            assert stored is not None and (stored.verdict, stored.channel) == ("useful", "push")


def _threshold_user(db: Database, user_id: str, digest: dict[str, Any] | None) -> None:
    now = datetime.now(UTC)
    with db.write() as s:
        s.add(store.NotifyUser(id=user_id, digest=digest, updated_at=now))
        s.flush()
        rule = {"id": "trust-50", "kind": "threshold", "metric": "trust", "level": "50", "cooldown_s": 600}
        s.add(
            store.Subscription(
                id=f"sub_{user_id}",
                user_id=user_id,
                target="collection",
                entity_key=COLLECTION,
                rules=[rule],
                created_at=now,
                updated_at=now,
            )
        )
        watching.replace_subscription_keys(s, f"sub_{user_id}", [COLLECTION])


def test_a_rule_without_a_width_goes_to_the_digest_or_cools_down_longer(db: Database) -> None:
    """threshold rules cannot widen: adapted, their non-critical alerts go to the user's digest, and for a
    user without a digest their cooldown grows (x1.5 of at least an hour)."""
    _threshold_user(db, "wyn", {"frequency": "daily", "at": "08:00:00"})
    _threshold_user(db, "xan", None)
    detection = DetectionActivities(db, ChannelRegistry(), public_base_url=BASE)
    now = datetime.now(UTC)

    def trust(before: str, after: str, n: int) -> dict[str, Any]:
        changes = ChangeSet.of([MetricChange(COLLECTION, "trust", before, after)])
        result = detection.detect(
            DetectInput(changes, (now + timedelta(hours=n)).isoformat(), cause=f"t@{n}")
        )
        return {r.user_id: r for r in result.notifications}

    fired = [trust("60", "40", 0), trust("40", "60", 1), trust("60", "40", 2), trust("40", "60", 3)]
    fired += [trust("60", "40", 4)]
    ids = {u: [f[u].notification_id for f in fired if u in f] for u in ("wyn", "xan")}
    assert len(ids["wyn"]) == 3 and all(f["wyn"].route == "now" for f in fired if "wyn" in f)
    for nids in ids.values():
        for i, nid in enumerate(nids):
            with db.write() as s:
                row = s.get(store.Notification, nid)
                assert row is not None
                feedback.record_verdict(s, row, "too_many", "in_app", now + timedelta(seconds=i))
    with db.read() as s:
        wyn, xan = s.get(store.Subscription, "sub_wyn"), s.get(store.Subscription, "sub_xan")
        assert wyn is not None and xan is not None
        assert feedback.adaptations(wyn)["trust-50"].mode == "digest"
        assert wyn.rules[0]["cooldown_s"] == 600  # the rule stays; its alerts are routed
        assert feedback.adaptations(xan)["trust-50"].mode == "cooldown"
        assert xan.rules[0]["cooldown_s"] == 5400 and xan.original_rules is not None
    trust("40", "60", 5)
    after = trust("60", "40", 6)
    assert after["wyn"].route == "digest"
    assert after["xan"].route == "now"
