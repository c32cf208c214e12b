"""Notifications of a retracted event, end to end on real Temporal (API → pipeline → detection → delivery):
a sale makes two users' rules fire; the sale is then retracted. The notification already delivered (in the
inbox) is followed by a correction naming the retracted event; the one still pending (deferred by quiet
hours) is cancelled, gets no correction, and its delivery sends nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, select
from temporalio.testing import ActivityEnvironment

from nftpulse.activities.contracts.notify import DeliverInput, DigestGroupOut, SendDigestInput
from nftpulse.activities.notify.delivery import DeliveryActivities
from nftpulse.activities.notify.digests import DigestActivities
from nftpulse.channels.registry import ChannelRegistry
from nftpulse.store import keys
from nftpulse.store.db import Database
from nftpulse.store.notify import Delivery, Notification, NotifyUser
from tests.conftest import RunningPulse

CONTRACT = "0x" + "ab" * 20
COLLECTION = f"collection:ethereum:{CONTRACT}"
SELLER, BUYER = "0x" + "1" * 40, "0x" + "2" * 40
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def event(eid: str, kind: str, data: dict[str, Any], minutes: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": eid,
        "source": "market",
        "type": kind,
        "occurred_at": (T0 + timedelta(minutes=minutes)).isoformat(),
        "chain": "ethereum",
        "contract": CONTRACT,
        "data": data,
        **extra,
    }


async def ingest(pulse: RunningPulse, body: dict[str, Any]) -> None:
    answer = await pulse.post([body])
    assert answer.status_code == 202, answer.text
    final = await pulse.wait_final([(body["source"], body["id"])])
    assert set(final.values()) == {"processed"}, final


async def subscribe(pulse: RunningPulse, user: str, profile: dict[str, Any]) -> None:
    auth = {"Authorization": f"Bearer {keys.create(pulse.db, user, [f'user:{user}'])}"}
    answer = await pulse.http.put(f"/v1/users/{user}", json=profile, headers=auth)
    assert answer.status_code == 200, answer.text
    rule = {"id": "volume-up", "kind": "threshold", "metric": "volume", "level": "1", "direction": "above"}
    answer = await pulse.http.post(
        f"/v1/users/{user}/subscriptions",
        json={"target": "collection", "entity_key": COLLECTION, "rules": [{**rule, "cooldown_s": 0}]},
        headers=auth,
    )
    assert answer.status_code == 201, answer.text


def notes(pulse: RunningPulse, user: str) -> list[Notification]:
    with pulse.db.read() as session:
        return list(
            session.exec(
                select(Notification).where(col(Notification.user_id) == user).order_by(col(Notification.id))
            )
        )


async def eventually(check: Any, limit_s: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not (value := check()):
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)
    return value


async def test_a_retracted_sale_cancels_what_is_pending_and_corrects_what_was_delivered(
    pulse: RunningPulse,
) -> None:
    await subscribe(pulse, "ada", {"locale": "en", "preferences": {"default": ["in_app"]}})
    # Quiet all day: ada's notification goes out at once, bea's waits for the morning.
    await subscribe(
        pulse,
        "bea",
        {
            "locale": "de",
            "timezone": "UTC",
            "quiet_hours": {"start": "00:00:00", "end": "23:59:59"},
            "preferences": {"default": ["in_app"]},
        },
    )
    await ingest(pulse, event("mint-1", "mint", {"to": SELLER}, 0, token_id="1"))
    sale = {"from": SELLER, "to": BUYER, "price": {"amount": "3", "currency": "ETH"}}
    await ingest(pulse, event("sale-1", "sale", sale, 5, token_id="1"))

    (delivered,) = await eventually(lambda: notes(pulse, "ada"))
    (pending,) = await eventually(lambda: notes(pulse, "bea"))
    assert delivered.inbox_at is not None
    assert pending.inbox_at is None and pending.not_before is not None

    retraction = event("sale-1~retracted", "retraction", {"retracts": {"id": "sale-1"}}, 6, token_id="1")
    await ingest(pulse, retraction)

    ada = await eventually(lambda: [n for n in notes(pulse, "ada") if n.kind == "correction" and n.inbox_at])
    (correction,) = ada
    assert correction.context["correction"]["retracted"] == ["market/sale-1"]
    assert correction.context["correction"]["notification_id"] == delivered.id
    assert correction.title.startswith("Correction:") and "market/sale-1" in correction.body
    inbox = await pulse.http.get(
        "/v1/users/ada/notifications",
        headers={"Authorization": f"Bearer {keys.create(pulse.db, 'ada2', ['user:ada'])}"},
    )
    assert inbox.status_code == 200 and any(i["kind"] == "correction" for i in inbox.json()["items"])

    (bea,) = notes(pulse, "bea")
    assert bea.context["cancelled"]["retracted"] == ["market/sale-1"]
    assert bea.inbox_at is None
    # When its deferred delivery comes due, nothing is sent.
    delivery = DeliveryActivities(pulse.db, ChannelRegistry())
    result = await ActivityEnvironment().run(delivery.deliver, DeliverInput(bea.id or 0, "in_app", 0))
    assert result.status == "cancelled"
    with pulse.db.read() as session:
        assert not list(session.exec(select(Delivery).where(col(Delivery.notification_id) == bea.id)))
        again = session.get(Notification, bea.id)
        assert again is not None and again.inbox_at is None

    # The same retraction again, and a second one: nothing more.
    await ingest(pulse, {**retraction, "id": "sale-1~again"})
    await asyncio.sleep(1)
    assert len([n for n in notes(pulse, "ada") if n.kind == "correction"]) == 1
    assert len(notes(pulse, "bea")) == 1


async def test_a_digest_leaves_out_items_whose_cause_was_retracted(db: Database) -> None:
    """A notification waiting in a digest when its cause is retracted is cancelled: the digest sends the
    others and does not put the cancelled one in the inbox; a digest of cancelled items only sends nothing."""
    now = datetime.now(UTC)
    with db.write() as s:
        s.add(NotifyUser(id="cy", updated_at=now))
        s.flush()
        rows = [
            Notification(
                idempotency_key=f"k{i}",
                user_id="cy",
                kind="market_update",
                severity="info",
                entity_key=COLLECTION,
                title=f"item {i}",
                route="digest",
                context={"cancelled": {"retracted": ["market/sale-1"], "at": now.isoformat()}} if i else {},
                created_at=now,
            )
            for i in range(2)
        ]
        s.add_all(rows)
        s.flush()
        ids = [r.id or 0 for r in rows]
    digests = DigestActivities(db, ChannelRegistry())

    def group(members: list[int]) -> DigestGroupOut:
        return DigestGroupOut("market_update", COLLECTION, "info", ["t"] * len(members), members)

    result = await digests.send_digest(SendDigestInput("cy", "dgst_1", "schedule", [group(ids)]))
    assert result.channels == ["in_app"]
    with db.read() as s:
        kept, cancelled = (s.get(Notification, i) for i in ids)
        assert kept is not None and kept.inbox_at is not None
        assert cancelled is not None and cancelled.inbox_at is None
    only = digests._load(SendDigestInput("cy", "dgst_2", "schedule", [group([ids[1]])]))
    assert only is not None and only[1] is None  # nothing left to show: nothing is sent


async def test_a_malformed_retraction_is_a_422_naming_the_field(pulse: RunningPulse) -> None:
    for data, field in (
        ({}, "retracts"),
        ({"retracts": {}}, "retracts.id"),
        ({"retracts": {"id": ""}}, "retracts.id"),
    ):
        answer = await pulse.post([event("r-bad", "retraction", data, 0)])
        assert answer.status_code == 422, answer.text
        fields = [e["field"] for e in answer.json()["errors"]]
        assert any(f.endswith(f"data.{field}") for f in fields), fields
    assert (
        await pulse.post([event("r-ok", "retraction", {"retracts": {"id": "never-seen"}}, 0)])
    ).status_code == 202
    assert (await pulse.wait_final([("market", "r-ok")])) == {("market", "r-ok"): "processed"}
