"""The OpenSea stream client's throughput: a local Phoenix server (the one tests/adapters/test_opensea.py
uses, as far as the protocol goes) pushes ``--messages`` listings, offers and sales shaped as OpenSea
documents them, as fast as the socket takes them; the client maps each and appends it to a fresh database
(classification, the event log's append, one transaction per message). Prints JSON.

    .venv/bin/python -m bench.opensea_stream --messages 5000
    .venv/bin/python -m bench.opensea_stream --messages 5000 --database postgres   # a fresh schema
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr
from websockets.asyncio.server import ServerConnection, serve

from nftpulse.core.settings import Settings
from nftpulse.opensea import OpenSeaStream
from nftpulse.store import events as event_log
from nftpulse.store import schema
from nftpulse.store.db import Database
from tests.adapters.test_opensea import BID, LISTED, SOLD
from tests.conftest import postgres_schema


def messages(count: int) -> list[str]:
    """``count`` distinct messages: listings, bids and sales in turn, each with its own order and token."""
    out = []
    for i in range(count):
        msg = deepcopy((LISTED, BID, SOLD)[i % 3])
        body = msg["payload"]["payload"]
        body["order_hash"] = "0x" + f"{i:064x}"
        body["item"]["nft_id"] = body["item"]["nft_id"].rsplit("/", 1)[0] + f"/{i % 1000}"
        out.append(orjson.dumps(msg).decode())
    return out


async def measure(count: int, url: str) -> dict[str, Any]:
    db = Database(url)
    schema.upgrade(db)
    pushed = messages(count)

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = orjson.loads(raw)
            reply = {
                "topic": msg["topic"],
                "event": "phx_reply",
                "payload": {"status": "ok"},
                "ref": msg["ref"],
            }
            await ws.send(orjson.dumps(reply).decode())
            if msg["event"] == "phx_join":
                for text in pushed:
                    await ws.send(text)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        settings = Settings(
            database_url=url,
            opensea_api_key=SecretStr("bench"),
            opensea_stream_url=f"ws://127.0.0.1:{port}/socket/websocket",
        )
        client = OpenSeaStream(settings, db, ["boredfrens"])
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(client.run(stop))
        while client.report.accepted < count:  # noqa: ASYNC110 - the client exposes counters, not events
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
    stored = sum(event_log.status_counts(db).values())
    db.dispose()
    assert client.report.accepted == stored == count, (client.report, stored)
    return {
        "bench": "opensea_stream",
        "database": "sqlite" if url.startswith("sqlite") else "postgres",
        "messages": count,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(count / elapsed),
        "cpus": os.cpu_count(),
        "load": os.getloadavg()[0],
        "python": platform.python_version(),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.database == "postgres":
        with postgres_schema() as url:
            return await measure(args.messages, url)
    work = Path(tempfile.mkdtemp(prefix="pulse-bench-opensea-"))
    return await measure(args.messages, f"sqlite:///{work / 'pulse.db'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
