"""Benchmark: folding ERC-721 owners and ERC-1155 balances into a collection book.

Run ``python -m bench.book_balances``; prints JSON. Two streams of one collection, 200 wallets, seed 1:
ERC-721 (2,000 mints, then 20,000 transfers and sales, one in five a sale) and ERC-1155 (20 ids minted
1,000 units each, then 20,000 transfers and sales of 1 or 2 units). Each is applied in chain order in
batches of 200 (``apply_batch``, as ``activities.pipeline`` does) and folded whole (``recompute``, as
``pulse verify`` does); reported in events per second, best of ``--repeat`` runs. Also the size of the
book's core (saved whole every batch) and of its history (saved in segments) for the ERC-1155 stream:
moves are history, so the core stays small.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from nftpulse.domain.book import CollectionBook
from nftpulse.domain.events import Event

CONTRACT = "0x" + "c" * 40
WALLETS = ["0x" + f"{i:040x}" for i in range(1, 201)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stream(multi: bool, moves: int = 20_000) -> list[Event]:
    rng = random.Random(1)
    ids = 20 if multi else 2_000
    extra: dict[str, Any] = {"standard": "erc1155", "quantity": 1_000} if multi else {}
    events = [
        Event(
            id=f"m{i}",
            source="bench",
            type="mint",
            occurred_at=T0 + timedelta(seconds=i),
            chain="ethereum",
            contract=CONTRACT,
            token_id=str(i),
            block_number=i,
            log_index=0,
            data={"to": rng.choice(WALLETS), "traits": {"bg": str(i % 7)}, **extra},
        )
        for i in range(ids)
    ]
    for j in range(moves):
        data: dict[str, Any] = {"from": rng.choice(WALLETS), "to": rng.choice(WALLETS)}
        if multi:
            data |= {"standard": "erc1155", "quantity": rng.randrange(1, 3)}
        kind = "sale" if j % 5 == 0 else "transfer"
        if kind == "sale":
            data["price"] = {"amount": "1.5", "currency": "ETH"}
        events.append(
            Event(
                id=f"t{j}",
                source="bench",
                type=kind,
                occurred_at=T0 + timedelta(seconds=ids + j),
                chain="ethereum",
                contract=CONTRACT,
                token_id=str(rng.randrange(ids)),
                block_number=ids + j,
                log_index=0,
                data=data,
            )
        )
    return events


def no_rates(base: str, quote: str, at: datetime) -> Decimal | None:
    return None


def measure(events: list[Event], repeat: int) -> dict[str, Any]:
    incremental, whole = [], []
    book = CollectionBook.empty("ethereum", CONTRACT)
    for _ in range(repeat):
        book = CollectionBook.empty("ethereum", CONTRACT)
        started = time.perf_counter()
        for at in range(0, len(events), 200):
            book.apply_batch(events[at : at + 200], no_rates)
        incremental.append(time.perf_counter() - started)
        started = time.perf_counter()
        CollectionBook.recompute("ethereum", CONTRACT, events, no_rates)
        whole.append(time.perf_counter() - started)
    return {
        "events": len(events),
        "apply_batch_events_per_s": round(len(events) / min(incremental)),
        "recompute_events_per_s": round(len(events) / min(whole)),
        "holders": book.holders,
        "core_bytes": len(orjson.dumps(book.core_dict(tokens=False))),
        "history_bytes": len(orjson.dumps(book.history_dict())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    out = {
        "erc721": measure(stream(multi=False), args.repeat),
        "erc1155": measure(stream(multi=True), args.repeat),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
