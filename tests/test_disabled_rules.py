"""A subscription whose rule raises in detection is disabled, visibly and durably: its status, reason and
time in the subscription API and in /v1/ops/failures; other users' subscriptions on the same entity keep
being notified; updating the rules validates them again and re-enables it. Through the real Temporal dev
server and worker, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from temporalio.client import Client

from nftpulse.store import keys, watching
from nftpulse.store import notify as notify_store
from tests.conftest import RunningPulse, run_pulse

CONTRACT = "0x" + "d1" * 20
COLLECTION = f"collection:ethereum:{CONTRACT}"
OWNER = "0x" + "a1" * 20
FLOOR_20 = {"id": "floor-20", "kind": "relative_change", "metric": "floor", "pct": 0.2, "cooldown_s": 0}
#: As a rule stored by a version that accepted it: it no longer parses, so detection raises on it.
BROKEN = {"id": "bad", "kind": "relative_change", "metric": "floor", "pct": "x"}
_clock = itertools.count()


def _ev(eid: str, kind: str, token: str, data: dict[str, Any]) -> dict[str, Any]:
    at = datetime(2026, 11, 1, 10, 0, tzinfo=UTC) + timedelta(minutes=next(_clock))
    return {
        "id": eid,
        "source": "rules",
        "type": kind,
        "occurred_at": at.isoformat(),
        "chain": "ethereum",
        "contract": CONTRACT,
        "token_id": token,
        "data": data,
    }


def _listing(eid: str, token: str, price: str) -> dict[str, Any]:
    return _ev(eid, "listing", token, {"seller": OWNER, "price": {"amount": price, "currency": "ETH"}})


async def _ingest(pulse: RunningPulse, events: list[dict[str, Any]]) -> None:
    assert (await pulse.post(events)).status_code == 202
    final = await pulse.wait_final([("rules", e["id"]) for e in events])
    assert set(final.values()) == {"processed"}, final


async def _inbox(http: httpx.AsyncClient, user: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    resp = await http.get(f"/v1/users/{user}/notifications", headers=auth)
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]  # type: ignore[no-any-return]


async def _eventually_inbox(
    http: httpx.AsyncClient, user: str, auth: dict[str, str], n: int
) -> list[dict[str, Any]]:
    for _ in range(300):
        items = await _inbox(http, user, auth)
        if len(items) >= n:
            return items
        await asyncio.sleep(0.1)
    raise AssertionError(f"{user} has {len(items)} notifications, not {n}")


async def test_a_failing_rule_disables_its_subscription_until_updated(
    database_url: str, temporal_client: Client
) -> None:
    async with run_pulse(database_url, temporal_client) as pulse:
        http, admin = pulse.http, pulse.keys.auth("admin")
        auth = {
            u: {"Authorization": f"Bearer {keys.create(pulse.db, u, [f'user:{u}'])}"}
            for u in ("alice", "mallory")
        }
        subs: dict[str, str] = {}
        for user in ("alice", "mallory"):
            assert (await http.put(f"/v1/users/{user}", json={}, headers=auth[user])).status_code == 200
            resp = await http.post(
                f"/v1/users/{user}/subscriptions",
                json={"target": "collection", "entity_key": COLLECTION, "rules": [FLOOR_20]},
                headers=auth[user],
            )
            assert resp.status_code == 201, resp.text
            assert resp.json()["status"] == "active" and resp.json()["disabled_reason"] is None
            subs[user] = resp.json()["id"]
        with pulse.db.write() as s:
            row = s.get(notify_store.Subscription, subs["mallory"])
            assert row is not None
            row.rules = [BROKEN]
            s.add(row)
            watching.replace_subscription_keys(s, row.id, [COLLECTION])

        await _ingest(pulse, [_ev(f"m{i}", "mint", str(i), {"to": OWNER}) for i in range(1, 5)])
        await _ingest(pulse, [_listing("l1", "1", "10")])
        await _ingest(pulse, [_listing("l2", "2", "7.5")])  # -25 %: both rules meet it

        # Alice is told; Mallory's subscription is disabled in the same detection, and says why.
        assert [n["rule_id"] for n in await _eventually_inbox(http, "alice", auth["alice"], 1)] == [
            "floor-20"
        ]
        mine = (
            await http.get(f"/v1/users/mallory/subscriptions/{subs['mallory']}", headers=auth["mallory"])
        ).json()
        assert mine["status"] == "disabled", mine
        assert mine["disabled_reason"].startswith("rule bad failed in detection: pct: "), mine
        assert mine["disabled_at"] and mine["invalid_rules"][0]["id"] == "bad" and mine["rules"] == []
        listed = (await http.get("/v1/users/mallory/subscriptions", headers=auth["mallory"])).json()["items"]
        assert [x["status"] for x in listed] == ["disabled"]
        ops = (await http.get("/v1/ops/failures", headers=admin)).json()
        assert [(x["subscription_id"], x["user_id"]) for x in ops["subscriptions"]] == [
            (subs["mallory"], "mallory")
        ]
        assert ops["subscriptions"][0]["reason"] == mine["disabled_reason"]
        assert await _inbox(http, "mallory", auth["mallory"]) == []

        # Disabled durably: detection no longer reads it (so it fails no more), Alice's still watches.
        with pulse.db.read() as s:
            row = s.get(notify_store.Subscription, subs["mallory"])
            assert row is not None and row.disabled_at is not None
            assert [w.subscription_id for w in watching.watch_entries(s, [COLLECTION])] == [subs["alice"]]

        # Updating the rules validates them again and re-enables it: the next move reaches Mallory.
        invalid = await http.patch(
            f"/v1/users/mallory/subscriptions/{subs['mallory']}",
            json={"rules": [BROKEN]},
            headers=auth["mallory"],
        )
        assert invalid.status_code == 422 and "rules.0.pct" in invalid.text
        fixed = await http.patch(
            f"/v1/users/mallory/subscriptions/{subs['mallory']}",
            json={"rules": [FLOOR_20]},
            headers=auth["mallory"],
        )
        assert fixed.status_code == 200, fixed.text
        assert (fixed.json()["status"], fixed.json()["disabled_reason"], fixed.json()["disabled_at"]) == (
            "active",
            None,
            None,
        )
        assert (await http.get("/v1/ops/failures", headers=admin)).json()["subscriptions"] == []
        await _ingest(pulse, [_listing("l3", "3", "5")])  # 7.5 -> 5: -33 %
        told = await _eventually_inbox(http, "mallory", auth["mallory"], 1)
        assert [n["rule_id"] for n in told] == ["floor-20"]
