"""Events that wait for what they need, on the real Temporal dev server and SQLite and Postgres: a sale priced
in a currency without a rate is parked (``waiting``, with the reason, in its status and in ops), applied by
itself once a rate of the pair arrives (in chain order, across a restart of every process), and fails
visibly, replayably, only after ``PULSE_WAIT_MAX_SECONDS``."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from temporalio.client import Client

from nftpulse.verify import verify
from tests.conftest import RunningPulse, replay_under_sandbox, run_pulse
from tests.test_pipeline import ALICE, BOB, CAROL, CONTRACT, ZERO, ev

USDC_SALES = [
    ev("m1", "mint", {"from": ZERO, "to": ALICE}, "1", block=1),
    # Two sales of one token, both before any USDC/ETH rate: Alice to Bob, then Bob to Carol.
    ev(
        "u1",
        "sale",
        {"from": ALICE, "to": BOB, "price": {"amount": "2500", "currency": "USDC"}},
        "1",
        block=2,
        at="2026-11-01T11:00:00Z",
    ),
    ev(
        "u2",
        "sale",
        {"from": BOB, "to": CAROL, "price": {"amount": "5000", "currency": "USDC"}},
        "1",
        block=3,
        at="2026-11-01T12:00:00Z",
    ),
]
TICK = {
    "id": "rate1",
    "source": "test",
    "type": "price_tick",
    # Quoted after both sales: a pair's first quote values what waited for it.
    "occurred_at": "2026-11-01T13:00:00Z",
    "chain": "ethereum",
    "contract": "0x" + "cd" * 20,
    "data": {"pair": "ETH/USDC", "rate": "2500"},
}


async def until(
    pulse: RunningPulse, ref: tuple[str, str], status: str, limit_s: float = 60
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        body = await pulse.status(*ref)
        if body["status"] == status:
            return body
        assert asyncio.get_running_loop().time() < deadline, f"{ref} still {body['status']}: {body}"
        await asyncio.sleep(0.1)


async def nft(pulse: RunningPulse, token: str) -> dict[str, Any]:
    resp = await pulse.http.get(f"/v1/nfts/ethereum/{CONTRACT}/{token}", headers=pulse.keys.auth("read"))
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def test_a_sale_waits_for_its_rate_and_is_applied_when_it_arrives(
    database_url: str, temporal_client: Client
) -> None:
    async with run_pulse(database_url, temporal_client, wait_max_seconds=3600) as pulse:
        assert (await pulse.post(USDC_SALES)).status_code == 202
        await pulse.wait_final([("test", "m1")])
        for ref in (("test", "u1"), ("test", "u2")):
            waiting = await until(pulse, ref, "waiting")
            assert waiting["waiting_for"] == "rate:USDC/ETH" and waiting["waiting_since"]
            assert "USDC/ETH" in waiting["error"] and waiting["error_category"] == "waiting"
        ops = (await pulse.http.get("/v1/ops/failures", headers=pulse.keys.auth("admin"))).json()
        assert ops["items"] == []
        assert [(w["id"], w["waiting_for"]) for w in ops["waiting"]] == [
            ("u1", "rate:USDC/ETH"),
            ("u2", "rate:USDC/ETH"),
        ]
        assert all(w["fails_at"] > w["waiting_since"] for w in ops["waiting"])
        # Nothing of the waiting sales is in the state yet.
        assert (await nft(pulse, "1"))["owner"] == ALICE
        task_queue = pulse.task_queue

    # Every process stops and new ones start: the waiting is in the database, not in anyone's memory.
    async with run_pulse(database_url, temporal_client, wait_max_seconds=3600) as pulse:
        assert (await pulse.status("test", "u1"))["status"] == "waiting"
        # The inverse pair releases them too (ETH/USDC at 2500 is USDC/ETH at 0.0004).
        assert (await pulse.post(TICK)).status_code == 202
        final = await pulse.wait_final([("test", "rate1"), ("test", "u1"), ("test", "u2")])
        assert set(final.values()) == {"processed"}
        view = await nft(pulse, "1")
        # Applied in chain order: Carol owns it and the last sale is the later one.
        assert view["owner"] == CAROL
        assert view["last_sale"]["paid"] == {"amount": "5000", "currency": "USDC"}
        assert Decimal(view["last_sale"]["price"]) == Decimal("2")
        coll = (
            await pulse.http.get(f"/v1/collections/ethereum/{CONTRACT}", headers=pulse.keys.auth("read"))
        ).json()
        assert Decimal(coll["volume"]) == Decimal("3") and coll["sales_count"] == 2
        status = await pulse.status("test", "u1")
        assert status["waiting_for"] is None and status["error"] is None
        assert verify(pulse.db).ok
        replayed = await replay_under_sandbox(pulse.client, pulse.task_queue)
        replayed |= await replay_under_sandbox(pulse.client, task_queue)
        assert any("/shard/" in w for w in replayed)


async def test_a_wait_past_its_limit_fails_visibly_and_replays(
    database_url: str, temporal_client: Client
) -> None:
    async with run_pulse(database_url, temporal_client, wait_max_seconds=1.5) as pulse:
        assert (await pulse.post(USDC_SALES[:2])).status_code == 202
        await until(pulse, ("test", "u1"), "waiting")
        failed = await until(pulse, ("test", "u1"), "failed", limit_s=30)
        assert failed["error_category"] == "unpriced" and "USDC/ETH" in failed["error"]
        # Failed in a workflow of its own, listed with the other failures, no longer waiting.
        assert failed["workflow_id"] == f"{pulse.settings.workflow_id_prefix}event/test/u1"
        ops = (await pulse.http.get("/v1/ops/failures", headers=pulse.keys.auth("admin"))).json()
        assert [f["id"] for f in ops["items"]] == ["u1"] and ops["waiting"] == []
        # The rate arrives later; a replay of the failure applies it.
        assert (await pulse.post(TICK)).status_code == 202
        await pulse.wait_final([("test", "rate1")])
        assert (await pulse.status("test", "u1"))["status"] == "failed"
        replay = await pulse.http.post(
            "/v1/ops/failures",
            json={"action": "retry", "seqs": [ops["items"][0]["seq"]]},
            headers=pulse.keys.auth("admin"),
        )
        assert replay.status_code == 200, replay.text
        final = await pulse.wait_final([("test", "u1")])
        assert final[("test", "u1")] == "processed"
        assert (await nft(pulse, "1"))["owner"] == BOB
        replayed = await replay_under_sandbox(pulse.client, pulse.task_queue)
        assert failed["workflow_id"] in replayed
