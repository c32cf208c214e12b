"""Time without events, end to end on Temporal's time-skipping test server: a quiet collection's cheapest
listing expires, Pulse's clock (``workflows.clock``) appends a clock event at that instant, the floor
moves through the normal pipeline, a subscribed user is notified, and the stored state equals a
recompute of the log."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from nftpulse.store import clocks, keys
from nftpulse.store import events as event_store
from nftpulse.verify import verify
from tests.conftest import RunningPulse, run_pulse


def _test_server() -> str | None:
    return shutil.which("temporal-test-server") or next(
        (str(p) for p in [Path(sys.executable).parent / "temporal-test-server"] if p.exists()), None
    )


pytestmark = pytest.mark.skipif(_test_server() is None, reason="temporal-test-server not installed")

CONTRACT = "0x" + "5e" * 20
COLLECTION = f"collection:ethereum:{CONTRACT}"
ALICE_WALLET = "0x" + "a1" * 20
BOB_WALLET = "0x" + "b2" * 20


@pytest_asyncio.fixture
async def skipping() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=_test_server())
    try:
        yield env
    finally:
        await env.shutdown()


def _ev(eid: str, kind: str, at: datetime, token: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": eid,
        "source": "clocktest",
        "type": kind,
        "occurred_at": at.isoformat(),
        "chain": "ethereum",
        "contract": CONTRACT,
        "token_id": token,
        "data": data,
    }


async def _collection(p: RunningPulse) -> dict[str, Any]:
    resp = await p.http.get(f"/v1/collections/ethereum/{CONTRACT}", headers=p.keys.auth("read"))
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def _until(check: Any, limit_s: float = 60.0) -> Any:
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_a_listing_expires_on_a_quiet_collection(
    skipping: WorkflowEnvironment, database_url: str
) -> None:
    env = skipping
    async with run_pulse(database_url, env.client) as p:
        alice = {"Authorization": f"Bearer {keys.create(p.db, 'alice', ['user:alice'])}"}
        read = p.keys.auth("read")
        profile = {"locale": "en", "timezone": "UTC", "preferences": {"default": ["in_app"]}}
        assert (await p.http.put("/v1/users/alice", json=profile, headers=alice)).status_code == 200
        rule = {"id": "floor-20", "kind": "relative_change", "metric": "floor", "pct": 0.2}
        resp = await p.http.post(
            "/v1/users/alice/subscriptions",
            json={"target": "collection", "entity_key": COLLECTION, "rules": [rule]},
            headers=alice,
        )
        assert resp.status_code == 201, resp.text

        now = await env.get_current_time()
        expires = now + timedelta(hours=1)
        one, two = {"amount": "1", "currency": "ETH"}, {"amount": "2", "currency": "ETH"}
        batch = [
            _ev("m1", "mint", now, "1", {"from": "0x" + "0" * 40, "to": ALICE_WALLET}),
            _ev("m2", "mint", now, "2", {"from": "0x" + "0" * 40, "to": ALICE_WALLET}),
            _ev("l2", "listing", now, "2", {"seller": ALICE_WALLET, "price": two}),
            _ev(
                "l1",
                "listing",
                now,
                "1",
                {"seller": ALICE_WALLET, "price": one, "expires_at": expires.isoformat()},
            ),
        ]
        assert (await p.post(batch)).status_code == 202
        final = await p.wait_final([("clocktest", e["id"]) for e in batch])
        assert set(final.values()) == {"processed"}

        assert (await _collection(p))["floor"] == "1"

        # An hour passes with no event at all.
        await env.sleep(timedelta(hours=1, minutes=1))

        async def floor_moved() -> bool:
            return (await _collection(p))["floor"] == "2"

        await _until(floor_moved)
        tick = event_store.get(p.db, clocks.CLOCK_SOURCE, f"{COLLECTION}@{expires.isoformat()}")
        assert tick is not None and tick.type == "clock" and tick.status == "processed"
        nft = (await p.http.get(f"/v1/nfts/ethereum/{CONTRACT}/1", headers=read)).json()
        assert nft["active_listing"] is None

        async def notified() -> list[dict[str, Any]]:
            resp = await p.http.get("/v1/users/alice/notifications", headers=alice)
            assert resp.status_code == 200, resp.text
            return [i for i in resp.json()["items"] if i["rule_id"] == "floor-20"]  # type: ignore[no-any-return]

        items = await _until(notified)
        assert items[0]["kind"] == "price_movement"
        assert items[0]["evidence"]["before"] == "1" and items[0]["evidence"]["after"] == "2"
        report = await asyncio.to_thread(verify, p.db)
        assert report.ok, report.differences[:5]


async def test_a_collection_offer_expires_on_a_quiet_collection(
    skipping: WorkflowEnvironment, database_url: str
) -> None:
    env = skipping
    async with run_pulse(database_url, env.client) as p:
        read = p.keys.auth("read")
        now = await env.get_current_time()
        expires = now + timedelta(minutes=30)
        offer = {"amount": "0.7", "currency": "ETH"}
        batch = [
            _ev("m1", "mint", now, "1", {"from": "0x" + "0" * 40, "to": ALICE_WALLET}),
            _ev(
                "l1",
                "listing",
                now,
                "1",
                {"seller": ALICE_WALLET, "price": {"amount": "1", "currency": "ETH"}},
            ),
            # A collection offer (no token), standing for half an hour.
            {
                **_ev(
                    "b1",
                    "bid",
                    now,
                    "1",
                    {"bidder": BOB_WALLET, "price": offer, "expires_at": expires.isoformat()},
                ),
                "token_id": None,
            },
            # And a higher offer on the token itself, lapsing at the same instant: the token's view shows
            # it, so the clock event rewrites that view though it names no token.
            _ev(
                "b2",
                "bid",
                now,
                "1",
                {
                    "bidder": BOB_WALLET,
                    "price": {"amount": "0.8", "currency": "ETH"},
                    "expires_at": expires.isoformat(),
                },
            ),
        ]
        assert (await p.post(batch)).status_code == 202
        final = await p.wait_final([("clocktest", e["id"]) for e in batch])
        assert set(final.values()) == {"processed"}

        assert (await _collection(p))["best_offer"]["price"] == "0.7"
        nft = (await p.http.get(f"/v1/nfts/ethereum/{CONTRACT}/1", headers=read)).json()
        assert nft["best_offer"]["price"] == "0.8" and nft["best_offer"]["scope"] == "token"

        # Half an hour passes with no event at all; the listing stands, only the offers lapse.
        await env.sleep(timedelta(minutes=31))

        async def offer_gone() -> bool:
            return (await _collection(p))["best_offer"] is None

        await _until(offer_gone)
        tick = event_store.get(p.db, clocks.CLOCK_SOURCE, f"{COLLECTION}@{expires.isoformat()}")
        assert tick is not None and tick.type == "clock" and tick.status == "processed"
        nft = (await p.http.get(f"/v1/nfts/ethereum/{CONTRACT}/1", headers=read)).json()
        assert nft["best_offer"] is None and nft["active_listing"] is not None
        report = await asyncio.to_thread(verify, p.db)
        assert report.ok, report.differences[:5]
