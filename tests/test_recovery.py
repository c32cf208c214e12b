"""A dependency outage degrades service without losing accepted events: stop Temporal in the middle of a
stream, keep ingesting, start it again, and everything ends processed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from nftpulse.store import events as event_store
from nftpulse.store.db import Database
from nftpulse.synth import Stream
from nftpulse.temporal import DevServer
from nftpulse.verify import verify
from tests.conftest import free_port
from tests.procs import PulseProcesses


async def test_temporal_outage_loses_nothing(database_url: str, tmp_path: Path) -> None:
    # A server of its own, persisting to a file, so that stopping it does not disturb other tests.
    dev = DevServer(
        "127.0.0.1", free_port(), free_port(), tmp_path / "temporal.db", tmp_path / "temporal.log"
    )
    await asyncio.to_thread(dev.start)
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
            await asyncio.to_thread(dev.start)
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
