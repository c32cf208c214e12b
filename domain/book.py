"""The state of one collection and its tokens, folded from events, and every engine hung off it. Pure.

Every rule is order-independent so that applying events incrementally, in whatever order they arrive,
gives the same views as a full recompute over the events sorted in chain order:

* last-writer-wins by the event's chain position (``order_key``) for owner, traits, listing, last sale,
  fraud findings (per ``finding_id``) and creator verification;
* commutative facts: volume and sales count (sums), the set of sales (keyed by ``source:id``), each
  token's listing history (a set of dated listing/end entries), daily volumes;
* the book's clock is the latest ``occurred_at`` it has seen (never the wall clock); the first seen is
  the earliest.

Everything else (rarity, floor, holder statistics, time-weighted floor, wash flags, trust, price
estimates, risk, market condition) is a function of those facts, maintained incrementally where it
pays (``domain.rarity``, ``domain.stats``) and derived from scratch by :meth:`CollectionBook.recompute`
and :meth:`from_dict`. A sale of a token whose mint has not arrived yet is simply folded: the mint,
when it comes, loses the owner race it would have lost in chain order anyway.

``apply`` returns a :class:`Change`: the tokens whose views moved past the epsilons of
:class:`~domain.significance.Epsilons` (measured against the last propagated value) and the headline
metrics that did, as ``(before, after)``. ``apply_batch`` does the same for a batch, comparing the
headlines once for the whole batch, and sets aside events that fail without a trace of them.

Cost per event: folding an event touches its token, the sales of its buyer and seller near it in
time (wash rules), the neighbours of its listing-history entry (floor intervals) and, for a trait
change, the rarity buckets it leaves and joins; nothing scales with the length of the history. Per
batch: the collection headline, the floor series from the earliest change (the listings live then
plus what came after) and each touched token's headline before and after.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any

from nftpulse.domain import market as market_engine
from nftpulse.domain import price as price_engine
from nftpulse.domain import risk as risk_engine
from nftpulse.domain import trust as trust_engine
from nftpulse.domain.events import ZERO_ADDRESS, Event, EventType
from nftpulse.domain.rarity import RarityIndex, RarityPlan, RarityPublisher
from nftpulse.domain.significance import Epsilons, moved
from nftpulse.domain.stats import (
    DAY_US,
    OPEN,
    FloorSeries,
    Interval,
    ListingEntry,
    ListingIndex,
    first_difference,
    gini,
    holding_hist,
    listing_interval,
    listing_intervals,
    to_us,
    top_share,
    utc_iso,
)
from nftpulse.domain.trust import Finding, SaleRecord, TrustResult, WashIndex

OrderKey = tuple[int, int, str]
RateLookup = Callable[[str, str, datetime], Decimal | None]
"""``(base, quote, at) -> rate``: how many ``quote`` one ``base`` was worth at ``at``, or None."""

NATIVE_CURRENCY = {"polygon": "POL", "bsc": "BNB", "avalanche": "AVAX"}
"""Each chain's quote currency for collection statistics; every other chain quotes in ETH."""

_SAME_AS = {"WETH": "ETH", "MATIC": "POL", "WMATIC": "POL", "WPOL": "POL", "WBNB": "BNB", "WAVAX": "AVAX"}

TWAP_WINDOW_US = DAY_US
"""The time-weighted floor averages the floor over the last 24 hours of the book's clock."""

#: Collection figures that every NFT view is derived from: a significant move re-derives all NFTs.
NFT_DRIVERS = ("floor", "twap_floor", "trust", "risk", "day")

#: Headline metrics and the epsilon rule each is compared with (None: any change).
_COLLECTION_RULES: dict[str, tuple[str | None, str | None]] = {
    "floor": ("rel", "floor_rel"),
    "twap_floor": ("rel", "twap_rel"),
    "volume": ("rel", "volume_rel"),
    "sales_count": (None, None),
    "holders_count": (None, None),
    "supply": (None, None),
    "listed_count": (None, None),
    "top10_share": ("abs", "share_abs"),
    "gini": ("abs", "share_abs"),
    "wash_share": ("abs", "share_abs"),
    "trust": ("abs", "trust_abs"),
    "risk": (None, None),
    "trend": (None, None),
    "anomaly": (None, None),
    "anomaly_z": ("zmap", "z_abs"),
    "trust_factors": ("zmap", "trust_abs"),
    "risk_reasons": (None, None),
    "open_findings": (None, None),
    "age_days": (None, None),
    "clean_sales": (None, None),
    "verified_creator": (None, None),
    "rarity_entropy": ("rel", "entropy_rel"),
    "day": (None, None),
}
_HIDDEN_METRICS = frozenset(
    {"day", "anomaly_z", "trust_factors", "risk_reasons", "open_findings", "age_days", "clean_sales"}
)


def _zmap_moved(before: Any, after: Any, eps: float) -> bool:
    """Modified z-scores per series: moved when the series set, a None, or a score moved by eps."""
    if not isinstance(before, dict) or not isinstance(after, dict) or before.keys() != after.keys():
        return before != after
    return any(
        (x is None) != (y is None) or (x is not None and y is not None and moved(x, y, abs_=eps))
        for x, y in ((before[k], after[k]) for k in after)
    )


class UnpricedEventError(ValueError):
    """A price could not be converted into the collection's quote currency: permanent until a rate arrives."""


class InconsistentEventError(ValueError):
    """An event contradicts the collection it claims to belong to: permanent, needs a human."""


#: What an event's data can raise while it is read: :meth:`CollectionBook.apply_batch` sets such an
#: event aside (UnpricedEventError and InconsistentEventError are ValueErrors).
EVENT_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, TypeError, ArithmeticError)


def quote_currency(chain: str) -> str:
    """The currency a chain's collection statistics are quoted in."""
    return NATIVE_CURRENCY.get(chain, "ETH")


def normalise_currency(symbol: str) -> str:
    """Fold wrapped and renamed symbols into the currency they stand for."""
    symbol = symbol.upper()
    return _SAME_AS.get(symbol, symbol)


@dataclass
class Change:
    """What one or more applied events moved: the read models to rewrite and the metrics that changed."""

    nfts: set[str] = field(default_factory=set)
    collection: bool = False
    #: ``(entity_key, metric) -> (before, after)``; before is the value ahead of the first event.
    metrics: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict)
    #: A collection figure every NFT view derives from moved: ``nfts`` then holds every token.
    all_nfts: bool = False

    def merge(self, other: Change) -> None:
        """Fold a later change into this one, keeping each metric's first ``before``."""
        self.nfts |= other.nfts
        self.collection |= other.collection
        self.all_nfts |= other.all_nfts
        for key, (before, after) in other.metrics.items():
            first = self.metrics.get(key, (before, after))[0]
            self.metrics[key] = (first, after)

    def note(self, entity: str, metric: str, before: Any, after: Any) -> None:
        """Record a metric move (ignored when nothing moved)."""
        if before != after:
            self.merge(Change(metrics={(entity, metric): (before, after)}))

    @property
    def empty(self) -> bool:
        """Nothing to rewrite."""
        return not self.nfts and not self.collection


@dataclass
class Token:
    """One token's last-writer-wins state."""

    token_id: str
    owner: str | None = None
    owner_key: OrderKey | None = None
    minted: bool = False
    burned: bool = False
    traits: dict[str, Any] = field(default_factory=dict)
    traits_key: OrderKey | None = None
    last_sale: dict[str, Any] | None = None
    last_sale_key: OrderKey | None = None
    listing: dict[str, Any] | None = None
    listing_key: OrderKey | None = None

    @property
    def live(self) -> bool:
        """Owned and not burned: part of the collection's supply."""
        return self.owner is not None and not self.burned


def _entry_sort_key(entry: ListingEntry) -> tuple[tuple[int, int, str], str, str, str]:
    return (entry[0], entry[1], entry[2] or "", entry[3] or "")


def _newer(candidate: OrderKey, current: OrderKey | None) -> bool:
    return current is None or candidate > current


def _key(v: Any) -> OrderKey | None:
    # JSON gives ints and strings back as they went in: only the list needs to become a tuple.
    return None if v is None else tuple(v)  # type: ignore[return-value]


@dataclass
class _Derived:
    """Indexes and caches rebuilt from the facts; never serialised."""

    rarity: RarityIndex = field(default_factory=RarityIndex)
    publisher: RarityPublisher = field(default_factory=RarityPublisher)
    listings: ListingIndex = field(default_factory=ListingIndex)
    holdings: dict[str, set[str]] = field(default_factory=dict)
    hold_hist: dict[int, int] = field(default_factory=dict)
    wash: WashIndex = field(default_factory=WashIndex)
    #: ``source:id`` of every sale folded (kept in bulk mode too: it is how a repeated sale is spotted).
    sale_uids: set[str] = field(default_factory=set)
    #: finding ids by the token they name and by each wallet they name.
    findings_by_token: dict[str, set[str]] = field(default_factory=dict)
    findings_by_wallet: dict[str, set[str]] = field(default_factory=dict)
    #: token -> ((sales, flagged sales) when computed, its last sale not wash-flagged).
    last_clean: dict[str, tuple[tuple[int, int], SaleRecord | None]] = field(default_factory=dict)
    #: token -> its sales as :meth:`SaleRecord.to_list` rows, in the order of ``CollectionBook.sales``.
    sale_rows: dict[str, list[list[Any]]] = field(default_factory=dict)
    history_version: int = 0
    #: Every listing interval (derived from ``listing_history``) as ``(end, start, price)``, sorted:
    #: the intervals live after a moment are a suffix (see :meth:`FloorSeries.update`).
    by_end: list[tuple[int, int, Decimal]] = field(default_factory=list)
    #: Earliest time a change since the last series build can affect (OPEN: none).
    dirty_since: int = OPEN
    series: tuple[int, FloorSeries] | None = None
    sales_version: int = 0
    market: tuple[tuple[int, int, str | None], dict[str, Any]] | None = None
    #: ``(history version, clock)`` and the TWAP floor then: every NFT view of a batch reads it.
    twap: tuple[tuple[int, int], Decimal | None] | None = None
    headline: tuple[int, dict[str, Any], TrustResult, dict[str, Any]] | None = None
    #: Bumped on every fold and rebuild: the key of the collection-level caches.
    state_version: int = 0


#: A book's stored history is rewritten whole once it is spread over this many saves, so that loading it
#: reads a bounded number of rows; in between, each save stores only the entries it added.
MAX_HISTORY_SEGMENTS = 64


@dataclass
class _UnsavedHistory:
    """What of a book's grow-only history (sales, listing entries) its storage does not have yet.

    The history is most of a busy collection's book (megabytes) and only grows, by a few entries per
    batch, while the rest is small: so a save stores the rest whole and the history's new entries as a
    segment of their own, instead of the whole book every batch (see ``store.entities.save_books``).
    """

    sales: list[SaleRecord] = field(default_factory=list)
    listings: list[tuple[str, ListingEntry]] = field(default_factory=list)
    #: The stored history is the book's minus the entries above. False for a book recomputed from the log
    #: or loaded from a whole-book save: its next save rewrites the history whole.
    stored: bool = True
    #: Segments the stored history is spread over.
    segments: int = 0


@dataclass
class CollectionBook:
    """One collection folded from its events: facts, derived indexes and the views read from them."""

    chain: str
    contract: str
    tokens: dict[str, Token] = field(default_factory=dict)
    volume: Decimal = Decimal(0)
    sales_count: int = 0
    holder_counts: dict[str, int] = field(default_factory=dict)
    clock: str | None = None
    first_seen: str | None = None
    #: token -> its sales sorted by chain order.
    sales: dict[str, list[SaleRecord]] = field(default_factory=dict)
    #: token -> listing/end entries sorted by chain order (the time-weighted floor's facts).
    listing_history: dict[str, list[ListingEntry]] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)
    finding_uids: dict[str, str] = field(default_factory=dict)
    verified: bool | None = None
    verified_at: tuple[OrderKey, str] | None = None
    creator: str | None = None
    creator_at: tuple[OrderKey, str] | None = None
    daily_volume: dict[int, Decimal] = field(default_factory=dict)
    #: Last propagated collection headline (significance is measured against it).
    published: dict[str, Any] = field(default_factory=dict)
    epsilons: Epsilons = field(default_factory=Epsilons, compare=False)
    price_params: price_engine.PriceParams = field(default_factory=price_engine.PriceParams, compare=False)
    _d: _Derived = field(default_factory=_Derived, repr=False, compare=False)
    _bulk: bool = field(default=False, repr=False, compare=False)
    _unsaved: _UnsavedHistory = field(default_factory=_UnsavedHistory, repr=False, compare=False)

    @classmethod
    def empty(
        cls,
        chain: str,
        contract: str,
        epsilons: Epsilons | None = None,
        price_params: price_engine.PriceParams | None = None,
    ) -> CollectionBook:
        """A book with no events yet; ``epsilons`` and ``price_params`` default to the dataclasses' own."""
        return cls(
            chain=chain,
            contract=contract.lower(),
            epsilons=epsilons or Epsilons(),
            price_params=price_params or price_engine.PriceParams(),
        )

    @classmethod
    def recompute(
        cls,
        chain: str,
        contract: str,
        events: Iterable[Event],
        rates: RateLookup,
        epsilons: Epsilons | None = None,
        price_params: price_engine.PriceParams | None = None,
    ) -> CollectionBook:
        """The reference: fold every event of the collection in chain order, then derive from scratch."""
        book = cls.empty(chain, contract, epsilons, price_params)
        book._bulk = True
        for event in sorted(events, key=lambda e: (e.order_key, e.source, e.id)):
            book.apply(event, rates)
        book._bulk = False
        book._unsaved = _UnsavedHistory(stored=False)
        book._rebuild()
        book.published = book._collection_headline()
        book._d.publisher.republish(book._d.rarity)
        return book

    # -- derived figures ---------------------------------------------------------------------------

    @property
    def currency(self) -> str:
        """The quote currency of the collection's figures."""
        return quote_currency(self.chain)

    @property
    def key(self) -> str:
        """``collection:chain:contract``."""
        return f"collection:{self.chain}:{self.contract}"

    def nft_key(self, token_id: str) -> str:
        """``nft:chain:contract:token_id``."""
        return f"nft:{self.chain}:{self.contract}:{token_id}"

    @property
    def rarity(self) -> RarityIndex:
        """The live rarity index (read-only for callers)."""
        return self._d.rarity

    @property
    def holdings(self) -> dict[str, set[str]]:
        """wallet -> tokens it holds (read-only for callers)."""
        return self._d.holdings

    @property
    def listing_index(self) -> ListingIndex:
        """Active listings by price (read-only for callers)."""
        return self._d.listings

    def active_listings(self) -> list[Token]:
        """Tokens with an active listing."""
        return [self.tokens[tid] for tid in self._d.listings.entries]

    @property
    def floor(self) -> Decimal | None:
        """The cheapest active listing in the quote currency."""
        return self._d.listings.floor

    @property
    def supply(self) -> int:
        """Live tokens."""
        return self._d.rarity.n

    @property
    def holders(self) -> int:
        """Wallets holding at least one live token."""
        return len(self.holder_counts)

    @property
    def clock_us(self) -> int | None:
        """The book's clock in microseconds since the epoch."""
        return None if self.clock is None else to_us(self.clock)

    @property
    def wash_share(self) -> float:
        """Wash-flagged share of all volume."""
        if self.volume <= 0:
            return 0.0
        return float(self._d.wash.wash_volume / self.volume)

    def token_wash_share(self, token_id: str) -> float:
        """Wash-flagged share of one token's volume."""
        total = self._d.wash.token_volume.get(token_id, Decimal(0))
        if total <= 0:
            return 0.0
        return float(self._d.wash.token_wash_volume.get(token_id, Decimal(0)) / total)

    def wash_rules(self, token_id: str) -> dict[str, list[str]]:
        """``sale uid -> wash rules`` for one token's flagged sales."""
        return self._d.wash.flags.get(token_id, {})

    def twap_floor(self) -> Decimal | None:
        """Time-weighted floor over the last :data:`TWAP_WINDOW_US` of the book's clock."""
        now = self.clock_us
        if now is None:
            return None
        key = (self._d.history_version, now)
        if self._d.twap is None or self._d.twap[0] != key:
            self._d.twap = (key, self._series().average(now - TWAP_WINDOW_US, now))
        return self._d.twap[1]

    def _series(self) -> FloorSeries:
        version = self._d.history_version
        if self._d.series is None or self._d.series[0] != version:
            # Updated in place from the first moment a change since the last build can affect: the
            # series is only ever read through this cache, so nobody else holds the old steps.
            series = FloorSeries() if self._d.series is None else self._d.series[1]
            series.update(self._d.by_end, OPEN if self._d.series is None else self._d.dirty_since)
            self._d.series = (version, series)
            self._d.dirty_since = OPEN
        return self._d.series[1]

    def market(self) -> dict[str, Any]:
        """``{trend, anomaly}`` from the daily floor and volume series up to the clock's day."""
        now = self.clock_us
        cache_key = (self._d.history_version, self._d.sales_version, self.clock)
        if self._d.market is not None and self._d.market[0] == cache_key:
            return self._d.market[1]
        result: dict[str, Any]
        if now is None:
            result = market_engine.condition([], [])
        else:
            series = self._series()
            days = [d for d in self.daily_volume] + ([series.times[0] // DAY_US] if series.times else [])
            first = min(days) if days else now // DAY_US
            floors: list[float | None] = []
            volumes: list[float] = []
            for day in range(first, now // DAY_US + 1):
                start, end = day * DAY_US, min((day + 1) * DAY_US, now)
                avg = series.average(start, end) if end > start else None
                floors.append(None if avg is None else float(avg))
                volumes.append(float(self.daily_volume.get(day, Decimal(0))))
            result = market_engine.condition(floors, volumes)
        self._d.market = (cache_key, result)
        return result

    def findings_for(self, token_id: str) -> list[Finding]:
        """Findings about the token itself or its current owner."""
        token = self.tokens.get(token_id)
        owner = token.owner if token is not None and token.live else None
        # From the indexes, not a scan: findings pile up with history. Sorted by id (every reader
        # either sorts by id or only counts and sums).
        fids = self._d.findings_by_token.get(token_id, set())
        if owner is not None and owner in self._d.findings_by_wallet:
            fids = fids | self._d.findings_by_wallet[owner]
        return [self.findings[fid] for fid in sorted(fids)]

    def _findings_of(self, token_id: str) -> list[Finding]:
        """:meth:`findings_for` in no particular order (for readers that only count, sum or sort)."""
        token = self.tokens.get(token_id)
        owner = token.owner if token is not None and token.live else None
        fids = self._d.findings_by_token.get(token_id, set())
        if owner is not None and owner in self._d.findings_by_wallet:
            fids = fids | self._d.findings_by_wallet[owner]
        return [self.findings[fid] for fid in fids]

    def _index_finding(self, finding: Finding, delta: int) -> None:
        """Add (+1) or drop (-1) one finding in the token and wallet indexes."""
        keys = [(self._d.findings_by_token, finding.token_id)] if finding.token_id is not None else []
        keys += [(self._d.findings_by_wallet, w) for w in finding.wallets if isinstance(w, str)]
        for index, key in keys:
            if delta > 0:
                index.setdefault(key, set()).add(finding.finding_id)
            else:
                held = index.get(key)
                if held is not None:
                    held.discard(finding.finding_id)
                    if not held:
                        del index[key]

    def _collection_parts(self) -> tuple[dict[str, Any], TrustResult, dict[str, Any]]:
        """The collection headline, its trust and its risk; cached per state of their inputs."""
        cache_key = self._d.state_version
        if self._d.headline is not None and self._d.headline[0] == cache_key:
            return self._d.headline[1], self._d.headline[2], self._d.headline[3]
        floor, twap = self.floor, self.twap_floor()
        hist = self._d.hold_hist
        top10, gini_value = top_share(hist), gini(hist)
        now = self.clock_us
        # Whole days: the age factor moves once a day, not on every tick of the clock.
        age_days = 0 if now is None or self.first_seen is None else (now - to_us(self.first_seen)) // DAY_US
        clean = self._d.wash.sales - self._d.wash.flagged
        trust = trust_engine.collection_trust(
            wash_share=self.wash_share,
            top10=top10,
            gini_value=gini_value,
            holders=self.holders,
            supply=sum(size * count for size, count in hist.items()),
            verified=self.verified,
            findings=self.findings,
            age_days=age_days,
            clean_sales=clean,
        )
        market = self.market()
        risk = risk_engine.collection_risk(
            findings=self.findings.values(),
            trust=trust.score,
            wash_share=self.wash_share,
            anomaly=bool(market["anomaly"]["outlier"]),
        )
        headline = {
            "floor": None if floor is None else str(floor),
            "twap_floor": None if twap is None else str(twap),
            "volume": str(self.volume),
            "sales_count": self.sales_count,
            "holders_count": self.holders,
            "supply": self.supply,
            "listed_count": len(self._d.listings),
            "top10_share": round(top10, 6),
            "gini": round(gini_value, 6),
            "wash_share": round(self.wash_share, 6),
            "trust": trust.score,
            "risk": risk["level"],
            "trend": market["trend"],
            "anomaly": bool(market["anomaly"]["outlier"]),
            "anomaly_z": {k: v["z"] for k, v in market["anomaly"].items() if isinstance(v, dict)},
            "trust_factors": {f["factor"]: round(f["contribution"], 2) for f in trust.factors},
            "risk_reasons": [[r["code"], r["level"], r["detail"]] for r in risk["reasons"]],
            "open_findings": sum(1 for f in self.findings.values() if f.open),
            "age_days": age_days,
            "clean_sales": clean,
            "verified_creator": self.verified,
            "rarity_entropy": round(self._d.rarity.entropy, 6),
            "day": None if now is None else now // DAY_US,
        }
        self._d.headline = (cache_key, headline, trust, risk)
        return headline, trust, risk

    def _collection_headline(self) -> dict[str, Any]:
        return dict(self._collection_parts()[0])

    def _nft_headline(self, token_id: str) -> dict[str, Any]:
        """The figures of :meth:`nft_view` a change is judged by, without building the whole view
        (its reasons and factors grow with the findings about the token's owner)."""
        t = self.tokens[token_id]
        _, coll_trust, coll_risk = self._collection_parts()
        findings = self._findings_of(token_id)
        token_wash = self.token_wash_share(token_id)
        owner = t.owner if t.live else None
        return {
            "owner": owner,
            "trust": round(trust_engine.nft_trust(coll_trust, token_wash, findings).score, 2),
            "risk": risk_engine.nft_risk_level(
                collection=coll_risk, findings=findings, token_wash_share=token_wash
            ),
            "price_estimate": self._price_estimate(token_id)["value"],
            "rarity_rank": self._d.rarity.rank(token_id),
            "_core": (owner, t.burned, t.traits, t.last_sale, self._active_listing(t)),
        }

    # -- applying events ---------------------------------------------------------------------------

    def apply(self, event: Event, rates: RateLookup) -> Change:
        """Fold one event in and report what moved past the epsilons; raises what the event raises.

        The book is left as it was when the event raises one of :data:`EVENT_ERRORS`.
        """
        if self._bulk:
            self._fold(event, rates)
            return Change()
        change, failed = self.apply_batch([event], rates)
        if failed:
            raise failed[0][1]
        return change

    def apply_batch(
        self, events: Sequence[Event], rates: RateLookup
    ) -> tuple[Change, list[tuple[Event, Exception]]]:
        """Fold ``events`` in the given order and report what the whole batch moved past the epsilons.

        Returns the merged :class:`Change` and the events that raised one of :data:`EVENT_ERRORS`
        (a price without a rate, an event of another collection, malformed data) with their errors.
        Such an event is read in full before anything is changed, so it leaves the book exactly as
        if it had never been applied, and the rest of the batch goes on.

        The headline metrics are compared once per batch rather than once per event: the collection
        headline and the rarity publisher after the last event, each NFT's headline before the first
        and after the last. ``before`` in ``Change.metrics`` is the value ahead of the batch; a move
        that a later event of the batch undoes is not reported. With one event this is exactly
        :meth:`apply`.
        """
        failed: list[tuple[Event, Exception]] = []
        if self._bulk:
            for event in events:
                try:
                    self._fold(event, rates)
                except EVENT_ERRORS as exc:
                    failed.append((event, exc))
            return Change(), failed
        # Every token whose own inputs the batch may change, read against the book as it is now: a
        # token an earlier event moves into a wallet a later finding names is an event's token itself.
        owns = [self._own_tokens(event) for event in events]
        candidates = set().union(*owns)
        before = {tid: self._nft_headline(tid) for tid in candidates if tid in self.tokens}
        plans: list[RarityPlan] = []
        # Only the tokens of events that were folded are compared: a batch with a failing event then
        # reports exactly what the batch without it reports.
        own: set[str] = set()
        for event, mine in zip(events, owns, strict=True):
            try:
                plan = self._fold(event, rates)
            except EVENT_ERRORS as exc:
                failed.append((event, exc))
                continue
            own |= mine
            if event.type == EventType.FRAUD_FINDING:
                # A finding that lost its race leaves the winner's wallets: their holders are own too.
                own |= self._own_tokens(event)
            if plan is not None:
                plans.append(plan)
        change = Change()
        if len(failed) == len(events):
            return change, failed
        eps = self.epsilons

        after = self._collection_headline()
        if not self.published:
            self.published = {k: None for k in after}
        drivers = False
        for metric, value in after.items():
            kind, name = _COLLECTION_RULES[metric]
            threshold = None if name is None else getattr(eps, name)
            shown = self.published.get(metric)
            if moved(
                shown,
                value,
                rel=threshold if kind == "rel" else None,
                abs_=threshold if kind == "abs" else None,
            ):
                self.published[metric] = value
                change.collection = True
                drivers |= metric in NFT_DRIVERS
                if metric not in _HIDDEN_METRICS:
                    change.note(self.key, metric, shown, value)
        if drivers:
            change.all_nfts = True
            change.nfts |= set(self.tokens)

        rarity = self._d.rarity
        # The smallest rank epsilon any plan of the batch saw: the drift bound stays an upper bound.
        rank_eps = min([eps.rank_eps(rarity.n), *(eps.rank_eps(p.n[1]) for p in plans)])
        settled = self._d.publisher.settle_batch(rarity, plans, eps.rarity_score_abs, rank_eps)
        for token_id, (shown_r, now_r) in settled.items():
            change.nfts.add(token_id)
            change.note(self.nft_key(token_id), "rarity_rank", shown_r and shown_r[1], now_r and now_r[1])
            change.note(self.nft_key(token_id), "rarity_score", shown_r and shown_r[0], now_r and now_r[0])

        for token_id in own:
            if token_id not in self.tokens:
                continue
            now_h = self._nft_headline(token_id)
            was = before.get(token_id)
            entity = self.nft_key(token_id)
            dirty = was is None or was["_core"] != now_h["_core"]
            for metric in ("owner", "trust", "risk", "price_estimate", "rarity_rank"):
                old = None if was is None else was[metric]
                new = now_h[metric]
                if metric == "trust":
                    hit = moved(old, new, abs_=eps.trust_abs)
                elif metric == "price_estimate":
                    hit = moved(old, new, rel=eps.price_rel)
                elif metric == "rarity_rank":
                    hit = False  # the publisher above decides rank significance
                else:
                    hit = moved(old, new)
                if hit:
                    dirty = True
                    change.note(entity, metric, old, new)
            if dirty:
                change.nfts.add(token_id)
        return change, failed

    def _own_tokens(self, event: Event) -> set[str]:
        """Tokens whose own inputs an event may change (the token, holdings of wallets a finding names)."""
        own: set[str] = set()
        if event.token_id is not None:
            own.add(event.token_id)
        if event.type == EventType.FRAUD_FINDING:
            holdings = self._d.holdings
            previous = self.findings.get(str(event.data.get("finding_id")))
            if previous is not None:
                if previous.token_id is not None:
                    own.add(previous.token_id)
                for wallet in previous.wallets:
                    if isinstance(wallet, str):
                        own |= holdings.get(wallet, set())
            wallets = event.data.get("wallets") or ()
            # Only strings can name a holder; anything else is left to the fold to reject.
            for wallet in wallets if isinstance(wallets, list | tuple) else ():
                if isinstance(wallet, str):
                    own |= holdings.get(wallet, set())
        return own

    def _fold(self, event: Event, rates: RateLookup) -> RarityPlan | None:
        """Fold the event's facts; maintain indexes unless in bulk mode. Returns the rarity plan made.

        Everything that can raise on the event's data (a missing field, a price without a rate, a
        malformed timestamp) is read first by the type's ``_PREPARE`` step; only then is anything
        changed, so a failing event leaves no trace and no snapshot is needed.
        """
        if event.chain != self.chain or event.contract != self.contract:
            raise InconsistentEventError(f"event for {event.collection_key} applied to {self.key}")
        prepare = _PREPARE.get(event.type)
        prepared = None if prepare is None else prepare(self, event, rates)
        self._d.state_version += 1
        stamp = event.occurred_at.isoformat()
        if self.clock is None or stamp > self.clock:
            self.clock = stamp
        if self.first_seen is None or stamp < self.first_seen:
            self.first_seen = stamp
        self._note_creator(event)
        token = self.tokens.get(event.token_id) if event.token_id is not None else None
        was_live = token is not None and token.live
        was_traits = token.traits if token is not None else None
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event, prepared)
        if self._bulk:
            return None
        plan = None
        token = self.tokens.get(event.token_id) if event.token_id is not None else None
        if token is not None:
            if token.live != was_live or (token.live and token.traits != was_traits):
                plan = self._d.rarity.plan(token.token_id, token.traits, live=token.live)
                self._d.rarity.commit(plan)
            self._sync_listing(token)
        self._d.listings.expire(self.clock)
        return plan

    def _note_creator(self, event: Event) -> None:
        uid = f"{event.source}:{event.id}"
        stamp = (event.order_key, uid)
        verified = event.data.get("verified_creator")
        if isinstance(verified, bool) and (self.verified_at is None or stamp > self.verified_at):
            self.verified, self.verified_at = verified, stamp
        creator = event.data.get("creator")
        if isinstance(creator, str) and (self.creator_at is None or stamp > self.creator_at):
            self.creator, self.creator_at = creator.lower(), stamp

    def _active_listing(self, token: Token) -> dict[str, Any] | None:
        listing = token.listing
        if listing is None or not token.live:
            return None
        expires = listing.get("expires_at")
        if expires is not None and self.clock is not None and expires <= self.clock:
            return None
        return listing

    def _sync_listing(self, token: Token) -> None:
        listing = self._active_listing(token)
        if listing is None:
            self._d.listings.put(token.token_id, None, None)
        else:
            self._d.listings.put(token.token_id, Decimal(listing["price"]), listing.get("expires_at"))

    def _token(self, token_id: str) -> Token:
        token = self.tokens.get(token_id)
        if token is None:
            token = self.tokens[token_id] = Token(token_id)
        return token

    def _history(self, token_id: str, entry: ListingEntry) -> None:
        entries = self.listing_history.setdefault(token_id, [])
        # Kept sorted by _entry_sort_key: a binary search finds the place and any duplicate, where a
        # membership test and a sort per event grew with a busy token's history.
        key = _entry_sort_key(entry)
        at = bisect_left(entries, key, key=_entry_sort_key)
        while at < len(entries) and _entry_sort_key(entries[at]) == key:
            if entries[at] == entry:
                return
            at += 1
        entries.insert(at, entry)
        self._unsaved.listings.append((token_id, entry))
        if self._bulk:
            return
        # An entry's interval depends only on it and the token's next entry: inserting one changes the
        # interval of the entry before it and adds its own, nothing else of the (possibly long) history.
        following = entries[at + 1] if at + 1 < len(entries) else None
        removed: list[Interval | None] = []
        added: list[Interval | None] = []
        if at > 0:
            removed.append(listing_interval(entries[at - 1], following))
            added.append(listing_interval(entries[at - 1], entry))
        added.append(listing_interval(entry, following))
        # A token's intervals have distinct starts, so these differences are those of its whole set.
        gone = [i for i in removed if i is not None and i not in added]
        came = [i for i in added if i is not None and i not in removed]
        if not gone and not came:
            return  # most ownership changes concern tokens that were not listed: the series stays
        everything = self._d.by_end
        for start, end, price in gone:
            del everything[bisect_left(everything, (end, start, price))]
        for start, end, price in came:
            insort(everything, (end, start, price))
        self._d.dirty_since = min(self._d.dirty_since, first_difference(gone, came))
        self._d.history_version += 1

    def _set_owner(self, token: Token, owner: str | None, key: OrderKey) -> None:
        # Every ownership change ends a listing in the history, whether or not it wins the LWW race.
        self._history(token.token_id, (key, "end", None, None))
        if not _newer(key, token.owner_key):
            return
        old = token.owner if token.live else None
        token.owner_key = key
        token.owner = None if owner in (None, ZERO_ADDRESS) else owner
        token.burned = token.owner is None
        new = token.owner if token.live else None
        if old != new:
            self._count_holder(old, -1, token.token_id)
            self._count_holder(new, +1, token.token_id)
        # An ownership change ends any listing the previous owner had made before it.
        if token.listing is not None and token.listing_key is not None and key > token.listing_key:
            token.listing = None
            token.listing_key = key

    def _count_holder(self, wallet: str | None, delta: int, token_id: str) -> None:
        if wallet is None:
            return
        before = self.holder_counts.get(wallet, 0)
        count = before + delta
        if count > 0:
            self.holder_counts[wallet] = count
        else:
            self.holder_counts.pop(wallet, None)
        if self._bulk:
            return
        hist = self._d.hold_hist
        for size, step in ((before, -1), (max(count, 0), +1)):
            if size > 0:
                hist[size] = hist.get(size, 0) + step
                if not hist[size]:
                    del hist[size]
        held = self._d.holdings.setdefault(wallet, set())
        if delta > 0:
            held.add(token_id)
        else:
            held.discard(token_id)
            if not held:
                del self._d.holdings[wallet]

    def to_quote(self, event: Event, price: dict[str, str], rates: RateLookup) -> Decimal:
        """An event's price in the collection's quote currency."""
        amount = Decimal(price["amount"])
        currency = normalise_currency(price["currency"])
        if currency == self.currency:
            return amount
        rate = rates(currency, self.currency, event.occurred_at)
        if rate is None:
            raise UnpricedEventError(
                f"no {currency}/{self.currency} rate at or before {event.occurred_at.isoformat()}:"
                f" send a price_tick for {currency}/{self.currency}, then replay this event"
            )
        return amount * rate

    # -- rebuilding derived state ------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Derive every index from the facts (the from-scratch twin of the incremental updates)."""
        d = _Derived(publisher=self._d.publisher)
        d.rarity = RarityIndex.build({tid: t.traits for tid, t in self.tokens.items() if t.live})
        for tid, token in self.tokens.items():
            if token.live and token.owner is not None:
                d.holdings.setdefault(token.owner, set()).add(tid)
        d.hold_hist = holding_hist(self.holder_counts.values())
        d.by_end = sorted(
            (end, start, price) for start, end, price in listing_intervals(self.listing_history)
        )
        d.sale_uids = {sale.uid for sales in self.sales.values() for sale in sales}
        d.wash = WashIndex.build(self.sales)
        self._d = d
        for finding in self.findings.values():
            self._index_finding(finding, +1)
        for token in self.tokens.values():
            self._sync_listing(token)
        self._d.listings.expire(self.clock)

    # -- serialisation -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable facts plus what was last propagated (derived indexes are rebuilt on load)."""
        return {**self.core_dict(), **self._history_dict(self.sales, self.listing_history)}

    def history_to_save(self) -> tuple[dict[str, Any] | None, bool]:
        """The history entries the next save stores (None: none) and whether they replace the stored
        history (a rewrite) rather than add to it. :meth:`from_stored` is the inverse."""
        unsaved = self._unsaved
        if self._history_rewrite_due():
            return self._history_dict(self.sales, self.listing_history), True
        if not unsaved.sales and not unsaved.listings:
            return None, False
        sales: dict[str, list[SaleRecord]] = {}
        for sale in unsaved.sales:
            sales.setdefault(sale.token_id, []).append(sale)
        listings: dict[str, list[ListingEntry]] = {}
        for token_id, entry in unsaved.listings:
            listings.setdefault(token_id, []).append(entry)
        return {
            "sales": {tid: [sale.to_list() for sale in rows] for tid, rows in sales.items()},
            "listing_history": listings,
        }, False

    def history_saved(self) -> None:
        """The save of :meth:`history_to_save`'s entries committed."""
        unsaved = self._unsaved
        if self._history_rewrite_due():
            segments = 1
        else:
            segments = unsaved.segments + bool(unsaved.sales or unsaved.listings)
        self._unsaved = _UnsavedHistory(segments=segments)

    def _history_rewrite_due(self) -> bool:
        return not self._unsaved.stored or self._unsaved.segments >= MAX_HISTORY_SEGMENTS

    def _history_dict(
        self, sales: dict[str, list[SaleRecord]], listings: dict[str, list[ListingEntry]]
    ) -> dict[str, Any]:
        return {
            "sales": {tid: self._sale_rows(tid, rows) for tid, rows in sales.items()},
            # orjson writes tuples as arrays: copy the lists, not every entry.
            "listing_history": {tid: list(entries) for tid, entries in listings.items()},
        }

    def core_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the history (sales and listing entries)."""
        return {
            "chain": self.chain,
            "contract": self.contract,
            "volume": str(self.volume),
            "sales_count": self.sales_count,
            "clock": self.clock,
            "first_seen": self.first_seen,
            "holder_counts": self.holder_counts,
            "tokens": {
                tid: {
                    "owner": t.owner,
                    "owner_key": t.owner_key,
                    "minted": t.minted,
                    "burned": t.burned,
                    "traits": t.traits,
                    "traits_key": t.traits_key,
                    "last_sale": t.last_sale,
                    "last_sale_key": t.last_sale_key,
                    "listing": t.listing,
                    "listing_key": t.listing_key,
                }
                for tid, t in self.tokens.items()
            },
            "findings": {
                fid: {
                    "key": list(f.key),
                    "uid": self.finding_uids.get(fid),
                    "kind": f.kind,
                    "severity": f.severity,
                    "status": f.status,
                    "token_id": f.token_id,
                    "wallets": list(f.wallets),
                }
                for fid, f in self.findings.items()
            },
            "verified": self.verified,
            "verified_at": None
            if self.verified_at is None
            else [list(self.verified_at[0]), self.verified_at[1]],
            "creator": self.creator,
            "creator_at": None if self.creator_at is None else [list(self.creator_at[0]), self.creator_at[1]],
            "daily_volume": {str(day): str(v) for day, v in self.daily_volume.items()},
            "published": self.published,
            "rarity_published": {tid: [s, r] for tid, (s, r) in self._d.publisher.published.items()},
        }

    def _sale_rows(self, token_id: str, sales: list[SaleRecord]) -> list[list[Any]]:
        """A copy of the token's sales in JSON form: the rows are kept as sales arrive, because
        converting every sale of the history again on each save grew with the history."""
        rows = self._d.sale_rows.get(token_id)
        if rows is None or len(rows) != len(sales):
            rows = self._d.sale_rows[token_id] = [sale.to_list() for sale in sales]
        return list(rows)

    @classmethod
    def from_stored(
        cls,
        core: dict[str, Any],
        segments: Sequence[dict[str, Any]],
        epsilons: Epsilons | None = None,
        price_params: price_engine.PriceParams | None = None,
    ) -> CollectionBook:
        """A book from its stored parts: :meth:`core_dict` and the history segments of its saves
        (:meth:`history_to_save`), oldest first. A core that still holds the history (a whole-book save
        from before segments) is loaded as it is and has its history rewritten at its next save."""
        if "sales" in core:
            return cls.from_dict(core, epsilons, price_params)
        sales: dict[str, list[Any]] = {}
        listings: dict[str, list[Any]] = {}
        for segment in segments:
            for tid, rows in segment["sales"].items():
                sales.setdefault(tid, []).extend(rows)
            for tid, entries in segment["listing_history"].items():
                listings.setdefault(tid, []).extend(entries)
        book = cls.from_dict({**core, "sales": sales, "listing_history": listings}, epsilons, price_params)
        book._unsaved = _UnsavedHistory(segments=len(segments))
        return book

    @classmethod
    def from_dict(
        cls,
        raw: dict[str, Any],
        epsilons: Epsilons | None = None,
        price_params: price_engine.PriceParams | None = None,
    ) -> CollectionBook:
        """The inverse of :meth:`to_dict`."""

        def stamp(v: Any) -> tuple[OrderKey, str] | None:
            if v is None:
                return None
            k = _key(v[0])
            assert k is not None
            return (k, str(v[1]))

        book = cls.empty(raw["chain"], raw["contract"], epsilons, price_params)
        book.volume = Decimal(raw["volume"])
        book.sales_count = int(raw["sales_count"])
        book.clock = raw.get("clock")
        book.first_seen = raw.get("first_seen")
        book.holder_counts = dict(raw.get("holder_counts", {}))
        for tid, t in raw.get("tokens", {}).items():
            book.tokens[tid] = Token(
                token_id=tid,
                owner=t["owner"],
                owner_key=_key(t["owner_key"]),
                minted=t["minted"],
                burned=t["burned"],
                traits=t["traits"],
                traits_key=_key(t["traits_key"]),
                last_sale=t["last_sale"],
                last_sale_key=_key(t["last_sale_key"]),
                listing=t["listing"],
                listing_key=_key(t["listing_key"]),
            )
        # Sorted (stable, so equal keys keep the order they were added in, as the live book keeps them):
        # a history stored in segments comes back as each segment's entries in turn. Already sorted
        # lists, a whole-book save's, cost one pass.
        book.sales = {
            tid: sorted((SaleRecord.from_list(s) for s in v), key=_sale_order)
            for tid, v in raw.get("sales", {}).items()
        }
        book.listing_history = {
            tid: sorted(
                ((tuple(k), kind, price, expires) for k, kind, price, expires in entries),  # type: ignore[misc]
                key=_entry_sort_key,
            )
            for tid, entries in raw.get("listing_history", {}).items()
        }
        for fid, f in raw.get("findings", {}).items():
            book.findings[fid] = Finding(
                finding_id=fid,
                key=_key(f["key"]) or (-1, -1, ""),
                kind=f["kind"],
                severity=f["severity"],
                status=f["status"],
                token_id=f["token_id"],
                wallets=tuple(f["wallets"]),
            )
            if f.get("uid") is not None:
                book.finding_uids[fid] = f["uid"]
        book.verified = raw.get("verified")
        book.verified_at = stamp(raw.get("verified_at"))
        book.creator = raw.get("creator")
        book.creator_at = stamp(raw.get("creator_at"))
        book.daily_volume = {int(day): Decimal(v) for day, v in raw.get("daily_volume", {}).items()}
        book.published = dict(raw.get("published", {}))
        # Built from a whole dict, it cannot know what storage has: its first save rewrites the history.
        book._unsaved = _UnsavedHistory(stored=False)
        book._rebuild()
        book._d.publisher.reset(
            book._d.rarity,
            {tid: (float(s), int(r)) for tid, (s, r) in raw.get("rarity_published", {}).items()},
        )
        return book

    # -- read models -------------------------------------------------------------------------------

    def rarity_view(self, token_id: str) -> dict[str, Any] | None:
        """``{score, rank}`` of a live token, None otherwise."""
        score = self._d.rarity.score(token_id)
        if score is None:
            return None
        return {"score": round(score, 6), "rank": self._d.rarity.rank(token_id)}

    def nft_view(self, token_id: str) -> dict[str, Any]:
        """The API's read model of one NFT."""
        t = self.tokens[token_id]
        _, coll_trust, coll_risk = self._collection_parts()
        findings = self.findings_for(token_id)
        token_wash = self.token_wash_share(token_id)
        trust = trust_engine.nft_trust(coll_trust, token_wash, findings)
        rarity = self.rarity_view(token_id)
        estimate = self._price_estimate(token_id)
        return {
            "chain": self.chain,
            "contract": self.contract,
            "token_id": token_id,
            "owner": t.owner if t.live else None,
            "burned": t.burned,
            "traits": t.traits,
            "last_sale": t.last_sale,
            "active_listing": self._active_listing(t),
            "rarity": rarity,
            "trust": trust.view(),
            "price_estimate": estimate,
            "risk": risk_engine.nft_risk(
                collection=coll_risk, findings=findings, token_wash_share=token_wash
            ),
        }

    def _price_estimate(self, token_id: str) -> dict[str, Any]:
        clean = self._last_clean_sale(token_id)
        now = self.clock_us
        return price_engine.estimate(
            floor=self.floor,
            twap=self.twap_floor(),
            rarity_score=self._d.rarity.score(token_id),
            last_sale=None if clean is None else clean.price,
            last_sale_age_days=None
            if clean is None or now is None
            else now // DAY_US - clean.at_us // DAY_US,
            currency=self.currency,
            params=self.price_params,
        )

    def _last_clean_sale(self, token_id: str) -> SaleRecord | None:
        flags = self._d.wash.flags.get(token_id, {})
        sales = self.sales.get(token_id, [])
        # Sales are only added and flags only added, so the two counts change whenever the answer can:
        # the scan back over a run of flagged sales is done once per change, not once per view.
        key = (len(sales), len(flags))
        cached = self._d.last_clean.get(token_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        found = None
        # Only sales after the previous answer can be newer answers; if none of them is clean and the
        # previous answer is still clean, it stands (a token's flagged run is not read again).
        previous = None if cached is None else cached[1]
        stop = 0
        if previous is not None and previous.uid not in flags:
            stop = bisect_right(sales, previous.sort_key, key=_sale_order)
            found = previous
        for at in range(len(sales) - 1, stop - 1, -1):
            if sales[at].uid not in flags:
                found = sales[at]
                break
        self._d.last_clean[token_id] = (key, found)
        return found

    def collection_view(self) -> dict[str, Any]:
        """The API's read model of the collection."""
        headline, trust, risk = self._collection_parts()
        market = self.market()
        return {
            "chain": self.chain,
            "contract": self.contract,
            "currency": self.currency,
            "floor": headline["floor"],
            "twap_floor": headline["twap_floor"],
            "volume": headline["volume"],
            "sales_count": self.sales_count,
            "holders_count": self.holders,
            "supply": self.supply,
            "listed_count": len(self._d.listings),
            "top10_share": headline["top10_share"],
            "gini": headline["gini"],
            "wash_share": headline["wash_share"],
            "verified_creator": headline["verified_creator"],
            "rarity_entropy": headline["rarity_entropy"],
            "trust": trust.view(),
            "risk": risk,
            "market": {"trend": market["trend"], "anomaly": market["anomaly"]},
        }


# -- per-type handlers -----------------------------------------------------------------------------
#
# Each type has a ``_prep_*`` step that reads and converts everything of the event's data that can
# raise (missing fields, prices without a rate, timestamps, unhashable wallets) without touching the
# book, and a handler that folds the prepared values in and cannot fail on the data.


def _hashable(value: Any) -> Any:
    """``value`` itself; a TypeError now (before any change) if it cannot be a dictionary key."""
    hash(value)
    return value


def _prep_mint(book: CollectionBook, event: Event, rates: RateLookup) -> tuple[Any, dict[str, Any] | None]:
    traits = event.data.get("traits")
    return _hashable(event.data["to"]), None if traits is None else dict(traits)


def _mint(book: CollectionBook, event: Event, prepared: tuple[Any, dict[str, Any] | None]) -> None:
    to, traits = prepared
    token = book._token(event.token_id or "")
    token.minted = True
    book._set_owner(token, to, event.order_key)
    if traits is not None and _newer(event.order_key, token.traits_key):
        token.traits, token.traits_key = traits, event.order_key


def _prep_transfer(book: CollectionBook, event: Event, rates: RateLookup) -> tuple[bool, Any]:
    if event.data.get("from") == ZERO_ADDRESS:
        return True, _prep_mint(book, event, rates)
    return False, _hashable(event.data["to"])


def _transfer(book: CollectionBook, event: Event, prepared: tuple[bool, Any]) -> None:
    is_mint, value = prepared
    if is_mint:
        return _mint(book, event, value)
    token = book._token(event.token_id or "")
    book._set_owner(token, None if value == ZERO_ADDRESS else value, event.order_key)


def _prep_none(book: CollectionBook, event: Event, rates: RateLookup) -> None:
    return None


def _burn(book: CollectionBook, event: Event, prepared: None) -> None:
    token = book._token(event.token_id or "")
    book._set_owner(token, None, event.order_key)


def _prep_sale(
    book: CollectionBook, event: Event, rates: RateLookup
) -> tuple[SaleRecord, dict[str, Any]] | None:
    uid = f"{event.source}:{event.id}"
    if uid in book._d.sale_uids:
        return None  # the same sale twice: the log dedupes, this keeps the sums honest if it did not
    data = event.data
    price = book.to_quote(event, data["price"], rates)
    at = event.occurred_at.isoformat()
    record = SaleRecord(
        key=event.order_key,
        uid=uid,
        at_us=to_us(at),
        token_id=event.token_id or "",
        seller=_hashable(data["from"]),
        buyer=_hashable(data["to"]),
        price=price,
        buyer_funder=_wallet_or_none(data.get("buyer_funder")),
        seller_funder=_wallet_or_none(data.get("seller_funder")),
    )
    last_sale = {
        "price": str(price),
        "currency": book.currency,
        "paid": data["price"],
        "buyer": data["to"],
        "seller": data["from"],
        "at": at,
    }
    return record, last_sale


def _sale(book: CollectionBook, event: Event, prepared: tuple[SaleRecord, dict[str, Any]] | None) -> None:
    if prepared is None:
        return
    record, last_sale = prepared
    token = book._token(record.token_id)
    price = record.price
    with localcontext() as ctx:
        ctx.prec = 80
        book.volume += price
        day = record.at_us // DAY_US
        book.daily_volume[day] = book.daily_volume.get(day, Decimal(0)) + price
    book.sales_count += 1
    book._d.sale_uids.add(record.uid)
    # Sorted on insertion (a bisection), where appending and sorting grew with a busy token's sales.
    sales = book.sales.setdefault(token.token_id, [])
    at = bisect_right(sales, record.sort_key, key=_sale_order)
    sales.insert(at, record)
    book._unsaved.sales.append(record)
    rows = book._d.sale_rows.get(token.token_id)
    if rows is not None:
        rows.insert(at, record.to_list())
    book._d.sales_version += 1
    if _newer(event.order_key, token.last_sale_key):
        token.last_sale, token.last_sale_key = last_sale, event.order_key
    book._set_owner(token, record.buyer, event.order_key)
    if not book._bulk:
        book._d.wash.add(record)


def _sale_order(sale: SaleRecord) -> tuple[OrderKey, str]:
    return sale.sort_key


def _wallet_or_none(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) and value else None


def _prep_listing(book: CollectionBook, event: Event, rates: RateLookup) -> tuple[str, dict[str, Any]]:
    data = event.data
    expires = data.get("expires_at")
    expires_iso = None if expires is None else utc_iso(expires)
    price = str(book.to_quote(event, data["price"], rates))
    if expires_iso is not None:
        to_us(expires_iso)  # the listing's interval reads it: fail here, not half-way through the fold
    listing = {
        "price": price,
        "currency": book.currency,
        "asked": data["price"],
        "seller": data["seller"],
        "at": event.occurred_at.isoformat(),
        "expires_at": expires_iso,
    }
    return price, listing


def _listing(book: CollectionBook, event: Event, prepared: tuple[str, dict[str, Any]]) -> None:
    price, listing = prepared
    token = book._token(event.token_id or "")
    book._history(token.token_id, (event.order_key, "list", price, listing["expires_at"]))
    if not _newer(event.order_key, token.listing_key) or not _newer(event.order_key, token.owner_key):
        return
    token.listing = listing
    token.listing_key = event.order_key


def _listing_cancelled(book: CollectionBook, event: Event, prepared: None) -> None:
    token = book._token(event.token_id or "")
    book._history(token.token_id, (event.order_key, "end", None, None))
    if not _newer(event.order_key, token.listing_key):
        return
    token.listing, token.listing_key = None, event.order_key


def _prep_metadata_update(book: CollectionBook, event: Event, rates: RateLookup) -> dict[str, Any]:
    return dict(event.data["traits"])


def _metadata_update(book: CollectionBook, event: Event, prepared: dict[str, Any]) -> None:
    token = book._token(event.token_id or "")
    if not _newer(event.order_key, token.traits_key):
        return
    token.traits, token.traits_key = prepared, event.order_key


def _prep_fraud_finding(book: CollectionBook, event: Event, rates: RateLookup) -> tuple[Finding, str]:
    data = event.data
    finding = Finding(
        finding_id=str(data["finding_id"]),
        key=event.order_key,
        kind=str(data["kind"]),
        severity=str(data["severity"]),
        status=str(data.get("status", "open")),
        token_id=event.token_id,
        wallets=tuple(data.get("wallets") or ()),
    )
    return finding, f"{event.source}:{event.id}"


def _fraud_finding(book: CollectionBook, event: Event, prepared: tuple[Finding, str]) -> None:
    finding, uid = prepared
    fid = finding.finding_id
    current = book.findings.get(fid)
    if current is not None and (event.order_key, uid) <= (current.key, book.finding_uids.get(fid, "")):
        return
    if current is not None:
        book._index_finding(current, -1)
    book.findings[fid] = finding
    book.finding_uids[fid] = uid
    book._index_finding(finding, +1)


_PREPARE: dict[EventType, Callable[[CollectionBook, Event, RateLookup], Any]] = {
    EventType.MINT: _prep_mint,
    EventType.TRANSFER: _prep_transfer,
    EventType.BURN: _prep_none,
    EventType.SALE: _prep_sale,
    EventType.LISTING: _prep_listing,
    EventType.LISTING_CANCELLED: _prep_none,
    EventType.METADATA_UPDATE: _prep_metadata_update,
    EventType.FRAUD_FINDING: _prep_fraud_finding,
}

_HANDLERS: dict[EventType, Callable[[CollectionBook, Event, Any], None]] = {
    EventType.MINT: _mint,
    EventType.TRANSFER: _transfer,
    EventType.BURN: _burn,
    EventType.SALE: _sale,
    EventType.LISTING: _listing,
    EventType.LISTING_CANCELLED: _listing_cancelled,
    EventType.METADATA_UPDATE: _metadata_update,
    EventType.FRAUD_FINDING: _fraud_finding,
}
