"""Benchmark: what the pipeline worker pays per batch for one busy collection, as history grows.

Run ``python -m bench.book_apply`` (``--batches K``); prints JSON. The stream is ``pulse.synth``'s
(one collection of 100 tokens, seed 3: a mint burst, then listings, sales, transfers, bids, trait
changes, fraud findings). At each history size (events already folded, built with the recompute) it
applies ``K`` batches of 40 and ``K`` of 200 events in chain order, as ``activities.pipeline`` does,
and reports per-event apply time (median over batches), ``nft_view`` per dirty token, the collection
view, and ``orjson.dumps(book.to_dict())`` per batch. Growth between the history sizes is what must
stay flat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from nftpulse.domain.book import Change, CollectionBook
from nftpulse.domain.events import Event
from nftpulse.synth import Stream

HISTORIES = (2_000, 10_000, 30_000)
SIZES = (40, 200)


def _rates(base: str, quote: str, at: datetime) -> Decimal | None:
    return None


def _order(event: Event) -> tuple[tuple[int, int, str], str, str]:
    return (event.order_key, event.source, event.id)


def _apply(book: CollectionBook, batch: list[Event]) -> Change:
    """The worker's fold of one batch: ``apply_batch`` when the book has it, else event by event."""
    ordered = sorted(batch, key=_order)
    apply_batch = getattr(book, "apply_batch", None)
    if apply_batch is not None:
        change, failed = apply_batch(ordered, _rates)
        assert not failed, failed
        return change  # type: ignore[no-any-return]
    change = Change()
    for event in ordered:
        change.merge(book.apply(event, _rates))
    return change


def _stream(total: int) -> list[Event]:
    s = Stream(collections=1, tokens_per_collection=100, seed=3)
    return [Event.model_validate(e) for e in [*s.mints(), *s.take(total)]]


def measure(events: list[Event], history: int, batches: int) -> dict[str, Any]:
    """Per-event apply µs per batch size, nft_view µs, collection view µs and to_dict+dumps ms."""
    head = events[0].chain, events[0].contract
    book = CollectionBook.recompute(*head, events[:history], _rates)
    cursor = history
    out: dict[str, Any] = {"history": history, "tokens": len(book.tokens)}
    views: list[float] = []
    collection: list[float] = []
    dumps: list[float] = []
    for size in SIZES:
        per_event: list[float] = []
        for _ in range(batches):
            batch = events[cursor : cursor + size]
            cursor += size
            started = time.perf_counter()
            change = _apply(book, batch)
            per_event.append((time.perf_counter() - started) / len(batch) * 1e6)
            started = time.perf_counter()
            for tid in change.nfts:
                book.nft_view(tid)
            if change.nfts:
                views.append((time.perf_counter() - started) / len(change.nfts) * 1e6)
            started = time.perf_counter()
            book.collection_view()
            collection.append((time.perf_counter() - started) * 1e6)
            started = time.perf_counter()
            orjson.dumps(book.to_dict())
            dumps.append((time.perf_counter() - started) * 1e3)
        out[f"apply_us_per_event_batch{size}"] = round(statistics.median(per_event), 1)
    out["nft_view_us"] = round(statistics.median(views), 1) if views else None
    out["collection_view_us"] = round(statistics.median(collection), 1)
    out["to_dict_dumps_ms"] = round(statistics.median(dumps), 2)
    return out


def main() -> None:
    """Parse arguments, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    need = max(HISTORIES) + args.batches * sum(SIZES)
    events = _stream(need)
    results = [measure(events, history, args.batches) for history in HISTORIES]
    print(json.dumps({"stream": "synth(collections=1, tokens=100, seed=3)", "results": results}, indent=2))


if __name__ == "__main__":
    main()
