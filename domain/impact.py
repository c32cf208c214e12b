"""The dependency graph and impact analysis: from events, exactly what to recalculate. Pure.

Edges (read from the collection book, which keeps them current):

* NFT -> its collection (``nft:chain:contract:id`` -> ``collection:chain:contract``);
* creator -> collections (:class:`DependencyGraph`, fed from ``data.creator`` via the books);
* wallet -> holdings (``book.holdings``) and trades (sales it bought or sold);
* attribute value -> the tokens holding it (``book.rarity`` buckets, null buckets included);
* collection -> its price series (floor, time-weighted floor, daily volume, market condition).

:func:`analyze` answers before the events are applied, with the same planning code ``apply`` uses:

* a trait change (metadata update, or a token entering/leaving through mint, burn or transfer to/from
  nobody) moves the rarity score of exactly the tokens in the buckets it leaves and joins (factor
  ``rarity_score``) plus the entropy; tokens whose accumulated drift reaches an epsilon are named
  under ``rarity_rescan``;
* a sale moves floor, volume, price estimates (and wash flags, trust, holder statistics);
* a listing or cancellation moves the floor and time-weighted floor;
* a transfer moves holder statistics (and the token's owner);
* a fraud finding moves trust and risk of the collection and of the tokens it names or whose owners
  it names.

Collection figures every NFT view derives from (floor, TWAP, trust, risk, offers, the clock's day) are
listed in ``nft_drivers``: when ``apply`` finds one moved past its epsilon it says so
(``Change.all_nfts``), and every NFT's view follows when read (``domain.book.derive``) without a row
rewritten; so ``Change.nfts`` is always within ``Impact.nfts`` or, with drivers, the collection's tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nftpulse.domain.book import NFT_DRIVERS, CollectionBook, Token
from nftpulse.domain.book.fold import _move_key, _multi, _party
from nftpulse.domain.book.state import stamp
from nftpulse.domain.events import ZERO_ADDRESS, Event, EventType, creator_key, wallet_key

SEVERITIES = ("low", "medium", "high", "critical")


@dataclass
class Impact:
    """Entities and factors to recalculate, and how severe the impact is."""

    collection: str
    nfts: set[str] = field(default_factory=set)
    wallets: set[str] = field(default_factory=set)
    creators: set[str] = field(default_factory=set)
    #: factor -> the token ids it must be recalculated for (``rarity_score``, ``owner``, ...).
    nft_factors: dict[str, set[str]] = field(default_factory=dict)
    collection_factors: set[str] = field(default_factory=set)
    #: Collection figures that, if they move past their epsilon, re-derive every NFT view.
    nft_drivers: set[str] = field(default_factory=set)
    severity: str = "low"
    reasons: list[str] = field(default_factory=list)

    def add(self, factor: str, tokens: Iterable[str]) -> None:
        """Recalculate ``factor`` for ``tokens``."""
        tokens = set(tokens)
        self.nft_factors.setdefault(factor, set()).update(tokens)
        self.nfts |= tokens

    def escalate(self, severity: str, reason: str) -> None:
        """Raise the severity to at least ``severity`` and record why."""
        if SEVERITIES.index(severity) > SEVERITIES.index(self.severity):
            self.severity = severity
        self.reasons.append(reason)

    def merge(self, other: Impact) -> None:
        """Fold another impact (of a later event) into this one."""
        self.nfts |= other.nfts
        self.wallets |= other.wallets
        self.creators |= other.creators
        for factor, tokens in other.nft_factors.items():
            self.nft_factors.setdefault(factor, set()).update(tokens)
        self.collection_factors |= other.collection_factors
        self.nft_drivers |= other.nft_drivers
        for reason in other.reasons:
            self.escalate(other.severity, reason)

    def entity_keys(self, book: CollectionBook) -> set[str]:
        """All touched entities as keys: the collection, NFTs, wallets, creators."""
        keys = {self.collection} | {book.nft_key(t) for t in self.nfts}
        return (
            keys | {wallet_key(w) for w in self.wallets} | {creator_key(book.chain, c) for c in self.creators}
        )


@dataclass
class DependencyGraph:
    """Edges that span collections (creator -> collections); per-collection edges live in the book."""

    creator_collections: dict[str, set[str]] = field(default_factory=dict)

    def observe(self, book: CollectionBook) -> None:
        """Record the book's creator edge (call after applying events)."""
        if book.creator is not None:
            self.creator_collections.setdefault(book.creator, set()).add(book.key)

    def collections_of(self, creator: str) -> set[str]:
        """Collection keys of a creator."""
        return set(self.creator_collections.get(creator.lower(), set()))

    @staticmethod
    def holdings(book: CollectionBook, wallet: str) -> set[str]:
        """Tokens of the collection the wallet holds."""
        return set(book.holdings.get(wallet.lower(), set()))

    @staticmethod
    def trades(book: CollectionBook, wallet: str) -> set[str]:
        """Tokens of the collection the wallet bought or sold."""
        wallet = wallet.lower()
        return {tid for tid, sales in book.sales.items() if any(wallet in (s.buyer, s.seller) for s in sales)}

    @staticmethod
    def attribute_tokens(book: CollectionBook, name: str, value: str | None) -> set[str]:
        """Live tokens with ``name == value`` (``None``: tokens missing the attribute)."""
        return book.rarity.members((name, value))

    @staticmethod
    def price_series(book: CollectionBook) -> list[str]:
        """The collection's series that depend on its prices."""
        return ["floor", "twap_floor", "daily_volume", "market"]


def _after(token: Token | None, event: Event) -> tuple[bool, dict[str, Any] | None]:
    """The token's liveness and traits once the event is folded, mirroring the book's handlers."""
    live = token is not None and token.live
    traits = None if token is None else token.traits
    owner_key = None if token is None else token.owner_key
    traits_key = None if token is None else token.traits_key
    key = stamp(event)
    newer_owner = owner_key is None or key > owner_key
    newer_traits = traits_key is None or key > traits_key
    kind, data = event.type, event.data
    if kind == EventType.TRANSFER and data.get("from") == ZERO_ADDRESS:
        kind = EventType.MINT
    moves = kind in (EventType.MINT, EventType.TRANSFER, EventType.SALE, EventType.BURN)
    if moves and (_multi(event) or (token is not None and token.multi)):
        # ERC-1155: live while units are in circulation; only an ERC-1155 move moves them.
        units = 0 if token is None else token.units
        if _multi(event):
            sender = None if kind == EventType.MINT else _party(data.get("from"))
            receiver = None if kind == EventType.BURN else _party(data.get("to"))
            quantity = int(data.get("quantity", 1))
            if token is None or _move_key(event, sender, receiver, quantity) not in token.moves:
                units += quantity * ((sender is None) - (receiver is None))
        live = units > 0
    elif moves and newer_owner:
        to = None if kind == EventType.BURN else data.get("to")
        live = to not in (None, ZERO_ADDRESS)
    if kind == EventType.MINT and data.get("traits") is not None and newer_traits:
        traits = dict(data["traits"])
    if kind == EventType.METADATA_UPDATE and newer_traits:
        traits = dict(data["traits"])
    return live, traits


@dataclass
class _Drift:
    """Rarity drift the analysed event adds on top of what the book's publisher has accumulated."""

    extra: float = 0.0

    def rescan(self, book: CollectionBook) -> set[str]:
        """Tokens the book's publisher will re-examine once the event is applied."""
        return book._d.publisher.due(self.extra)


def _analyze_one(event: Event, book: CollectionBook, drift: _Drift) -> Impact:
    impact = Impact(collection=book.key)
    if event.type is EventType.RETRACTION:
        # What the retracted event moved is not in the book to read: the collection is refolded from its
        # log, so every figure and view may move.
        impact.collection_factors |= {"holder_stats", "trust", "floor", "volume", "market", "risk"}
        impact.nft_drivers |= {"trust", "risk", "floor", "twap_floor"}
        impact.add("view", set(book.tokens))
        impact.escalate("medium", "a retraction refolds the collection")
        return impact
    tid = event.token_id
    token = book.tokens.get(tid) if tid is not None else None
    if event.occurred_at.isoformat() > (book.clock or ""):
        # The clock moves age (trust), the TWAP window, the market series and price-estimate decay.
        # Offers expire and attention decays by it too.
        impact.collection_factors |= {
            "clock",
            "trust",
            "twap_floor",
            "market",
            "risk",
            "best_offer",
            "attention",
        }
        impact.nft_drivers |= {
            "day",
            "trust",
            "risk",
            "twap_floor",
            "best_offer",
            "best_offer_id",
            "trait_offers",
        }
        stamp = event.occurred_at.isoformat()
        # Read off the expiry heap: a scan of every listing per event grew with the collection.
        expiring = book.listing_index.expiring(stamp)
        if expiring:
            impact.add("active_listing", expiring)
            impact.collection_factors |= {"floor", "listed_count"}
            impact.nft_drivers |= {"floor", "twap_floor"}
        # Tokens whose own offer lapses: their best offer and estimate move (off the offer expiry heap).
        lapsing = book.lapsing_offers(stamp)
        if lapsing:
            impact.add("best_offer", lapsing)
    if book.first_seen is None or event.occurred_at.isoformat() < book.first_seen:
        # An earlier first sighting makes the collection older: the age factor of trust moves.
        impact.collection_factors |= {"trust", "risk"}
        impact.nft_drivers |= {"trust", "risk"}
    if isinstance(event.data.get("verified_creator"), bool) or isinstance(event.data.get("creator"), str):
        impact.collection_factors.add("trust")
        impact.nft_drivers.add("trust")
        if isinstance(event.data.get("creator"), str):
            impact.creators.add(event.data["creator"].lower())
    if book.creator is not None:
        impact.creators.add(book.creator)

    if tid is not None:
        impact.add("view", {tid})
        live, traits = _after(token, event)
        was_live = token is not None and token.live
        if live != was_live or (live and traits != (None if token is None else token.traits)):
            plan = book.rarity.plan(tid, traits, live=live)
            impact.add("rarity_score", plan.touched)
            impact.collection_factors.add("rarity_entropy")
            eps = book.epsilons
            drift.extra += book._d.publisher.drift_of(plan, eps.rarity_score_abs, eps.rank_eps(plan.n[1]))
            impact.add("rarity_rescan", drift.rescan(book))
            if eps.rarity_score_abs <= 0 and plan.uniform_drift > 0:
                impact.add("rarity_rescan", set(book.rarity.p) | set(book._d.publisher.published))
            n_after = plan.n[1]
            if len(plan.touched) > max(1, n_after // 100):
                impact.escalate("medium", f"rarity of {len(plan.touched)} tokens moves")
            else:
                impact.escalate("low", "rarity moves within small buckets")
        if live != was_live:
            impact.collection_factors |= {"supply", "holder_stats", "trust"}
            impact.nft_drivers |= {"trust", "risk"}

    kind = event.type
    if kind in (EventType.MINT, EventType.TRANSFER, EventType.BURN, EventType.SALE):
        for side in ("from", "to"):
            wallet = event.data.get(side)
            if wallet and wallet != ZERO_ADDRESS:
                impact.wallets.add(wallet)
        impact.add("owner", {tid} if tid else set())
        impact.collection_factors |= {"holder_stats", "trust", "floor", "listed_count"}
        impact.nft_drivers |= {"trust", "risk", "floor", "twap_floor"}
        impact.escalate("low", f"{kind.value} moves holder statistics")
    if kind == EventType.SALE:
        impact.add("price_estimate", {tid} if tid else set())
        impact.add("trust", {tid} if tid else set())
        impact.collection_factors |= {"volume", "sales_count", "wash_share", "market", "risk"}
        price = _quote_price(book, event)
        floor = book.floor
        if price is not None and floor is not None and floor > 0 and abs(price - floor) / floor >= 0.2:
            impact.escalate(
                "high", f"sale at {price} is {float((price - floor) / floor):+.0%} against the floor"
            )
        else:
            impact.escalate("medium", "sale moves floor, volume and price estimates")
    if kind in (EventType.LISTING, EventType.LISTING_CANCELLED):
        impact.add("active_listing", {tid} if tid else set())
        impact.collection_factors |= {"floor", "twap_floor", "listed_count", "market", "risk", "trust"}
        impact.nft_drivers |= {"floor", "twap_floor", "trust", "risk"}
        price = _quote_price(book, event) if kind == EventType.LISTING else None
        floor = book.floor
        if price is not None and floor is not None and price < floor:
            impact.escalate(
                "high" if floor > 0 and (floor - price) / floor >= 0.2 else "medium",
                "listing under the floor",
            )
        else:
            impact.escalate("low", f"{kind.value} may move the floor")
    if kind == EventType.BID:
        # A token's offer moves its best offer and estimate; a collection offer every token's.
        impact.add("best_offer", {tid} if tid else set())
        impact.add("price_estimate", {tid} if tid else set())
        impact.collection_factors.add("best_offer")
        if tid is None:
            impact.nft_drivers |= {"best_offer", "best_offer_id", "trait_offers"}
        impact.escalate("low", "an offer may move the best offer and price estimates")
    if kind == EventType.SOCIAL_SIGNAL:
        impact.collection_factors.add("attention")
        impact.escalate("low", "a social signal moves the collection's attention")
    if kind == EventType.FRAUD_FINDING:
        fid = str(event.data.get("finding_id"))
        tokens: set[str] = {tid} if tid else set()
        previous = book.findings.get(fid)
        wallets = set(event.data.get("wallets", [])) | (set(previous.wallets) if previous else set())
        if previous is not None and previous.token_id is not None:
            tokens.add(previous.token_id)
        for wallet in wallets:
            tokens |= book.holdings.get(wallet, set())
        impact.wallets |= wallets
        impact.add("trust", tokens)
        impact.add("risk", tokens)
        impact.collection_factors |= {"trust", "risk"}
        impact.nft_drivers |= {"trust", "risk"}
        severity = str(event.data.get("severity", "medium"))
        if event.data.get("status", "open") == "open":
            impact.escalate(
                severity if severity in SEVERITIES else "medium", f"open {severity} fraud finding {fid}"
            )
        else:
            impact.escalate("medium", f"fraud finding {fid} resolved")
    impact.nft_drivers &= set(NFT_DRIVERS)
    return impact


def _quote_price(book: CollectionBook, event: Event) -> Any:
    price = event.data.get("price")
    if not isinstance(price, dict):
        return None
    try:
        return book.to_quote(event, price, lambda base, quote, at: None)
    except ValueError:
        return None


def analyze_each(events: Sequence[Event], book: CollectionBook) -> Impact:
    """A cheap plan for a batch: each event analysed against the book as it is now, without folding.

    Exact for one event. For a batch it may name a little more or less than ``analyze`` where an earlier
    event of the batch moves what a later one touches (a token's bucket after its trait change); the
    recalculation itself is exact either way, so the pipeline uses this for its plan and saves folding
    the batch twice.
    """
    impact = Impact(collection=book.key)
    for event in events:
        impact.merge(_analyze_one(event, book, _Drift()))
    return impact


def analyze(events: Sequence[Event], book: CollectionBook, rates: Any = None) -> Impact:
    """What recalculating ``events`` against ``book`` touches; the book is left unchanged.

    Several events are analysed in the given order (the order they will be applied in) against a
    scratch copy of the book, each seeing the state the previous ones leave; ``rates`` is the
    :data:`~domain.book.RateLookup` used to fold them there.
    """
    impact = Impact(collection=book.key)
    if not events:
        return impact
    if len(events) == 1:
        impact.merge(_analyze_one(events[0], book, _Drift()))
        return impact
    scratch = CollectionBook.from_dict(book.to_dict(), book.epsilons, book.price_params)
    # Significance state is not serialised in full: carry the real book's over so that the scratch
    # copy re-examines exactly the tokens the real book will when the events are applied in this order.
    scratch._d.publisher = copy.deepcopy(book._d.publisher)
    scratch.published = dict(book.published)
    lookup = rates or (lambda base, quote, at: None)
    for event in events:
        impact.merge(_analyze_one(event, scratch, _Drift()))
        try:
            scratch.apply(event, lookup)
        except ValueError as exc:
            impact.reasons.append(f"{event.source}:{event.id} not folded: {exc}")
    return impact
