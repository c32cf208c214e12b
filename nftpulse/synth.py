"""Synthetic but realistic event streams (no public NFT data set ships on PyPI).

Collections get trait distributions with rare values, activity follows a power law across tokens and
collections, each collection starts with a mint burst, and a few wallets form wash-trading rings.
Deterministic for a given seed, so benchmarks and tests can be repeated.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

TRAITS = {
    "background": ["blue", "red", "green", "gold", "void"],
    "eyes": ["normal", "laser", "sleepy", "diamond"],
    "hat": ["none", "cap", "crown", "halo", "beanie", "party"],
    "fur": ["brown", "white", "black", "zombie", "robot"],
}
WEIGHTS = [40, 25, 20, 10, 5, 3]


def wallet(rng: random.Random) -> str:
    return "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40))


def contract_for(index: int) -> str:
    return "0x" + f"{index + 1:040x}"


@dataclass
class SynthCollection:
    contract: str
    tokens: int
    owners: dict[str, str] = field(default_factory=dict)
    floor: float = 1.0


class Stream:
    """Generates a stream over ``collections`` times ``tokens_per_collection`` tokens."""

    def __init__(
        self,
        collections: int = 50,
        tokens_per_collection: int = 100,
        seed: int = 7,
        source: str = "synth",
        chain: str = "ethereum",
        start: datetime | None = None,
        *,
        sizes: list[int] | None = None,
        zipf: float = 1.1,
        fraud_share: float = 0.005,
        fraud_severity: str | None = None,
    ) -> None:
        """``sizes`` gives each collection its own token count (the market's shape: one big collection
        first, many small ones) instead of ``collections`` times ``tokens_per_collection``; ``zipf`` is
        the exponent of activity across collections; ``fraud_share`` of activity events are fraud
        findings, all of ``fraud_severity`` when given (else medium, high or critical at random)."""
        self.rng = random.Random(seed)
        self.source = source
        self.chain = chain
        self.clock = start or datetime(2026, 11, 1, tzinfo=UTC)
        sizes = sizes if sizes is not None else [tokens_per_collection] * collections
        self.collections = [SynthCollection(contract_for(i), size) for i, size in enumerate(sizes)]
        self.wallets = [wallet(self.rng) for _ in range(max(50, sum(sizes) // 5))]
        self.ring = self.wallets[:3]
        self.block = 18_000_000
        self.counter = 0
        # Power law (Zipf): a few collections and, within each, a few tokens see most of the activity.
        self.collection_weights = [1 / (i + 1) ** zipf for i in range(len(sizes))]
        self.token_weights = [1 / (i + 1) ** 0.8 for i in range(max(sizes, default=0))]
        self.fraud_share = fraud_share
        self.fraud_severity = fraud_severity

    def _base(
        self, kind: str, coll: SynthCollection, token: int | None, data: dict[str, Any]
    ) -> dict[str, Any]:
        self.counter += 1
        self.clock += timedelta(milliseconds=self.rng.randint(5, 200))
        if self.counter % 10 == 0:
            self.block += 1
        event: dict[str, Any] = {
            "id": f"{self.source}-{self.counter}",
            "source": self.source,
            "type": kind,
            "occurred_at": self.clock.isoformat(),
            "chain": self.chain,
            "contract": coll.contract,
            "block_number": self.block,
            "log_index": self.counter % 500,
            "data": data,
        }
        if token is not None:
            event["token_id"] = str(token)
        return event

    def traits(self) -> dict[str, str]:
        out = {}
        for name, values in TRAITS.items():
            if name == "hat" and self.rng.random() < 0.2:
                continue  # some tokens lack the attribute: the OpenRarity null bucket
            out[name] = self.rng.choices(values, weights=WEIGHTS[: len(values)])[0]
        return out

    def mints(self, only: range | None = None) -> Iterator[dict[str, Any]]:
        """The mint burst of every collection (of those at the indexes ``only``): every token minted once."""
        for index, coll in enumerate(self.collections):
            if only is not None and index not in only:
                continue
            for token in range(coll.tokens):
                owner = self.rng.choice(self.wallets)
                coll.owners[str(token)] = owner
                yield self._base(
                    "mint",
                    coll,
                    token,
                    {"from": "0x" + "0" * 40, "to": owner, "traits": self.traits()},
                )

    def activity(self) -> Iterator[dict[str, Any]]:
        """Endless market activity after the mints."""
        while True:
            coll = self.rng.choices(self.collections, weights=self.collection_weights)[0]
            token = self.rng.choices(range(coll.tokens), weights=self.token_weights[: coll.tokens])[0]
            tid = str(token)
            owner = coll.owners.get(tid) or self.rng.choice(self.wallets)
            roll = self.rng.random()
            if roll < 0.30:
                price = round(coll.floor * self.rng.uniform(0.9, 1.6), 4)
                yield self._base(
                    "listing",
                    coll,
                    token,
                    {"seller": owner, "price": {"amount": f"{price}", "currency": "ETH"}},
                )
            elif roll < 0.50:
                buyer = self.rng.choice(self.wallets)
                if self.rng.random() < 0.05:
                    buyer = (
                        self.ring[(self.ring.index(owner) + 1) % 3] if owner in self.ring else self.ring[0]
                    )
                price = round(coll.floor * self.rng.uniform(0.95, 1.4), 4)
                coll.floor = max(0.01, coll.floor * self.rng.uniform(0.97, 1.035))
                coll.owners[tid] = buyer
                yield self._base(
                    "sale",
                    coll,
                    token,
                    {
                        "from": owner,
                        "to": buyer,
                        "price": {"amount": f"{price}", "currency": "ETH"},
                        "marketplace": "opensea",
                    },
                )
            elif roll < 0.62:
                to = self.rng.choice(self.wallets)
                coll.owners[tid] = to
                yield self._base("transfer", coll, token, {"from": owner, "to": to})
            elif roll < 0.72:
                yield self._base("listing_cancelled", coll, token, {"seller": owner})
            elif roll < 0.85:
                price = round(coll.floor * self.rng.uniform(0.6, 0.95), 4)
                yield self._base(
                    "bid",
                    coll,
                    token,
                    {
                        "bidder": self.rng.choice(self.wallets),
                        "price": {"amount": f"{price}", "currency": "WETH"},
                    },
                )
            elif roll < 0.93:
                yield self._base("metadata_update", coll, token, {"traits": self.traits()})
            elif roll < 1 - self.fraud_share:
                yield self._base(
                    "social_signal",
                    coll,
                    None,
                    {"platform": "x", "metric": "mentions", "value": self.rng.randint(0, 500)},
                )
            else:
                yield self._base(
                    "fraud_finding",
                    coll,
                    token,
                    {
                        "finding_id": f"f-{self.counter}",
                        "kind": "wash_trading",
                        "severity": self.fraud_severity or self.rng.choice(["medium", "high", "critical"]),
                        "wallets": self.ring,
                        "evidence": {"round_trips": 3},
                    },
                )

    def take(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if n <= 0:
            return out
        for event in self.activity():
            out.append(event)
            if len(out) >= n:
                return out
        return out
