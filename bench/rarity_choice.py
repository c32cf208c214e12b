"""Micro-benchmark: how a batch brings rarity up to date, planned token by token or rebuilt, at the
constants ``domain.book.fold`` chooses by (``REBUILD_WEIGHT``, ``PLAN_OVERHEAD``) against other ones.

Run ``python -m bench.rarity_choice`` (``--repeat R``); prints JSON. Each scenario folds the same batches
into a book minted from ``nftpulse.synth.Stream`` (traits on every mint) once per pair of constants and
reports the median milliseconds per batch and how many batches were rebuilt:

- market activity in a 10,000-token collection, in batches of 10, 30 and 85 events (the stream's mix:
  8 % reveals redrawing every trait of a token, listings, sales, bids, transfers; with the domain tests'
  rates, so bids in WETH are refused as unpriced);
- the same in small collections (10 and 100 tokens), batches of 2 to 10 events;
- 1, 3 and 10 one-trait updates in one batch of a 4,000- and a 10,000-token collection.

Both ways give the same integers (``domain.rarity``), so only the time differs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nftpulse.domain.book import CollectionBook, fold
from nftpulse.domain.events import Event
from nftpulse.synth import Stream
from tests.domain.eventgen import rates

CHAIN = "ethereum"
CANDIDATES = [(2.0, 0), (1.0, 0), (fold.REBUILD_WEIGHT, fold.PLAN_OVERHEAD), (0.5, 100)]


@contextmanager
def _constants(weight: float, overhead: int) -> Iterator[None]:
    saved = fold.REBUILD_WEIGHT, fold.PLAN_OVERHEAD
    fold.REBUILD_WEIGHT, fold.PLAN_OVERHEAD = weight, overhead
    try:
        yield
    finally:
        fold.REBUILD_WEIGHT, fold.PLAN_OVERHEAD = saved


def _minted(size: int, seed: int) -> tuple[Stream, CollectionBook, list[dict[str, Any]]]:
    stream = Stream(sizes=[size], seed=seed)
    raw = list(stream.mints())
    book = CollectionBook.empty(CHAIN, raw[0]["contract"])
    for at in range(0, len(raw), 1000):
        book.apply_batch([Event.model_validate(e) for e in raw[at : at + 1000]], rates)
    return stream, book, raw


def _timed(book: CollectionBook, batches: list[list[Event]]) -> tuple[float, int]:
    """Milliseconds per batch and batches rebuilt."""
    rebuilt = 0
    started = time.perf_counter()
    for batch in batches:
        index = book.rarity
        book.apply_batch(batch, rates)
        rebuilt += book.rarity is not index
    return (time.perf_counter() - started) * 1000 / len(batches), rebuilt


def activity(size: int, batch: int, count: int, weight: float, overhead: int) -> tuple[float, int]:
    stream, book, _ = _minted(size, seed=3)
    events = [Event.model_validate(e) for e in stream.take(batch * count)]
    with _constants(weight, overhead):
        return _timed(book, [events[at : at + batch] for at in range(0, len(events), batch)])


def one_trait(size: int, updates: int, weight: float, overhead: int) -> tuple[float, int]:
    _, book, raw = _minted(size, seed=5)
    holders = book.rarity.holders["background"]
    rarest = sorted(holders, key=lambda value: len(holders[value]))
    batch = [
        Event.model_validate(
            {
                **raw[int(tid)],
                "id": f"u{n}",
                "type": "metadata_update",
                "block_number": raw[-1]["block_number"] + 1 + n,
                "occurred_at": raw[-1]["occurred_at"],
                "data": {"traits": {**book.tokens[tid].traits, "background": rarest[n % 2]}},
            }
        )
        for n, tid in enumerate(sorted(book.tokens, key=int)[:updates])
    ]
    with _constants(weight, overhead):
        return _timed(book, [batch])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    scenarios: dict[str, Any] = {}
    for size, batch, count in [
        (10_000, 85, 20),
        (10_000, 30, 40),
        (10_000, 10, 60),
        (10, 2, 1500),
        (100, 10, 300),
    ]:
        scenarios[f"activity {size} tokens, {batch} events/batch"] = lambda w, o, s=size, b=batch, c=count: (
            activity(s, b, c, w, o)
        )
    for size in (4000, 10_000):
        for updates in (1, 3, 10):
            scenarios[f"{updates} one-trait updates, {size} tokens"] = lambda w, o, s=size, u=updates: (
                one_trait(s, u, w, o)
            )
    out: dict[str, Any] = {
        "chosen": {"rebuild_weight": fold.REBUILD_WEIGHT, "plan_overhead": fold.PLAN_OVERHEAD}
    }
    for name, run in scenarios.items():
        row = {}
        for weight, overhead in CANDIDATES:
            runs = [run(weight, overhead) for _ in range(args.repeat)]
            row[f"weight {weight}, overhead {overhead}"] = {
                "ms_per_batch": round(statistics.median(ms for ms, _ in runs), 3),
                "rebuilt": runs[0][1],
            }
        out[name] = row
        print(name, json.dumps(row), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
