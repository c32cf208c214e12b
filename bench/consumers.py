"""Benchmark: one consumer's deliveries, change → endpoint latency and deliveries per second.

Run ``python -m bench.consumers [--changes 400] [--entities 50] [--database-url URL]``; prints JSON. A
Temporal dev server (the ``temporal`` CLI), a fresh database (SQLite in a temporary directory unless
``--database-url`` names a Postgres one), the worker as ``pulse worker`` builds it (in this process) and
a local HTTP endpoint that verifies every signature with ``standardwebhooks`` and answers 200. One
consumer follows every NFT (``prefix=nft:``). ``--changes`` change-log rows over ``--entities`` NFTs are
appended one transaction each, as recalculation commits them, ``--interval`` seconds apart (0: as fast as
they commit), noting when each committed; latency is arrival minus commit. Throughput is the changes
over the time from the first commit to the last arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook
from temporalio.testing import WorkflowEnvironment

from nftpulse.activities.contracts.consumers import ensure_runner
from nftpulse.core.delivery import generate_webhook_secret
from nftpulse.core.settings import Settings
from nftpulse.domain.changes import MetricChange
from nftpulse.store import changes as changelog
from nftpulse.store import consumers, schema
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database
from nftpulse.temporal import temporal_cli
from nftpulse.worker import build_worker


def _endpoint(secret: str, arrivals: dict[int, float], duplicates: list[int]) -> ThreadingHTTPServer:
    hook = Webhook(secret)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            message = hook.verify(body, {k.lower(): v for k, v in self.headers.items()})
            cursor = int(message["data"]["cursor"])
            if cursor in arrivals:
                duplicates.append(cursor)
            arrivals.setdefault(cursor, time.monotonic())
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def run(changes: int, entities: int, interval: float, database_url: str) -> dict[str, Any]:
    db = Database(database_url)
    schema.upgrade(db)
    secret = generate_webhook_secret()
    arrivals: dict[int, float] = {}
    duplicates: list[int] = []
    server = _endpoint(secret, arrivals, duplicates)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(), dev_server_log_level="error"
    )
    queue = f"bench-consumers-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=database_url,
        task_queue=queue,
        workflow_id_prefix=f"{queue}/",
        allow_private_webhooks=True,
    )
    workers, registry = build_worker(env.client, settings, db, NoCache())
    running = asyncio.create_task(workers.run())
    try:
        with db.write() as s:
            consumer = consumers.create(
                s,
                url=f"http://127.0.0.1:{server.server_address[1]}/in",
                secret=secret,
                keys=[],
                prefixes=["nft:"],
                metrics=[],
                event_types=[],
                now=datetime.now(UTC),
            )
            consumer_id = consumer.id
        await ensure_runner(env.client, settings.workflow_id_prefix, queue, consumer_id)
        committed: dict[int, float] = {}
        for i in range(changes):
            key = f"nft:ethereum:0x{'ab' * 20}:{i % entities}"
            with db.write() as s:
                changelog.append(
                    s,
                    [MetricChange(key, "trust", 80.0 - i * 0.01, 80.0 - (i + 1) * 0.01)],
                    {},
                    {},
                    datetime.now(UTC),
                )
                cursor = changelog.head(s)
            committed[cursor] = time.monotonic()
            if interval:
                await asyncio.sleep(interval)
        deadline = time.monotonic() + 600
        while len(arrivals) < changes and time.monotonic() < deadline:  # noqa: ASYNC110 - a thread fills it
            await asyncio.sleep(0.05)
        latencies = sorted(arrivals[c] - t for c, t in committed.items() if c in arrivals)
        first = min(committed.values())
        last = max(arrivals.values()) if arrivals else first
        return {
            "database": database_url.split(":", 1)[0],
            "changes": changes,
            "entities": entities,
            "interval_s": interval,
            "delivered": len(arrivals),
            "duplicates": len(duplicates),
            "deliveries_per_s": round(len(arrivals) / (last - first), 1) if last > first else None,
            "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None,
            "latency_max_s": round(latencies[-1], 3) if latencies else None,
        }
    finally:
        await workers.shutdown()
        running.cancel()
        await registry.aclose()
        await env.shutdown()
        server.shutdown()
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=400)
    parser.add_argument("--entities", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between changes (0: at once)")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'pulse.db'}"
        print(json.dumps(asyncio.run(run(args.changes, args.entities, args.interval, url))))


if __name__ == "__main__":
    main()
