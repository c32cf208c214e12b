"""A dependency outage degrades service without losing accepted events: stop Temporal in the middle of a
stream, keep ingesting, start it again, and everything ends processed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from temporalio.client import Client

from nftpulse.dispatcher import Dispatcher
from nftpulse.store import events as event_store
from nftpulse.store.db import Database
from nftpulse.synth import Stream
from nftpulse.temporal import DevServer
from nftpulse.verify import verify
from tests.conftest import RunningPulse, run_pulse
from tests.ports import free_port
from tests.procs import PulseProcesses


async def test_temporal_outage_loses_nothing(database_url: str, tmp_path: Path) -> None:
    # A server of its own, persisting to a file, so that stopping it does not disturb other tests.
    dev = DevServer(
        "127.0.0.1", free_port(), free_port(), tmp_path / "temporal.db", tmp_path / "temporal.log"
    )
    dev.start()  # from the main thread (see DevServer)
    procs = PulseProcesses(database_url, dev.address, tmp_path / "logs")
    stream = Stream(collections=3, tokens_per_collection=30, seed=5, source="outage")
    batches = [list(stream.mints()), *[stream.take(100) for _ in range(6)]]
    total = sum(len(b) for b in batches)
    for part in ("api", "worker", "dispatcher"):
        procs.start(part)
    db = Database(database_url)
    try:
        await asyncio.to_thread(procs.wait_ready)
        async with httpx.AsyncClient(
            base_url=procs.api_url, headers={"Authorization": f"Bearer {procs.admin_key}"}, timeout=30
        ) as http:
            for i, batch in enumerate(batches):
                if i == 2:
                    await asyncio.to_thread(dev.stop)
                    ready = await http.get("/readyz")
                    assert ready.status_code == 503 and ready.json()["checks"]["temporal"] is False
                resp = await http.post("/v1/events", json={"events": batch})
                assert resp.status_code == 202, resp.text  # ingest does not need Temporal
            await asyncio.sleep(2)
            dev.start()  # from the main thread (see DevServer)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                counts = event_store.status_counts(db)
                if counts.get("processed", 0) >= total:
                    break
                await asyncio.sleep(0.5)
            assert event_store.status_counts(db) == {"processed": total}
            assert (await asyncio.to_thread(verify, db)).ok
    finally:
        await asyncio.to_thread(procs.stop_all)
        await asyncio.to_thread(dev.stop)
        db.dispose()


def _mint(eid: str, token: int) -> dict[str, object]:
    return {
        "id": eid,
        "source": "handoff",
        "type": "mint",
        "occurred_at": "2026-11-01T10:00:00Z",
        "chain": "ethereum",
        "contract": "0x" + "5e" * 20,
        "token_id": str(token),
        "data": {"from": "0x" + "0" * 40, "to": "0x" + "a" * 40},
    }


async def _processed_within(pulse: RunningPulse, eid: str, seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if (await pulse.status("handoff", eid))["status"] == "processed":
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_successor_dispatcher_sends_the_wakes_a_killed_one_deferred(
    database_url: str, temporal_client: Client
) -> None:
    """A dispatcher conflates a shard's wakes and holds the next one back for the wake interval; killed
    then, the wake it held is not lost with its memory: the next dispatcher sends it at start, not after
    the sweep's minute."""
    async with run_pulse(database_url, temporal_client, dispatcher=False) as pulse:
        pulse.settings.partition_wake_interval_s = 120
        first = Dispatcher(pulse.settings, pulse.db, pulse.client)
        assert (await pulse.post(_mint("m1", 1))).status_code == 202
        assert await first.tick() == 1  # the shard's first wake goes at once
        assert await _processed_within(pulse, "m1", 20)
        assert (await pulse.post(_mint("m2", 2))).status_code == 202
        assert await first.tick() == 1  # routed and dispatched, its wake deferred ...
        assert not await _processed_within(pulse, "m2", 1)
        del first  # ... and the dispatcher dies (its memory with it)

        successor = Dispatcher(pulse.settings, pulse.db, pulse.client)
        await successor.tick()
        assert await _processed_within(pulse, "m2", 10), "the deferred wake was lost with its dispatcher"
