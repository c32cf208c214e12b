"""Wash-trading detection and the trust score (0-100, each factor's contribution explained). Pure.

Inputs and their sources:

* sales: every sale event of the collection, in quote currency. Optional ``data.buyer_funder`` and
  ``data.seller_funder`` (wallet addresses that first funded the buyer and seller) feed the
  common-funder rule; the event schema lets ``data`` carry these extra keys.
* creator verification: an optional boolean ``data.verified_creator`` on *any* event of the collection
  (marketplaces and registries attach it); the value of the latest such event in chain order wins.
  Unknown scores half of the factor's weight.
* fraud findings: ``fraud_finding`` events, last-writer-wins per ``finding_id`` in chain order, so a
  later ``status: resolved`` closes the finding. A finding without ``token_id`` is about the
  collection; one with a ``token_id`` or ``wallets`` also concerns those tokens and holders.

Wash rules (a flagged sale's whole price counts as wash volume):

* self-trade: seller and buyer are the same wallet;
* round trip: a sale of the token returns it, within 30 days, to a wallet that sold it before
  (A->B->A, also A->B->C->A) - both the outgoing and the returning sale are flagged;
* repeat buyer: one wallet buys the same token three or more times within 30 days;
* common funder: buyer and seller were funded by the same wallet, or one funded the other.

All rules look only at one token's sales, and a sale only ever adds flags (to itself and to the
token's sales within 30 days of it), so :class:`WashIndex` folds a new sale in from the sales of the
same buyer and seller near it in time: the cost follows those, not the token's whole history.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any

WINDOW_US = 30 * 86_400_000_000
#: The order in which :func:`wash_flags` lists a sale's rules (the order it finds them in).
RULES = ("self_trade", "common_funder", "round_trip", "repeat_buyer")
#: A plain float sum past this is certainly past 1 (its error is a few ulps per term).
_CAPPED = 1.0 + 1e-6
SEVERITY_PENALTY = {"low": 0.1, "medium": 0.3, "high": 0.6, "critical": 1.0}
#: A finding about one token or wallet weighs on the whole collection this much less.
TOKEN_FINDING_WEIGHT = 0.25

WEIGHTS = {
    "wash_trading": 30.0,
    "holder_concentration": 20.0,
    "creator_verification": 10.0,
    "fraud_findings": 25.0,
    "age_and_history": 15.0,
}
NFT_WEIGHTS = {"collection": 0.6, "token_wash_trading": 20.0, "token_fraud_findings": 20.0}


@dataclass(frozen=True)
class SaleRecord:
    """One sale as the trust and price engines need it; ``uid`` is ``source:id``."""

    key: tuple[int, int, str]
    uid: str
    at_us: int
    token_id: str
    seller: str
    buyer: str
    price: Decimal
    buyer_funder: str | None = None
    seller_funder: str | None = None

    @property
    def sort_key(self) -> tuple[tuple[int, int, str], str]:
        """Chain order, then identity: a total order over a token's sales."""
        return (self.key, self.uid)

    def to_list(self) -> list[Any]:
        """JSON-ready form."""
        return [
            list(self.key),
            self.uid,
            self.at_us,
            self.token_id,
            self.seller,
            self.buyer,
            str(self.price),
            self.buyer_funder,
            self.seller_funder,
        ]

    @classmethod
    def from_list(cls, raw: list[Any]) -> SaleRecord:
        """Inverse of :meth:`to_list`."""
        k = raw[0]
        return cls(
            (int(k[0]), int(k[1]), str(k[2])),
            raw[1],
            int(raw[2]),
            raw[3],
            raw[4],
            raw[5],
            Decimal(raw[6]),
            raw[7],
            raw[8],
        )


def wash_flags(sales: list[SaleRecord]) -> dict[str, list[str]]:
    """``uid -> rules that flag it`` for one token's sales (sorted by chain order)."""
    flags: dict[str, list[str]] = {}

    def flag(sale: SaleRecord, rule: str) -> None:
        rules = flags.setdefault(sale.uid, [])
        if rule not in rules:
            rules.append(rule)

    for i, sale in enumerate(sales):
        if sale.seller == sale.buyer:
            flag(sale, "self_trade")
        bf, sf = sale.buyer_funder, sale.seller_funder
        if (bf is not None and (bf == sf or bf == sale.seller)) or (sf is not None and sf == sale.buyer):
            flag(sale, "common_funder")
        for earlier in sales[:i]:
            if earlier.seller == sale.buyer and 0 <= sale.at_us - earlier.at_us <= WINDOW_US:
                flag(earlier, "round_trip")
                flag(sale, "round_trip")
    by_buyer: dict[str, list[SaleRecord]] = {}
    for sale in sales:
        by_buyer.setdefault(sale.buyer, []).append(sale)
    for buys in by_buyer.values():
        if len(buys) < 3:
            continue
        times = sorted(buys, key=lambda s: (s.at_us, s.sort_key))
        for i in range(len(times)):
            j = i
            while j + 1 < len(times) and times[j + 1].at_us - times[i].at_us <= WINDOW_US:
                j += 1
            if j - i + 1 >= 3:
                for sale in times[i : j + 1]:
                    flag(sale, "repeat_buyer")
    return flags


def _at(sale: SaleRecord) -> int:
    return sale.at_us


def _time_order(sale: SaleRecord) -> tuple[int, tuple[tuple[int, int, str], str]]:
    return (sale.at_us, sale.sort_key)


def _window(sales: list[SaleRecord], low: int, high: int) -> list[SaleRecord]:
    """The sales (sorted by time) with ``low <= at_us <= high``."""
    return sales[bisect_left(sales, low, key=_at) : bisect_right(sales, high, key=_at)]


def _repeat_runs(times: list[SaleRecord]) -> list[SaleRecord]:
    """Sales of one buyer (sorted by time) in a run of three or more within the window."""
    out: list[SaleRecord] = []
    j = 0
    for i in range(len(times)):
        j = max(j, i)
        while j + 1 < len(times) and times[j + 1].at_us - times[i].at_us <= WINDOW_US:
            j += 1
        if j - i + 1 >= 3:
            out.extend(times[i : j + 1])
    return out


@dataclass
class WashIndex:
    """Wash flags and wash volumes kept up to date sale by sale; equal to :func:`wash_flags` per token.

    Every rule is monotone in the set of sales (a new sale can add flags, never remove one), so adding
    a sale only has to find the flags it creates: its own local rules, round trips with the same
    token's sales by its buyer (as seller) and to its seller (as buyer) within 30 days, and runs of
    the buyer's purchases of the token within 30 days either side. Sums use 80 digits, like the
    from-scratch twin, so they are exact and equal whatever order the sales came in.
    """

    #: token -> sale uid -> rules, each list in :data:`RULES` order.
    flags: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    token_volume: dict[str, Decimal] = field(default_factory=dict)
    token_wash_volume: dict[str, Decimal] = field(default_factory=dict)
    wash_volume: Decimal = Decimal(0)
    #: Sales flagged by any rule, and sales in all.
    flagged: int = 0
    sales: int = 0
    #: ``(token, wallet) -> its sales of the token as seller / as buyer``, sorted by time.
    by_seller: dict[tuple[str, str], list[SaleRecord]] = field(default_factory=dict)
    by_buyer: dict[tuple[str, str], list[SaleRecord]] = field(default_factory=dict)

    @classmethod
    def build(cls, sales: Mapping[str, list[SaleRecord]]) -> WashIndex:
        """The from-scratch twin: :func:`wash_flags` over each token's sales."""
        index = cls()
        with localcontext() as ctx:
            ctx.prec = 80
            for tid, records in sales.items():
                for sale in records:
                    index._index(sale)
                flags = wash_flags(records)
                flagged = sum((s.price for s in records if s.uid in flags), Decimal(0))
                index.token_wash_volume[tid] = flagged
                index.token_volume[tid] = sum((s.price for s in records), Decimal(0))
                index.wash_volume += flagged
                index.flagged += len(flags)
                index.sales += len(records)
                if flags:
                    index.flags[tid] = flags
        return index

    def _index(self, sale: SaleRecord) -> None:
        tid = sale.token_id
        insort(self.by_seller.setdefault((tid, sale.seller), []), sale, key=_time_order)
        insort(self.by_buyer.setdefault((tid, sale.buyer), []), sale, key=_time_order)

    def add(self, sale: SaleRecord) -> None:
        """Fold in one new sale (never the same ``uid`` twice)."""
        self._index(sale)
        tid, at = sale.token_id, sale.at_us
        found: list[tuple[SaleRecord, str]] = []
        if sale.seller == sale.buyer:
            found.append((sale, "self_trade"))
        bf, sf = sale.buyer_funder, sale.seller_funder
        if (bf is not None and (bf == sf or bf == sale.seller)) or (sf is not None and sf == sale.buyer):
            found.append((sale, "common_funder"))
        # Round trips with the new sale as the later one (an earlier sale by its buyer) ...
        for earlier in _window(self.by_seller.get((tid, sale.buyer), []), at - WINDOW_US, at):
            if earlier.sort_key < sale.sort_key:
                found += [(earlier, "round_trip"), (sale, "round_trip")]
        # ... and as the earlier one (a later sale back to its seller).
        for later in _window(self.by_buyer.get((tid, sale.seller), []), at, at + WINDOW_US):
            if later.sort_key > sale.sort_key:
                found += [(sale, "round_trip"), (later, "round_trip")]
        buys = self.by_buyer[(tid, sale.buyer)]
        if len(buys) >= 3:
            # Any new run of three holds the new sale, so all of it lies within a window either side.
            found += [
                (s, "repeat_buyer") for s in _repeat_runs(_window(buys, at - WINDOW_US, at + WINDOW_US))
            ]
        with localcontext() as ctx:
            ctx.prec = 80
            self.sales += 1
            self.token_volume[tid] = self.token_volume.get(tid, Decimal(0)) + sale.price
            token_flags = self.flags.get(tid)
            for record, rule in found:
                if token_flags is None:
                    token_flags = self.flags[tid] = {}
                rules = token_flags.get(record.uid)
                if rules is None:
                    rules = token_flags[record.uid] = []
                    self.flagged += 1
                    self.wash_volume += record.price
                    self.token_wash_volume[tid] = self.token_wash_volume.get(tid, Decimal(0)) + record.price
                if rule not in rules:
                    rules.append(rule)
                    rules.sort(key=RULES.index)


@dataclass(frozen=True)
class Finding:
    """A fraud finding's latest state (last writer wins by chain order)."""

    finding_id: str
    key: tuple[int, int, str]
    kind: str
    severity: str
    status: str
    token_id: str | None = None
    wallets: tuple[str, ...] = ()

    @property
    def open(self) -> bool:
        """Whether the finding is still open."""
        return self.status == "open"


@dataclass
class TrustResult:
    """A score 0-100 and the factors that make it up (contributions sum to the score)."""

    score: float
    factors: list[dict[str, Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        """``{score, factors}`` for the read models, rounded for display."""
        return {
            "score": round(self.score, 2),
            "factors": [
                {**f, "value": _round(f["value"]), "contribution": round(f["contribution"], 2)}
                for f in self.factors
            ],
        }


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def finding_penalty(findings: Iterable[Finding], weight: float = 1.0) -> float:
    """Summed severity penalties of open findings, capped at 1."""
    terms: list[float] = []
    running = 0.0
    for f in findings:
        if f.open:
            term = SEVERITY_PENALTY.get(f.severity, 0.3) * weight
            terms.append(term)
            running += term
            if running > _CAPPED:
                # Every term is positive and the plain sum is off by far less than the margin, so the
                # exact sum is past the cap too: a wallet named by many findings costs a few terms.
                return 1.0
    return min(1.0, math.fsum(terms))


def collection_trust(
    *,
    wash_share: float,
    top10: float,
    gini_value: float,
    holders: int,
    supply: int,
    verified: bool | None,
    findings: Mapping[str, Finding],
    age_days: int,
    clean_sales: int,
) -> TrustResult:
    """The collection's trust score from its figures (see the module docstring for the inputs)."""
    factors: list[dict[str, Any]] = []
    w = WEIGHTS["wash_trading"]
    factors.append(
        {
            "factor": "wash_trading",
            "value": wash_share,
            "contribution": w * (1.0 - wash_share),
            "explanation": f"{wash_share:.1%} of volume is wash-flagged; clean volume earns up to {w:g}",
        }
    )
    w = WEIGHTS["holder_concentration"]
    if supply > 0:
        spread = holders / supply
        sub = 1.0 - (0.4 * top10 + 0.4 * gini_value + 0.2 * (1.0 - spread))
        contribution = w * min(1.0, max(0.0, sub))
        text = f"top 10 hold {top10:.1%}, Gini {gini_value:.2f}, {holders} holders for {supply} tokens"
    else:
        spread, contribution, text = 0.0, w / 2, "no tokens held yet: neutral"
    factors.append(
        {
            "factor": "holder_concentration",
            "value": {"top10_share": top10, "gini": gini_value, "holders_per_token": spread},
            "contribution": contribution,
            "explanation": text,
        }
    )
    w = WEIGHTS["creator_verification"]
    factors.append(
        {
            "factor": "creator_verification",
            "value": verified,
            "contribution": w if verified else (w / 2 if verified is None else 0.0),
            "explanation": {True: "creator verified", False: "creator not verified", None: "unknown: half"}[
                verified
            ],
        }
    )
    w = WEIGHTS["fraud_findings"]
    collection_level = [f for f in findings.values() if f.open and f.token_id is None and not f.wallets]
    scoped = [f for f in findings.values() if f.open and (f.token_id is not None or f.wallets)]
    penalty = min(1.0, finding_penalty(collection_level) + finding_penalty(scoped, TOKEN_FINDING_WEIGHT))
    factors.append(
        {
            "factor": "fraud_findings",
            "value": len(collection_level) + len(scoped),
            "contribution": w * (1.0 - penalty),
            "explanation": (
                f"{len(collection_level)} open collection finding(s),"
                f" {len(scoped)} open token/wallet finding(s)"
            ),
        }
    )
    w = WEIGHTS["age_and_history"]
    age_part = min(1.0, max(0.0, age_days) / 180.0)
    history_part = min(1.0, math.log10(1 + clean_sales) / 3.0)
    factors.append(
        {
            "factor": "age_and_history",
            "value": {"age_days": age_days, "clean_sales": clean_sales},
            "contribution": w * (0.5 * age_part + 0.5 * history_part),
            "explanation": f"{age_days:.0f} days old (full at 180), {clean_sales} clean sales (full at 999)",
        }
    )
    return TrustResult(math.fsum(f["contribution"] for f in factors), factors)


def nft_trust(collection: TrustResult, token_wash_share: float, findings: Iterable[Finding]) -> TrustResult:
    """An NFT's trust: most of its collection's, plus its own sales and findings about it or its owner."""
    mine = [f for f in findings if f.open]
    penalty = finding_penalty(mine)
    factors: list[dict[str, Any]] = [
        {
            "factor": "collection",
            "value": collection.score,
            "contribution": NFT_WEIGHTS["collection"] * collection.score,
            "explanation": "60% of the collection's trust score",
        },
        {
            "factor": "token_wash_trading",
            "value": token_wash_share,
            "contribution": NFT_WEIGHTS["token_wash_trading"] * (1.0 - token_wash_share),
            "explanation": f"{token_wash_share:.1%} of this token's volume is wash-flagged",
        },
        {
            "factor": "token_fraud_findings",
            "value": len(mine),
            "contribution": NFT_WEIGHTS["token_fraud_findings"] * (1.0 - penalty),
            "explanation": f"{len(mine)} open finding(s) about this token or its owner",
        },
    ]
    return TrustResult(math.fsum(float(f["contribution"]) for f in factors), factors)
