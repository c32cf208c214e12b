"""A collection book's state: its facts (last-writer-wins token state, sales, listing history,
findings, sums) and the indexes derived from them, with the figures read straight off them. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Self

from nftpulse.domain import price as price_engine
from nftpulse.domain.book import derive
from nftpulse.domain.events import Event
from nftpulse.domain.rarity import RarityIndex
from nftpulse.domain.rarity_publisher import RarityPublisher
from nftpulse.domain.significance import Epsilons
from nftpulse.domain.stats import (
    DAY_US,
    OPEN,
    ExpiryIndex,
    ExpiryKey,
    FloorSeries,
    ListingEntry,
    ListingIndex,
    holding_hist,
    listing_intervals,
    to_us,
)
from nftpulse.domain.trust import Finding, SaleRecord, TrustResult, WashIndex

OrderKey = tuple[int, int, str]
Stamp = tuple[int, int, str, str]
"""Who wins a token's last-writer-wins race: the event's chain position (``order_key``), then its
``source:id``, so that events at one position settle alike in any arrival order (as findings and creator
verification do). A book saved before writes were stamped holds bare positions (:data:`OrderKey`): one loses
a tie to a stamped write at its position."""
TokenKey = Stamp | OrderKey
RateLookup = Callable[[str, str, datetime], Decimal | None]
"""``(base, quote, at) -> rate``: how many ``quote`` one ``base`` was worth at ``at``, or None.

The rule (``store.entities.RateBook``): the latest quote of the pair at or before ``at``; before a pair's
first quote, that first quote (an event that waited for the pair's first rate is valued by it); the
inverse pair's likewise when the pair itself has none; None only while neither was ever quoted."""

NATIVE_CURRENCY = {"polygon": "POL", "bsc": "BNB", "avalanche": "AVAX"}
"""Each chain's quote currency for collection statistics; every other chain quotes in ETH."""

_SAME_AS = {"WETH": "ETH", "MATIC": "POL", "WMATIC": "POL", "WPOL": "POL", "WBNB": "BNB", "WAVAX": "AVAX"}

TWAP_WINDOW_US = DAY_US
"""The time-weighted floor averages the floor over the last 24 hours of the book's clock."""

#: Collection figures that every NFT view is derived from (``domain.book.derive``): a move past an epsilon
#: sets ``Change.all_nfts``.
NFT_DRIVERS = ("floor", "twap_floor", "trust", "risk", "day", "best_offer", "best_offer_id", "trait_offers")


def canonical_amount(value: Decimal) -> Decimal:
    """An amount in its one written form: no exponent, no trailing fractional zeros (``2500 USDC`` at
    ``0.0004`` is ``1``, as ``1 ETH`` is), so equal prices are equal strings in every view, however they
    were reached (an incremental fold, a recompute, a conversion). Exact: no rounding to a context."""
    if not value.is_finite():
        return value
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if not any(digits):
        return Decimal(0)
    if exponent > 0:
        return Decimal((sign, (*digits, *(0,) * exponent), 0))
    cut = 0
    while exponent + cut < 0 and digits[len(digits) - 1 - cut] == 0:
        cut += 1
    return value if cut == 0 else Decimal((sign, digits[: len(digits) - cut], exponent + cut))


class UnpricedEventError(ValueError):
    """A price could not be converted into the collection's quote currency: permanent until a rate arrives.

    ``waiting_for`` names that rate (``rate:USDC/ETH``): the pipeline parks the event until a price tick
    of the pair (either way round) arrives, and fails it only after ``PULSE_WAIT_MAX_SECONDS``."""

    def __init__(self, message: str, base: str = "", quote: str = "") -> None:
        super().__init__(message)
        self.base, self.quote = base, quote

    @property
    def waiting_for(self) -> str:
        return f"rate:{self.base}/{self.quote}"


def rate_keys(base: str, quote: str) -> list[str]:
    """What a rate of ``base``/``quote`` releases: events waiting for the pair either way round."""
    base, quote = base.upper(), quote.upper()
    return [f"rate:{base}/{quote}", f"rate:{quote}/{base}"]


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
    #: A collection figure every NFT view derives from moved past its epsilon: every NFT's trust, risk,
    #: price estimate or best offer may have moved. No NFT row is rewritten for it (each is derived from
    #: the collection's factors when read, see ``domain.book.derive``); detection may judge them all.
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
    owner_key: TokenKey | None = None
    minted: bool = False
    burned: bool = False
    traits: dict[str, Any] = field(default_factory=dict)
    traits_key: TokenKey | None = None
    last_sale: dict[str, Any] | None = None
    last_sale_key: TokenKey | None = None
    listing: dict[str, Any] | None = None
    listing_key: TokenKey | None = None
    #: An ERC-1155 token (an event said so, or moved a quantity other than 1): its state is ``balances``.
    multi: bool = False
    #: ERC-1155 moves by move key (see ``fold._move_key``) -> ``[from, to, quantity]`` (None: the zero
    #: address): a set, so a move reported twice (a Transfer log and the sale it belongs to) counts once.
    moves: dict[str, list[Any]] = field(default_factory=dict)
    #: Derived from ``moves``: wallet -> units held (negative while moves arrive out of order).
    balances: dict[str, int] = field(default_factory=dict)
    #: Derived from ``moves``: units minted less units burned.
    units: int = 0
    #: Offers on this token by bidder (see :meth:`BookState.best_offer`).
    offers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        """Part of the collection's supply: owned and not burned, or (ERC-1155) units in circulation."""
        if self.multi:
            return self.units > 0
        return self.owner is not None and not self.burned

    def holders(self) -> list[str]:
        """The wallets holding it: its owner, or (ERC-1155) every wallet with a positive balance."""
        if self.multi:
            return [w for w, q in self.balances.items() if q > 0]
        return [self.owner] if self.live and self.owner is not None else []

    @property
    def gone(self) -> bool:
        """Burned: its owner burned it, or (ERC-1155) units were burned and none are left."""
        if self.multi:
            return self.units <= 0 and any(move[1] is None for move in self.moves.values())
        return self.burned

    @property
    def single_owner(self) -> str | None:
        """Its owner when it has exactly one by nature (ERC-721) and is live."""
        return self.owner if self.live and not self.multi else None


def _entry_sort_key(entry: ListingEntry) -> tuple[tuple[int, int, str], str, str, str]:
    return (entry[0], entry[1], entry[2] or "", entry[3] or "")


def _newer(candidate: TokenKey, current: TokenKey | None) -> bool:
    return current is None or candidate > current


def stamp(event: Event) -> Stamp:
    """The event's :data:`Stamp`."""
    return (*event.order_key, f"{event.source}:{event.id}")


def listing_rank(key: TokenKey, listing: dict[str, Any] | None) -> tuple[Any, ...]:
    """How a write to a token's listing slot (a listing, or its end: a cancellation or an ownership change)
    ranks against another, as the listing history ranks its entries (``_entry_sort_key``): by chain
    position; at one position an end before a listing (an end ends only what came strictly before it),
    a listing by its price and expiry; then by the writer's ``source:id``."""
    if listing is None:
        return (key[:3], "end", "", "", key[3:])
    return (key[:3], "list", listing["price"], listing.get("expires_at") or "", key[3:])


def _key(v: Any) -> OrderKey | None:
    # JSON gives ints and strings back as they went in: only the list needs to become a tuple.
    return None if v is None else tuple(v)  # type: ignore[return-value]


def _sale_order(sale: SaleRecord) -> tuple[OrderKey, str]:
    return sale.sort_key


@dataclass
class _Derived:
    """Indexes and caches rebuilt from the facts; never serialised."""

    rarity: RarityIndex = field(default_factory=RarityIndex)
    publisher: RarityPublisher = field(default_factory=RarityPublisher)
    listings: ListingIndex = field(default_factory=ListingIndex)
    #: When each standing offer with an expiry lapses (see :meth:`BookState._index_offer`): the next
    #: moment a best offer moves with no event, without reading every token's offers.
    offer_expiries: ExpiryIndex[ExpiryKey] = field(default_factory=ExpiryIndex)
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
    #: Per NFT, its driven figures (trust, risk level, price estimate) when its own events last reported
    #: them: small moves batch after batch add up against these until one passes its epsilon.
    nft_shown: dict[str, tuple[float, str, Any]] = field(default_factory=dict)
    #: ``(state_version, the factors NFT views derive from)`` (``BookViews.nft_factors``).
    factors: tuple[int, dict[str, Any]] | None = None
    #: The factors as the collection's stored row last received them (None: not known, e.g. after a load).
    factors_written: dict[str, Any] | None = None
    #: The book's stored NFT rows are whole views (a book saved before NFT views were derived): the next
    #: batch rewrites every one as a part.
    whole_rows: bool = False
    #: ``(state_version, best collection offer, standing trait offers)``: every NFT view reads them.
    offers: tuple[int, dict[str, Any] | None, dict[str, dict[str, Any]]] | None = None


@dataclass
class AppendedHistory:
    """The history entries (sales, listing entries) a book appended since it was last marked
    (:meth:`BookState.mark_history`), and the tokens whose state an event changed since: the history only
    grows, so these and the marked history make the whole of it, and these tokens' states replace the
    marked ones."""

    sales: list[SaleRecord] = field(default_factory=list)
    listings: list[tuple[str, ListingEntry]] = field(default_factory=list)
    #: ERC-1155 moves: ``(token_id, move key, [from, to, quantity])``.
    moves: list[tuple[str, str, list[Any]]] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.sales or self.listings or self.moves or self.tokens)


@dataclass
class BookState:
    """One collection's facts and the indexes derived from them (see the package's docstring).

    :class:`~nftpulse.domain.book.CollectionBook` adds folding events in (``fold``), the read models
    (``views``) and the JSON form (``codec``) on top.
    """

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
    #: Collection offers (any token of the collection) by bidder.
    collection_offers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Social signals still counted by ``attention``: ``source:id -> (t_us, weight)``.
    signals: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: Last propagated collection headline (significance is measured against it).
    published: dict[str, Any] = field(default_factory=dict)
    epsilons: Epsilons = field(default_factory=Epsilons, compare=False)
    price_params: price_engine.PriceParams = field(default_factory=price_engine.PriceParams, compare=False)
    _d: _Derived = field(default_factory=_Derived, repr=False, compare=False)
    _bulk: bool = field(default=False, repr=False, compare=False)
    #: While a batch folds: the tokens whose rarity inputs moved, brought up to date after the batch.
    _rarity_pending: dict[str, None] | None = field(default=None, repr=False, compare=False)
    _appended: AppendedHistory = field(default_factory=AppendedHistory, repr=False, compare=False)
    #: Storage's own bookkeeping of this book (how its history is stored: ``store.books``), kept with it
    #: between a load and the next save. The domain neither reads nor writes it; None: storage knows
    #: nothing of this book (built from events or from a whole dict).
    stored: object | None = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(
        cls,
        chain: str,
        contract: str,
        epsilons: Epsilons | None = None,
        price_params: price_engine.PriceParams | None = None,
    ) -> Self:
        """A book with no events yet; ``epsilons`` and ``price_params`` default to the dataclasses' own."""
        return cls(
            chain=chain,
            contract=contract.lower(),
            epsilons=epsilons or Epsilons(),
            price_params=price_params or price_engine.PriceParams(),
        )

    def mark_history(self) -> None:
        """Start a new :class:`AppendedHistory`: what is appended from now on is told apart."""
        self._appended = AppendedHistory()

    @property
    def appended_history(self) -> AppendedHistory:
        """The history entries appended since the last :meth:`mark_history` (read-only for callers)."""
        return self._appended

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

    def live_offer(self, offer: dict[str, Any] | None) -> dict[str, Any] | None:
        """The offer if it stands at the book's clock: not withdrawn, not expired."""
        if offer is None or Decimal(offer["price"]) <= 0:
            return None
        expires = offer.get("expires_at")
        if expires is not None and self.clock is not None and expires <= self.clock:
            return None
        return offer

    def _best_of(self, offers: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """The highest of these offers that stands at the book's clock (``derive.best_of``)."""
        return derive.best_of((bidder, o) for bidder, o in offers.items() if self.live_offer(o) is not None)

    def _collection_offers(self) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
        # Once per state of the book: a driver move reads every token's best offer.
        version = self._d.state_version
        if self._d.offers is None or self._d.offers[0] != version:
            plain = {k: o for k, o in self.collection_offers.items() if "trait" not in o}
            traits = {
                k: o
                for k, o in self.collection_offers.items()
                if "trait" in o and self.live_offer(o) is not None
            }
            self._d.offers = (version, self._best_of(plain), traits)
        return self._d.offers[1], self._d.offers[2]

    def best_collection_offer(self) -> dict[str, Any] | None:
        """The highest standing collection offer (in the quote currency, per item), or None. Trait
        offers are not collection offers: they buy only tokens with their trait."""
        return self._collection_offers()[0]

    def trait_offers_digest(self) -> str | None:
        """Which trait offers stand (a digest of their keys), or None: when it moves, the best offer of
        the tokens with those traits may have."""
        keys = sorted("/".join(map(str, o["key"])) for o in self._collection_offers()[1].values())
        return hashlib.blake2b("\n".join(keys).encode(), digest_size=8).hexdigest() if keys else None

    def best_offer(self, token_id: str) -> dict[str, Any] | None:
        """The highest standing offer that would buy this token: its own offers, collection offers and
        the trait offers its traits meet (``scope``: ``token``, ``collection`` or ``trait``), or None."""
        token = self.tokens.get(token_id)
        coll, standing = self._collection_offers()
        if token is None:
            return derive.choose_offer(None, None, (), coll)
        return derive.choose_offer(self._best_of(token.offers), token.traits, standing.items(), coll)

    def _index_offer(self, token_id: str | None, slot: str, offer: dict[str, Any]) -> None:
        """Keep the offer expiry index in step with the offer now in a slot of a token (None: of the
        collection, trait offers included): indexed while it can stand and has an expiry."""
        expires = offer.get("expires_at")
        key: ExpiryKey = (0, "", slot) if token_id is None else (1, token_id, slot)
        standing = expires is not None and Decimal(offer["price"]) > 0
        self._d.offer_expiries.put(key, expires if standing else None)

    def lapsing_offers(self, until: str) -> dict[str, str]:
        """Tokens whose own offer (not a collection or trait offer) stands now and lapses by a clock of
        ``until``, with the earliest such expiry."""
        index = self._d.offer_expiries
        out: dict[str, str] = {}
        for key in index.lapsing(self.clock, until):
            scope, token_id, _ = key
            if scope == 1:
                out[token_id] = min(out.get(token_id, index.entries[key]), index.entries[key])
        return out

    def lapsing_by(self, until: str) -> dict[str, str]:
        """Tokens whose active listing or own offer stands now and lapses by a clock of ``until``, with the
        earliest such expiry: their views show it, so a clock passing it rewrites them."""
        out = self.lapsing_offers(until)
        listings = self._d.listings
        for token_id in listings.expiring(until):
            expires = listings.entries[token_id][1] or until
            out[token_id] = min(out.get(token_id, expires), expires)
        return out

    def next_offer_expiry(self) -> str | None:
        """The earliest expiry after the clock of a standing offer (token, collection or trait)."""
        return self._d.offer_expiries.next_after(self.clock)

    def findings_for(self, token_id: str) -> list[Finding]:
        """Findings about the token itself or its current owner."""
        token = self.tokens.get(token_id)
        owner = token.single_owner if token is not None else None
        # From the indexes, not a scan: findings pile up with history. Sorted by id (every reader
        # either sorts by id or only counts and sums).
        fids = self._d.findings_by_token.get(token_id, set())
        if owner is not None and owner in self._d.findings_by_wallet:
            fids = fids | self._d.findings_by_wallet[owner]
        return [self.findings[fid] for fid in sorted(fids)]

    def _findings_of(self, token_id: str) -> list[Finding]:
        """:meth:`findings_for` in no particular order (for readers that only count, sum or sort)."""
        token = self.tokens.get(token_id)
        owner = token.single_owner if token is not None else None
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
            price = canonical_amount(Decimal(listing["price"]))
            self._d.listings.put(token.token_id, price, listing.get("expires_at"))

    def to_quote(self, event: Event, price: dict[str, str], rates: RateLookup) -> Decimal:
        """An event's price in the collection's quote currency, in its :func:`canonical_amount` form."""
        amount = Decimal(price["amount"])
        currency = normalise_currency(price["currency"])
        if currency == self.currency:
            return canonical_amount(amount)
        rate = rates(currency, self.currency, event.occurred_at)
        if rate is None:
            raise UnpricedEventError(
                f"no {currency}/{self.currency} rate is known yet: waiting for a price_tick of"
                f" {currency}/{self.currency}",
                currency,
                self.currency,
            )
        return canonical_amount(amount * rate)

    def _rebuild(self) -> None:
        """Derive every index from the facts (the from-scratch twin of the incremental updates)."""
        d = _Derived(publisher=self._d.publisher, whole_rows=self._d.whole_rows)
        d.rarity = RarityIndex.build({tid: t.traits for tid, t in self.tokens.items() if t.live})
        for tid, token in self.tokens.items():
            for holder in token.holders():
                d.holdings.setdefault(holder, set()).add(tid)
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
            for bidder, offer in token.offers.items():
                self._index_offer(token.token_id, bidder, offer)
        for slot, offer in self.collection_offers.items():
            self._index_offer(None, slot, offer)
        self._d.listings.expire(self.clock)
