"""A consumer's delivery through a worker killed with SIGKILL while the endpoint holds its request: Pulse's
real processes (``pulse api|worker|dispatcher``), a local receiver verifying signatures with
``standardwebhooks``. Nothing is lost; the interrupted change arrives again under the same webhook-id, and
the entity's later change only after it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from nftpulse.store import changes as changelog
from nftpulse.store.db import Database
from tests.conftest import local_http_server
from tests.notify.conftest import Receiver, Recorded, _handler
from tests.procs import PulseProcesses
from tests.test_consumers import NFT, SOURCE, ZERO, A, _ev, _finding, _verified

#: How long the endpoint holds the first request: the worker is killed meanwhile.
HOLD_S = 4.0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(url="")
    with local_http_server(_handler(rec)) as url:
        rec.url = url
        yield rec


async def _post(http: httpx.AsyncClient, *events: dict[str, Any], wait: bool = True) -> None:
    resp = await http.post("/v1/events", json={"events": list(events)})
    assert resp.status_code == 202, resp.text
    deadline = time.monotonic() + 60
    for event in events if wait else ():
        while (await http.get(f"/v1/events/{SOURCE}/{event['id']}")).json()["status"] != "processed":
            assert time.monotonic() < deadline, f"{event['id']} not processed"
            await asyncio.sleep(0.2)


async def _until(check: Any, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # processes share a server
async def test_a_worker_killed_mid_delivery_loses_nothing(
    database_url: str, temporal_client: Client, tmp_path: Path, receiver: Receiver
) -> None:
    held: list[str] = []

    def respond(rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        if not held:
            held.append(rec.headers["webhook-id"])
            time.sleep(HOLD_S)  # the receiver's own thread: the worker waits for this answer
        return 200, {}, b"{}"

    receiver.respond = respond
    procs = PulseProcesses(
        database_url,
        temporal_client.service_client.config.target_host,
        tmp_path / "logs",
        extra_env={"PULSE_ALLOW_PRIVATE_WEBHOOKS": "true"},
    )
    try:
        for part in ("api", "worker", "dispatcher"):
            procs.start(part)
        await asyncio.to_thread(procs.wait_ready)
        headers = {"Authorization": f"Bearer {procs.admin_key}"}
        async with httpx.AsyncClient(base_url=procs.api_url, headers=headers, timeout=10) as http:
            await _post(
                http, _ev("mint", "1", {"from": ZERO, "to": A}), _ev("mint", "2", {"from": ZERO, "to": A})
            )
            resp = await http.post(
                "/v1/consumers",
                json={"url": receiver.url + "/in", "prefixes": [f"{NFT}:"], "metrics": ["trust"]},
            )
            assert resp.status_code == 201, resp.text
            consumer = resp.json()
            start = int(consumer["cursor"])

            await _post(http, _finding("1"))
            await _until(lambda: bool(held), 30)
            await asyncio.to_thread(procs.kill, "worker")  # while the endpoint holds the request
            in_flight = {r.headers["webhook-id"] for r in receiver.requests}
            await _post(http, _finding("1"), wait=False)  # accepted while no worker runs
            procs.start("worker")

            db = Database(database_url)
            try:

                def expected() -> set[str]:
                    with db.read() as s:
                        return {str(c.cursor) for c in changelog.after(s, start, prefixes=[f"{NFT}:"])}

                def arrived() -> list[dict[str, Any]]:
                    return [_verified(consumer["secret"], r)["data"] for r in receiver.requests]

                await _until(
                    lambda: len(expected()) >= 4 and {d["cursor"] for d in arrived()} == expected(), 90
                )
            finally:
                db.dispose()
            await asyncio.sleep(1)
            ids = [r.headers["webhook-id"] for r in receiver.requests]
            # What was in flight when the worker died arrives again under its id (the held change at least:
            # its answer died with the worker); nothing else twice, nothing more than twice.
            assert ids.count(held[0]) == 2, ids
            again = {i for i in ids if ids.count(i) > 1}
            assert again <= in_flight and max(ids.count(i) for i in ids) == 2, (ids, in_flight)
            for key in {d["entity_key"] for d in arrived()}:
                cursors = [int(d["cursor"]) for d in arrived() if d["entity_key"] == key]
                assert cursors == sorted(cursors), (key, cursors)
            log = (await http.get(f"/v1/consumers/{consumer['id']}/deliveries")).json()["items"]
            assert {row["status"] for row in log} == {"delivered"} and len(log) == len(set(ids))
    finally:
        await asyncio.to_thread(procs.stop_all)
