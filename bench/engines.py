"""Micro-benchmark: one incremental update against a full recompute in a 10,000-token collection.

Run ``python -m bench.engines`` (``--tokens N --repeat R``); prints JSON. The collection has eight
attributes with Zipf-distributed values (two of them optional, so large null buckets exist). Its log:
one mint and one reveal (metadata update) per token, one listing event per token on average (some
cancelled), sales of a fifth and transfers of a tenth of the tokens: 3.4 events per token. For each
kind of update (one token's trait change, a sale, a transfer) it times ``CollectionBook.apply`` on a
book built from that log against the full recompute (``CollectionBook.recompute`` over the whole log:
the twin every incremental result must equal) and reports medians, means, p90 and the ratio of
medians. It also times the engines' from-scratch rebuild alone (every index derived from the folded
facts, as ``from_dict`` does) as a second, stricter baseline.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from nftpulse.domain.book import CollectionBook
from nftpulse.domain.events import Event

CHAIN = "ethereum"
CONTRACT = "0x" + "b" * 40
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ATTRIBUTES = {
    "background": 12,
    "body": 20,
    "eyes": 25,
    "mouth": 30,
    "clothes": 45,
    "hat": 40,
    "earring": 6,
    "accessory": 15,
}
OPTIONAL = {"earring": 0.3, "accessory": 0.5}


def _rates(base: str, quote: str, at: datetime) -> Decimal | None:
    return None


class Stream:
    """Deterministic synthetic events for one collection."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0
        self.wallets = ["0x" + f"{i:040x}" for i in range(1, 3001)]

    def _event(self, kind: str, token: str, data: dict[str, Any]) -> Event:
        self.n += 1
        return Event(
            id=f"b{self.n}",
            source="bench",
            type=kind,
            occurred_at=T0 + timedelta(seconds=30 * self.n),
            chain=CHAIN,
            contract=CONTRACT,
            token_id=token,
            block_number=1_000_000 + self.n,
            log_index=0,
            data=data,
        )

    def traits(self) -> dict[str, str]:
        out = {}
        for name, count in ATTRIBUTES.items():
            if name in OPTIONAL and self.rng.random() > OPTIONAL[name]:
                continue
            weights = [1.0 / (rank + 1) for rank in range(count)]
            out[name] = f"{name}-{self.rng.choices(range(count), weights)[0]}"
        return out

    def wallet(self) -> str:
        # Power-law holders: a few wallets hold much of the collection.
        return self.wallets[min(len(self.wallets) - 1, int(self.rng.paretovariate(1.2)) - 1)]

    def price(self) -> dict[str, str]:
        return {"amount": f"{self.rng.uniform(1, 5):.4f}", "currency": "ETH"}

    def mint(self, token: str) -> Event:
        return self._event("mint", token, {"to": self.wallet(), "traits": self.traits()})

    def trait_change(self, token: str, book: CollectionBook) -> Event:
        traits = dict(book.tokens[token].traits)
        name = self.rng.choice(sorted(ATTRIBUTES))
        current = traits.get(name)
        choices = [f"{name}-{i}" for i in range(ATTRIBUTES[name]) if f"{name}-{i}" != current]
        traits[name] = self.rng.choice(choices)
        return self._event("metadata_update", token, {"traits": traits})

    def sale(self, token: str, book: CollectionBook) -> Event:
        seller = book.tokens[token].owner or self.wallet()
        return self._event("sale", token, {"from": seller, "to": self.wallet(), "price": self.price()})

    def transfer(self, token: str, book: CollectionBook) -> Event:
        sender = book.tokens[token].owner or self.wallet()
        return self._event("transfer", token, {"from": sender, "to": self.wallet()})

    def listing(self, token: str, book: CollectionBook) -> Event:
        seller = book.tokens[token].owner or self.wallet()
        return self._event("listing", token, {"seller": seller, "price": self.price()})


def build_log(tokens: int, seed: int) -> tuple[list[Event], Stream]:
    """A collection's life: mints, the reveal (one metadata update per token), then listings (some
    cancelled), sales and transfers - about 3.6 events per token, a quiet collection by marketplace
    standards."""
    stream = Stream(seed)
    events = [stream.mint(str(i)) for i in range(tokens)]
    book = CollectionBook.recompute(CHAIN, CONTRACT, events, _rates)
    ids = list(book.tokens)
    for tid in ids:
        events.append(stream._event("metadata_update", tid, {"traits": stream.traits()}))
    book = CollectionBook.recompute(CHAIN, CONTRACT, events, _rates)
    for _ in range(tokens):
        events.append(stream.listing(stream.rng.choice(ids), book))
    for _ in range(tokens // 10):
        events.append(stream._event("listing_cancelled", stream.rng.choice(ids), {"seller": stream.wallet()}))
    for _ in range(tokens // 5):
        events.append(stream.sale(stream.rng.choice(ids), book))
    for _ in range(tokens // 10):
        events.append(stream.transfer(stream.rng.choice(ids), book))
    return events, stream


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 4)


def run(tokens: int, repeat: int, seed: int) -> dict[str, Any]:
    """Time each kind of update and the recomputes; returns the report."""
    events, stream = build_log(tokens, seed)
    full: list[float] = []
    for _ in range(3):
        start = time.perf_counter()
        book = CollectionBook.recompute(CHAIN, CONTRACT, events, _rates)
        full.append(time.perf_counter() - start)
    rebuild: list[float] = []
    for _ in range(3):
        start = time.perf_counter()
        book._rebuild()
        book._d.publisher.republish(book._d.rarity)
        rebuild.append(time.perf_counter() - start)
    full_ms, rebuild_ms = _median_ms(full), _median_ms(rebuild)
    ids = [tid for tid, t in book.tokens.items() if t.live]
    report: dict[str, Any] = {
        "tokens": tokens,
        "log_events": len(events),
        "repeat": repeat,
        "full_recompute_ms": full_ms,
        "engine_rebuild_ms": rebuild_ms,
        "updates": {},
    }
    makers = {"trait_change": stream.trait_change, "sale": stream.sale, "transfer": stream.transfer}
    for name, make in makers.items():
        samples: list[float] = []
        dirty: list[int] = []
        for _ in range(repeat):
            event = make(stream.rng.choice(ids), book)
            start = time.perf_counter()
            change = book.apply(event, _rates)
            samples.append(time.perf_counter() - start)
            dirty.append(len(change.nfts))
        median = _median_ms(samples)
        report["updates"][name] = {
            "incremental_median_ms": median,
            "incremental_mean_ms": round(statistics.fmean(samples) * 1000, 4),
            "incremental_p90_ms": round(sorted(samples)[int(0.9 * (len(samples) - 1))] * 1000, 4),
            "speedup_vs_full_recompute": round(full_ms / median, 1),
            "speedup_vs_engine_rebuild": round(rebuild_ms / median, 1),
            "median_nfts_marked": statistics.median(dirty),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(json.dumps(run(args.tokens, args.repeat, args.seed), indent=2))


if __name__ == "__main__":
    main()
