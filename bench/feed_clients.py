"""Benchmark: many concurrent live-feed clients (``GET /v1/stream``), change → client latency.

Run ``python -m bench.feed_clients [--clients 1000] [--changes 40] [--interval 0.25] [--database-url URL]``;
prints JSON. The API runs in a child process (uvicorn, as ``pulse api`` serves it) against a fresh
database (SQLite in a temporary directory unless ``--database-url`` names a Postgres one). This process
opens ``--clients`` server-sent-event connections (each following every NFT, ``prefix=nft:``), waits
until all are subscribed, then appends one change-log row every ``--interval`` seconds in its own
transaction, as recalculation does, noting when each committed. Each client notes when each change
arrives; latency is arrival minus commit, over every (client, change) pair. Delivered is the share of
pairs that arrived at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from nftpulse.domain.changes import MetricChange
from nftpulse.store import changes as changelog
from nftpulse.store import keys, schema
from nftpulse.store.db import Database
from tests.ports import free_port


def _serve(database_url: str, port: int) -> None:
    import uvicorn

    from nftpulse.api.app import create_app
    from nftpulse.core.settings import Settings
    from nftpulse.store.cache import NoCache

    db = Database(database_url)
    app = create_app(Settings(database_url=database_url), db, NoCache(), None)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=4096)


async def _client(port: int, key: str, arrivals: dict[int, float], ready: asyncio.Event) -> None:
    """One feed client on a bare connection (an HTTP client library would cost this process more than the
    server it measures): sends the request, then notes the arrival of every ``id:`` line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        "GET /v1/stream?prefix=nft:&max_s=3600 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"stream refused: {status!r}")
    try:
        while line := await reader.readline():
            if line.startswith(b"retry:"):
                ready.set()
            elif line.startswith(b"id: "):
                arrivals[int(line[4:])] = time.time()
    finally:
        writer.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(clients: int, changes: int, interval: float, database_url: str) -> dict[str, Any]:
    db = Database(database_url)
    schema.upgrade(db)
    key = keys.create(db, "bench-feed", ["read"])
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(database_url, port), daemon=True
    )
    server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=None) as probe:
            for _ in range(200):
                try:
                    if (await probe.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        arrivals: list[dict[int, float]] = [{} for _ in range(clients)]
        readies = [asyncio.Event() for _ in range(clients)]
        connect_started = time.perf_counter()
        tasks = [asyncio.create_task(_client(port, key, arrivals[i], readies[i])) for i in range(clients)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), timeout=600)
        connect_s = time.perf_counter() - connect_started
        print(f"{clients} clients subscribed in {connect_s:.1f} s", file=sys.stderr)
        await asyncio.sleep(1.0)  # every stream's subscription registered behind its first line
        committed: dict[int, float] = {}
        for n in range(changes):
            change = MetricChange(f"nft:ethereum:0x{'ab' * 20}:{n}", "trust", "50", str(50 - n % 10))
            with db.write() as s:
                changelog.append(s, [change], {}, {change.entity_key: [f"bench/{n}"]}, datetime.now(UTC))
                cursor = changelog.head(s)
            committed[cursor] = time.time()
            await asyncio.sleep(interval)
        await asyncio.sleep(5.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        latencies = [
            (got[cursor] - at) * 1000 for got in arrivals for cursor, at in committed.items() if cursor in got
        ]
        pairs = clients * len(committed)
        return {
            "clients": clients,
            "changes": len(committed),
            "interval_s": interval,
            "database": database_url.split(":", 1)[0],
            "connect_all_s": round(connect_s, 2),
            "delivered": round(len(latencies) / pairs, 4) if pairs else 0,
            "latency_ms": {
                "p50": round(statistics.median(latencies), 1),
                "p95": round(_percentile(latencies, 0.95), 1),
                "p99": round(_percentile(latencies, 0.99), 1),
                "max": round(max(latencies), 1),
            }
            if latencies
            else None,
        }
    finally:
        # uvicorn's graceful stop waits for open streams; the benchmark's are done.
        server.kill()
        server.join(timeout=10)
        db.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'feed.db'}"
        result = asyncio.run(run(args.clients, args.changes, args.interval, url))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
