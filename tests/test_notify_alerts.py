"""Alerts users want, end to end on real parts (API → dispatcher → Temporal pipeline → detection →
delivery, SQLite and Postgres): a fraud finding reaches everyone who watches or holds what it concerns,
naming the finding, again for a further finding and for its resolution; a creator's collection's floor
move reaches the creator's watchers; a watched wallet's trades, listings and transfers reach the wallet's
watchers. Each exactly once, on the users' channels, and nobody else."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from standardwebhooks.webhooks import Webhook

from nftpulse.domain.events import creator_key, wallet_key
from tests import test_notify_pipeline as base

# The running Pulse and the local webhook receiver of the notification pipeline's tests.
npulse = base.npulse
hooks = base.hooks

CONTRACT = "0x" + "e7" * 20
COLLECTION = f"collection:ethereum:{CONTRACT}"
CREATOR = "0x" + "c0" * 20
SELLER = "0x" + "5e" * 20  # carol watches this wallet
HOLDER = "0x" + "40" * 20  # dave's own wallet (his portfolio)
BUYER = "0x" + "b0" * 20
FLAGGED = "0x" + "f1" * 20
ZERO = "0x" + "0" * 40
SOURCE = "alerts"
#: A rule that never fires: the subscription is there to watch, not for this rule.
QUIET_RULE = {"kind": "threshold", "metric": "trust", "level": "0", "direction": "below"}
FLOOR_RULE = {"id": "floor-up", "kind": "threshold", "metric": "floor", "level": "0.5", "direction": "above"}

_CLOCK = itertools.count()


def _ev(eid: str, kind: str, data: dict[str, Any], token: str | None) -> dict[str, Any]:
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC) + timedelta(minutes=next(_CLOCK))
    event = {
        "id": eid,
        "source": SOURCE,
        "type": kind,
        "occurred_at": at.isoformat(),
        "chain": "ethereum",
        "contract": CONTRACT,
        "data": data,
    }
    if token is not None:
        event["token_id"] = token
    return event


async def _ingest(p: base.NotifyPulse, events: list[dict[str, Any]]) -> None:
    resp = await p.http.post("/v1/events", json={"events": events}, headers=p.auth("ingest"))
    assert resp.status_code == 202, resp.text
    for e in events:
        for _ in range(300):
            got = await p.http.get(f"/v1/events/{SOURCE}/{e['id']}", headers=p.auth("read"))
            if got.json()["status"] in ("processed", "failed"):
                assert got.json()["status"] == "processed", got.text
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"event {e['id']} not processed")


async def _watch(
    p: base.NotifyPulse, user: str, body: dict[str, Any], profile: dict[str, Any]
) -> dict[str, Any]:
    """Set the user's profile (its answer: the webhook secret shows once) and add the subscription."""
    resp = await p.http.put(f"/v1/users/{user}", json=profile, headers=p.auth("admin"))
    assert resp.status_code == 200, resp.text
    sub = await p.http.post(f"/v1/users/{user}/subscriptions", json=body, headers=p.auth("admin"))
    assert sub.status_code == 201, sub.text
    return dict(resp.json())


async def _items(p: base.NotifyPulse, user: str) -> list[dict[str, Any]]:
    resp = await p.http.get(f"/v1/users/{user}/notifications", params={"limit": 200}, headers=p.auth("admin"))
    assert resp.status_code == 200, resp.text
    return list(reversed(resp.json()["items"]))  # oldest first


def _finding(fid: str, token: str | None, severity: str, status: str = "open") -> dict[str, Any]:
    data = {
        "finding_id": fid,
        "kind": "wash_trading",
        "severity": severity,
        "status": status,
        "wallets": [FLAGGED],
        "detector": "chainabuse",
        "evidence": {"round_trips": 12, "window_days": 30},
    }
    return _ev(f"{fid}-{status}", "fraud_finding", data, token)


async def test_findings_creator_floor_and_wallet_sale_reach_exactly_their_watchers(
    npulse: base.NotifyPulse, hooks: base.Hooks
) -> None:
    p = npulse
    with_hook = {
        "channels": {"webhooks": [{"url": hooks.url}]},
        "preferences": {"default": ["in_app", "webhook"]},
    }
    alice_profile = await _watch(
        p, "alice", {"target": "collection", "entity_key": COLLECTION, "rules": [FLOOR_RULE]}, with_hook
    )
    secret = alice_profile["channels"]["webhooks"][0]["secret"]
    creator = creator_key("ethereum", CREATOR)
    await _watch(p, "bob", {"target": "creator", "entity_key": creator, "rules": [FLOOR_RULE]}, {})
    await _watch(
        p, "carol", {"target": "wallet", "entity_key": wallet_key(SELLER), "rules": [QUIET_RULE]}, {}
    )
    await _watch(p, "dave", {"target": "portfolio", "wallets": [HOLDER], "rules": [QUIET_RULE]}, {})
    other = "collection:ethereum:0x" + "99" * 20
    await _watch(p, "erin", {"target": "collection", "entity_key": other, "rules": [FLOOR_RULE]}, {})

    mint = {"from": ZERO, "creator": CREATOR}
    await _ingest(
        p,
        [
            _ev("m1", "mint", {**mint, "to": SELLER}, "1"),
            _ev("m2", "mint", {**mint, "to": HOLDER}, "2"),
        ],
    )
    await _ingest(p, [_ev("m3", "mint", {**mint, "to": SELLER}, "3")])
    # The creator's collection gets its first floor (1 ETH, past the 0.5 level of alice's and bob's rule).
    listing = {"seller": SELLER, "price": {"amount": "1", "currency": "ETH"}}
    await _ingest(p, [_ev("l3", "listing", listing, "3")])
    # The watched wallet sells token 1.
    sale = {"from": SELLER, "to": BUYER, "price": {"amount": "2", "currency": "ETH"}}
    await _ingest(p, [_ev("s1", "sale", sale, "1")])
    # A finding on dave's token, a further one on the whole collection, then the first one resolved.
    await _ingest(p, [_finding("F1", "2", "high")])
    await _ingest(p, [_finding("F2", None, "critical")])
    await _ingest(p, [_finding("F1", "2", "high", status="resolved")])

    async def settled() -> bool:
        counts = [len(await _items(p, u)) for u in ("alice", "bob", "carol", "dave")]
        return counts == [4, 4, 4, 2]

    await base._eventually(settled, 30)
    await asyncio.sleep(1.0)  # nothing more arrives: each reached its users once

    def kinds(items: list[dict[str, Any]]) -> Counter[str]:
        return Counter(i["kind"] for i in items)

    alice, bob = await _items(p, "alice"), await _items(p, "bob")
    carol, dave = await _items(p, "carol"), await _items(p, "dave")
    assert await _items(p, "erin") == []
    for items in (alice, bob):
        assert kinds(items) == {"price_movement": 1, "fraud_finding": 3}, items
        floor = next(i for i in items if i["kind"] == "price_movement")
        assert floor["entity_key"] == COLLECTION and floor["evidence"]["after"] == "1"
        findings = [i for i in items if i["kind"] == "fraud_finding"]
        assert [f["entity_key"] for f in findings] == [
            f"nft:ethereum:{CONTRACT}:2",
            COLLECTION,
            f"nft:ethereum:{CONTRACT}:2",
        ]
        assert [f["severity"] for f in findings] == ["warning", "critical", "info"]
        assert (
            "chainabuse" in findings[0]["body"]
            and "F1" in findings[0]["body"]
            and FLAGGED in findings[0]["body"]
        )
        assert findings[2]["title"].startswith("Resolved") and "F1" in findings[2]["title"]
    # Dave holds token 2 in his portfolio wallet: its finding and its resolution, not the collection's.
    assert kinds(dave) == {"fraud_finding": 2}
    assert [d["entity_key"] for d in dave] == [f"nft:ethereum:{CONTRACT}:2"] * 2
    # Carol watches the seller: two mints, the listing and the sale.
    assert kinds(carol) == {"wallet_activity": 4}
    sold = carol[-1]
    assert sold["entity_key"] == wallet_key(SELLER)
    assert sold["title"].startswith("Wallet") and "sold" in sold["title"] and "2" in sold["title"]

    # Alice's webhook names the finding: id, kind, severity, detector, wallets, evidence.
    async def hooked() -> list[dict[str, Any]] | None:
        payloads = [Webhook(secret).verify(raw, headers) for headers, raw in hooks.requests]
        found = [x for x in payloads if x["type"] == "notification.fraud_finding"]
        return found if len(found) == 3 else None

    payloads = await base._eventually(hooked, 30)
    first = next(
        x["data"]["finding"]
        for x in payloads
        if x["data"]["finding"]["status"] == "open" and x["data"]["finding"]["id"] == "F1"
    )
    assert first["category"] == "wash_trading" and first["severity"] == "high"
    assert first["detector"] == "chainabuse" and first["wallets"] == [FLAGGED]
    assert "round trips: 12" in first["evidence"]
    assert sorted((x["data"]["finding"]["id"], x["data"]["finding"]["status"]) for x in payloads) == [
        ("F1", "open"),
        ("F1", "resolved"),
        ("F2", "open"),
    ]
    assert len([h for h in hooks.requests]) == 4  # three findings and the floor move, each once
