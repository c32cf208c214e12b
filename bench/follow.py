"""The chain follower's throughput: a local anvil filled with NFT logs (ERC-721 mints, and ERC-1155 batches of
``--batch-ids`` entries), backfilled by the follower into a fresh database (eth_getLogs, block headers,
decoding, classification, the event log's append). Prints JSON.

    .venv/bin/python -m bench.follow --logs 20000
    .venv/bin/python -m bench.follow --logs 20000 --database postgres   # a fresh schema, dropped after

``decode_logs_per_s`` is decoding alone (the logs already fetched); ``logs_per_s`` and ``events_per_s`` are
the whole backfill, node included. Needs scripts/install-npm-deps.sh (anvil and solcjs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from nftpulse.adapters.chain import ChainReader, Rpc
from nftpulse.adapters.logs import LogDecoder
from nftpulse.core.settings import Settings
from nftpulse.follow import Follower
from nftpulse.store import schema
from nftpulse.store.db import Database
from tests.chain.anvil import Eth, anvil, calldata, compile_contracts, missing_tools
from tests.conftest import postgres_schema
from tests.ports import free_port


async def fill(
    eth: Eth, code: dict[str, str], logs: int, per_tx: int, batch_ids: int
) -> tuple[str, str, int]:
    """Deploy the test tokens and send transactions until about ``logs`` NFT logs exist: nine in ten
    ERC-721 mints (``per_tx`` a transaction), one in ten ERC-1155 batches (one log each, ``batch_ids``
    entries). Returns the contracts and the events the logs hold."""
    alice, bob = (await eth.accounts())[:2]
    nft = await eth.deploy(alice, code["TestERC721"])
    multi = await eth.deploy(alice, code["TestERC1155"])
    ids = list(range(batch_ids))
    for token in ids:
        await eth.send(alice, multi, calldata("mint(address,uint256,uint256)", alice, token, 10**6))
    made = events = batch_ids
    first, txs = 1, 0
    while made < logs:
        txs += 1
        if txs % 10 == 0:
            data = calldata(
                "safeBatchTransferFrom(address,address,uint256[],uint256[])", alice, bob, ids, [1] * batch_ids
            )
            await eth.send(alice, multi, data, gas=50_000_000)
            made, events = made + 1, events + batch_ids
            continue
        count = min(per_tx, logs - made)
        mint = calldata("mintMany(address,uint256,uint256)", alice, first, count)
        await eth.send(alice, nft, mint, gas=900_000_000)
        first, made, events = first + count, made + count, events + count
    return nft, multi, events


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.database == "postgres":
        with postgres_schema() as url:
            return await measure(args, url)
    return await measure(args, None)


async def measure(args: argparse.Namespace, url: str | None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pulse-bench-follow-"))
    code = compile_contracts(work / "solc")
    url = url or f"sqlite:///{work / 'pulse.db'}"
    db = Database(url)
    schema.upgrade(db)
    with anvil(free_port(), "--gas-limit", "1000000000") as rpc_url:
        async with httpx.AsyncClient(timeout=120) as http:
            eth = Eth(rpc_url, http)
            started = time.perf_counter()
            nft, multi, expected = await fill(eth, code, args.logs, args.per_tx, args.batch_ids)
            fill_s = time.perf_counter() - started
            head = await eth.head()
        settings = Settings(database_url=url, chain_rpc_url=rpc_url, chain_contracts=f"{nft},{multi}")

        # Decoding alone: the logs fetched once, then decoded.
        rpc = Rpc(rpc_url)
        reader = ChainReader(rpc, LogDecoder("ethereum"), [nft, multi])
        raw = await reader.logs(1, head)
        times = {
            b.number: b.timestamp
            for b in [await reader.block(n) for n in sorted({r.block_number for r in raw})]
        }
        started = time.perf_counter()
        decoded = reader.decoder.decode(raw, times)
        decode_s = time.perf_counter() - started
        await rpc.aclose()

        follower = Follower.from_settings(settings, db, batch_blocks=args.batch_blocks)
        started = time.perf_counter()
        report = await follower.backfill(1, head)
        backfill_s = time.perf_counter() - started
        await follower.aclose()
    db.dispose()
    assert report.accepted == expected == len(decoded.events), (report, expected, len(decoded.events))
    return {
        "bench": "follow",
        "database": "sqlite" if url.startswith("sqlite") else "postgres",
        "blocks": head,
        "logs": report.logs,
        "events": report.accepted,
        "fill_s": round(fill_s, 2),
        "decode_s": round(decode_s, 3),
        "decode_logs_per_s": round(len(raw) / decode_s),
        "backfill_s": round(backfill_s, 2),
        "logs_per_s": round(report.logs / backfill_s),
        "events_per_s": round(report.accepted / backfill_s),
        "batch_blocks": args.batch_blocks,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()[0]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logs", type=int, default=20_000, help="NFT logs to put on the chain")
    parser.add_argument("--per-tx", type=int, default=500, help="ERC-721 mints per transaction")
    parser.add_argument("--batch-ids", type=int, default=20, help="entries per ERC-1155 batch transfer")
    parser.add_argument("--batch-blocks", type=int, default=500, help="blocks per eth_getLogs range")
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="postgres: a fresh schema in "
        "PULSE_TEST_POSTGRES_URL's database (the tests' default), dropped after",
    )
    args = parser.parse_args()
    if missing := missing_tools():
        raise SystemExit(missing)
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
