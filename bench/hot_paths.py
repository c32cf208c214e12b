"""Micro-benchmarks of the domain functions the end-to-end worker profile points at. Prints JSON.

    .venv/bin/python -m bench.hot_paths

- ``price_estimate_us``: one ``domain.price.estimate`` with a floor, a TWAP and a last sale 5 days old.
- ``rarity_plan_us``: ``RarityIndex.plan`` for a random token's new traits, over the synthetic stream's
  collections of 100 and 1,000 tokens (medians of repeated runs).
"""

from __future__ import annotations

import json
import random
import statistics
import time
import timeit
from decimal import Decimal
from typing import Any

from nftpulse.domain.price import estimate
from nftpulse.domain.rarity import RarityIndex
from nftpulse.synth import Stream


def price_estimate_us(repeat: int = 5, number: int = 20_000) -> float:
    kwargs: dict[str, Any] = dict(
        floor=Decimal("1.2345"),
        twap=Decimal("1.3"),
        rarity_score=1.37,
        last_sale=Decimal("1.5"),
        last_sale_age_days=5,
        currency="ETH",
    )
    runs = timeit.repeat(lambda: estimate(**kwargs), repeat=repeat, number=number)
    return round(statistics.median(runs) / number * 1e6, 2)


def rarity_plan_us(tokens: int, plans: int = 1000, repeat: int = 5) -> float:
    stream = Stream(collections=1, tokens_per_collection=tokens, seed=3)
    traits = {e["token_id"]: e["data"]["traits"] for e in stream.mints()}
    index = RarityIndex.build(traits)
    ids = list(traits)
    rng = random.Random(1)
    runs = []
    for _ in range(repeat):
        changes = [(rng.choice(ids), stream.traits()) for _ in range(plans)]
        started = time.perf_counter()
        for token_id, new in changes:
            index.plan(token_id, new, live=True)
        runs.append((time.perf_counter() - started) / plans)
    return round(statistics.median(runs) * 1e6, 1)


def main() -> None:
    print(
        json.dumps(
            {
                "price_estimate_us": price_estimate_us(),
                "rarity_plan_us": {"100_tokens": rarity_plan_us(100), "1000_tokens": rarity_plan_us(1000)},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
