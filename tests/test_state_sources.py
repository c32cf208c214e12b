"""ERC-1155 balances, offers and attention through the whole pipeline (API → Temporal → books → reads, the
change feed, detection and the inbox), on the real dev server and SQLite and Postgres."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from temporalio.client import Client

from nftpulse.store import changes as changelog
from nftpulse.store import keys
from nftpulse.verify import verify
from tests.conftest import RunningPulse, run_pulse
from tests.test_pipeline import ALICE, BOB, CAROL, CONTRACT, ZERO, eth, ev

COLLECTION = f"collection:ethereum:{CONTRACT}"
MULTI = {"standard": "erc1155"}


async def read(pulse: RunningPulse, path: str) -> dict[str, Any]:
    resp = await pulse.http.get(path, headers=pulse.keys.auth("read"))
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def ingest(pulse: RunningPulse, stream: list[dict[str, Any]]) -> None:
    assert (await pulse.post(stream)).status_code == 202
    final = await pulse.wait_final([("test", e["id"]) for e in stream])
    assert set(final.values()) == {"processed"}, final


async def test_balances_offers_and_attention_reach_reads_feed_and_rules(
    database_url: str, temporal_client: Client
) -> None:
    async with run_pulse(database_url, temporal_client) as pulse:
        user = keys.create(pulse.db, "alice", ["user:alice"])
        auth = {"Authorization": f"Bearer {user}"}
        profile = {"locale": "en", "timezone": "UTC", "preferences": {"default": ["in_app"]}}
        assert (await pulse.http.put("/v1/users/alice", json=profile, headers=auth)).status_code == 200
        rule = {"id": "buzz", "kind": "threshold", "metric": "attention", "level": "5", "direction": "above"}
        resp = await pulse.http.post(
            "/v1/users/alice/subscriptions",
            json={"target": "collection", "entity_key": COLLECTION, "rules": [rule]},
            headers=auth,
        )
        assert resp.status_code == 201, resp.text

        await ingest(
            pulse,
            [
                ev("m1", "mint", {"from": ZERO, "to": ALICE, "quantity": 10, **MULTI}, "5", block=1),
                ev("t1", "transfer", {"from": ALICE, "to": BOB, "quantity": 4, **MULTI}, "5", block=2),
                ev(
                    "s1",
                    "sale",
                    {"from": BOB, "to": CAROL, "quantity": 1, "price": eth("3"), **MULTI},
                    "5",
                    block=3,
                ),
                ev("m2", "mint", {"from": ZERO, "to": ALICE}, "6", block=4),
                ev("l1", "listing", {"seller": ALICE, "price": eth("1")}, "6", block=5),
                ev("b1", "bid", {"bidder": BOB, "price": eth("1.4")}, "6", block=6),
                ev("b2", "bid", {"bidder": CAROL, "price": eth("1.1")}, None, block=7),
            ],
        )
        multi = await read(pulse, f"/v1/nfts/ethereum/{CONTRACT}/5")
        assert multi["owner"] is None
        assert multi["balances"]["top_holders"] == [
            {"wallet": ALICE, "quantity": 6},
            {"wallet": BOB, "quantity": 3},
            {"wallet": CAROL, "quantity": 1},
        ]
        single = await read(pulse, f"/v1/nfts/ethereum/{CONTRACT}/6")
        assert single["owner"] == ALICE and "balances" not in single
        assert (single["best_offer"]["price"], single["best_offer"]["scope"]) == ("1.4", "token")
        assert Decimal(single["price_estimate"]["low"]) >= Decimal("1.4")
        coll = await read(pulse, f"/v1/collections/ethereum/{CONTRACT}")
        assert coll["holders_count"] == 3 and coll["best_offer"]["bidder"] == CAROL
        assert coll["attention"] == 0.0

        signal = {"platform": "x", "metric": "mentions", "value": 900.0, "weight": 3.0}
        await ingest(
            pulse,
            [
                ev("x1", "social_signal", signal, None, block=8, at="2026-11-01T10:01:00Z"),
                ev("x2", "social_signal", signal, None, block=9, at="2026-11-01T10:02:00Z"),
            ],
        )
        coll = await read(pulse, f"/v1/collections/ethereum/{CONTRACT}")
        assert 5.9 < coll["attention"] <= 6.0

        # In the change feed, with what moved it.
        with pulse.db.read() as session:
            logged = changelog.after(session, 0, limit=1000, keys=[COLLECTION])
        moves = [c.changes["attention"] for c in logged if "attention" in c.changes]
        assert moves and moves[-1][1] == coll["attention"], moves

        # The rule on attention fired.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            inbox = (await pulse.http.get("/v1/users/alice/notifications", headers=auth)).json()["items"]
            if inbox:
                break
            assert asyncio.get_running_loop().time() < deadline, "no notification for attention"
            await asyncio.sleep(0.2)
        assert any("attention" in str(item) for item in inbox), inbox
        assert verify(pulse.db).ok
