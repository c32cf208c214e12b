"""The state of one collection and its tokens, folded from events. Pure: no I/O.

Every rule here is order-independent so that applying events incrementally, in whatever order they
arrive, gives the same book as a full recompute over the events sorted in chain order:

* last-writer-wins by the event's chain position (``order_key``) for owner, traits, listing, last sale;
* commutative sums for volume and sales count;
* the book's clock is the latest ``occurred_at`` it has seen, never the wall clock.

Engines (rarity, trust, price estimate, risk, market condition) hang off the same book: ``apply``
returns a :class:`Change` naming exactly the tokens and factors that moved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from domain.events import ZERO_ADDRESS, Event, EventType

OrderKey = tuple[int, int, str]
RateLookup = Callable[[str, str, datetime], Decimal | None]
"""``(base, quote, at) -> rate``: how many ``quote`` one ``base`` was worth at ``at``, or None."""

NATIVE_CURRENCY = {"polygon": "POL", "bsc": "BNB", "avalanche": "AVAX"}
"""Each chain's quote currency for collection statistics; every other chain quotes in ETH."""

_SAME_AS = {"WETH": "ETH", "MATIC": "POL", "WMATIC": "POL", "WPOL": "POL", "WBNB": "BNB", "WAVAX": "AVAX"}


class UnpricedEventError(ValueError):
    """A price could not be converted into the collection's quote currency: permanent until a rate arrives."""


class InconsistentEventError(ValueError):
    """An event contradicts the collection it claims to belong to: permanent, needs a human."""


def quote_currency(chain: str) -> str:
    return NATIVE_CURRENCY.get(chain, "ETH")


def normalise_currency(symbol: str) -> str:
    symbol = symbol.upper()
    return _SAME_AS.get(symbol, symbol)


@dataclass
class Change:
    """What one or more applied events moved: the read models to rewrite and the metrics that changed."""

    nfts: set[str] = field(default_factory=set)
    collection: bool = False
    #: ``(entity_key, metric) -> (before, after)``; before is the value ahead of the first event.
    metrics: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict)

    def merge(self, other: Change) -> None:
        self.nfts |= other.nfts
        self.collection |= other.collection
        for key, (before, after) in other.metrics.items():
            first = self.metrics.get(key, (before, after))[0]
            self.metrics[key] = (first, after)

    def note(self, entity: str, metric: str, before: Any, after: Any) -> None:
        if before != after:
            self.merge(Change(metrics={(entity, metric): (before, after)}))

    @property
    def empty(self) -> bool:
        return not self.nfts and not self.collection


@dataclass
class Token:
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
        return self.owner is not None and not self.burned


def _newer(candidate: OrderKey, current: OrderKey | None) -> bool:
    return current is None or candidate > current


@dataclass
class CollectionBook:
    chain: str
    contract: str
    tokens: dict[str, Token] = field(default_factory=dict)
    volume: Decimal = Decimal(0)
    sales_count: int = 0
    holder_counts: dict[str, int] = field(default_factory=dict)
    clock: str | None = None

    @classmethod
    def empty(cls, chain: str, contract: str) -> CollectionBook:
        return cls(chain=chain, contract=contract.lower())

    @classmethod
    def recompute(cls, chain: str, contract: str, events: Iterable[Event], rates: RateLookup) -> CollectionBook:
        """The reference: fold every event of the collection in chain order from an empty book."""
        book = cls.empty(chain, contract)
        for event in sorted(events, key=lambda e: (e.order_key, e.source, e.id)):
            book.apply(event, rates)
        return book

    # -- derived figures ---------------------------------------------------------------------------

    @property
    def currency(self) -> str:
        return quote_currency(self.chain)

    @property
    def key(self) -> str:
        return f"collection:{self.chain}:{self.contract}"

    def nft_key(self, token_id: str) -> str:
        return f"nft:{self.chain}:{self.contract}:{token_id}"

    def active_listings(self) -> list[Token]:
        now = self.clock
        return [
            t
            for t in self.tokens.values()
            if t.listing is not None
            and t.live
            and (t.listing.get("expires_at") is None or now is None or t.listing["expires_at"] > now)
        ]

    @property
    def floor(self) -> Decimal | None:
        prices = [Decimal(t.listing["price"]) for t in self.active_listings() if t.listing]
        return min(prices) if prices else None

    @property
    def supply(self) -> int:
        return sum(1 for t in self.tokens.values() if t.live)

    @property
    def holders(self) -> int:
        return len(self.holder_counts)

    # -- applying events ---------------------------------------------------------------------------

    def apply(self, event: Event, rates: RateLookup) -> Change:
        if event.chain != self.chain or event.contract != self.contract:
            raise InconsistentEventError(f"event for {event.collection_key} applied to {self.key}")
        before = self._headline()
        change = Change()
        stamp = event.occurred_at.isoformat()
        if self.clock is None or stamp > self.clock:
            # Listings may expire as the clock moves: the floor is a collection-wide figure.
            self.clock = stamp
            change.collection = True
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event, rates, change)
        after = self._headline()
        for metric, value in after.items():
            change.note(self.key, metric, before[metric], value)
        if change.metrics:
            change.collection = True
        return change

    def _headline(self) -> dict[str, Any]:
        floor = self.floor
        return {
            "floor": None if floor is None else str(floor),
            "volume": str(self.volume),
            "sales_count": self.sales_count,
            "holders_count": self.holders,
        }

    def _token(self, token_id: str) -> Token:
        token = self.tokens.get(token_id)
        if token is None:
            token = self.tokens[token_id] = Token(token_id)
        return token

    def _set_owner(self, token: Token, owner: str | None, key: OrderKey, change: Change) -> None:
        if not _newer(key, token.owner_key):
            return
        old = token.owner if token.live else None
        token.owner_key = key
        token.owner = None if owner in (None, ZERO_ADDRESS) else owner
        token.burned = token.owner is None
        new = token.owner if token.live else None
        if old != new:
            self._count_holder(old, -1)
            self._count_holder(new, +1)
            change.note(self.nft_key(token.token_id), "owner", old, new)
        # An ownership change ends any listing the previous owner had made before it.
        if token.listing is not None and token.listing_key is not None and key > token.listing_key:
            token.listing = None
            token.listing_key = key
        change.nfts.add(token.token_id)

    def _count_holder(self, wallet: str | None, delta: int) -> None:
        if wallet is None:
            return
        count = self.holder_counts.get(wallet, 0) + delta
        if count > 0:
            self.holder_counts[wallet] = count
        else:
            self.holder_counts.pop(wallet, None)

    def to_quote(self, event: Event, price: dict[str, str], rates: RateLookup) -> Decimal:
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

    # -- serialisation -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "contract": self.contract,
            "volume": str(self.volume),
            "sales_count": self.sales_count,
            "clock": self.clock,
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
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CollectionBook:
        def key(v: Any) -> OrderKey | None:
            return None if v is None else (int(v[0]), int(v[1]), str(v[2]))

        book = cls(
            chain=raw["chain"],
            contract=raw["contract"],
            volume=Decimal(raw["volume"]),
            sales_count=int(raw["sales_count"]),
            clock=raw.get("clock"),
            holder_counts=dict(raw.get("holder_counts", {})),
        )
        for tid, t in raw.get("tokens", {}).items():
            book.tokens[tid] = Token(
                token_id=tid,
                owner=t["owner"],
                owner_key=key(t["owner_key"]),
                minted=t["minted"],
                burned=t["burned"],
                traits=t["traits"],
                traits_key=key(t["traits_key"]),
                last_sale=t["last_sale"],
                last_sale_key=key(t["last_sale_key"]),
                listing=t["listing"],
                listing_key=key(t["listing_key"]),
            )
        return book

    # -- read models -------------------------------------------------------------------------------

    def nft_view(self, token_id: str) -> dict[str, Any]:
        t = self.tokens[token_id]
        return {
            "chain": self.chain,
            "contract": self.contract,
            "token_id": token_id,
            "owner": t.owner if t.live else None,
            "burned": t.burned,
            "traits": t.traits,
            "last_sale": t.last_sale,
            "active_listing": t.listing if t in self.active_listings() else None,
        }

    def collection_view(self) -> dict[str, Any]:
        floor = self.floor
        return {
            "chain": self.chain,
            "contract": self.contract,
            "currency": self.currency,
            "floor": None if floor is None else str(floor),
            "volume": str(self.volume),
            "sales_count": self.sales_count,
            "holders_count": self.holders,
            "supply": self.supply,
            "listed_count": len(self.active_listings()),
        }


# -- per-type handlers -----------------------------------------------------------------------------


def _mint(book: CollectionBook, event: Event, rates: RateLookup, change: Change) -> None:
    token = book._token(event.token_id or "")
    token.minted = True
    book._set_owner(token, event.data["to"], event.order_key, change)
    traits = event.data.get("traits")
    if traits is not None and _newer(event.order_key, token.traits_key):
        token.traits, token.traits_key = dict(traits), event.order_key
    change.nfts.add(token.token_id)


def _transfer(book: CollectionBook, event: Event, rates: RateLookup, change: Change) -> None:
    to = event.data["to"]
    if event.data.get("from") == ZERO_ADDRESS:
        return _mint(book, event, rates, change)
    token = book._token(event.token_id or "")
    book._set_owner(token, None if to == ZERO_ADDRESS else to, event.order_key, change)


def _burn(book: CollectionBook, event: Event, rates: RateLookup, change: Change) -> None:
    token = book._token(event.token_id or "")
    book._set_owner(token, None, event.order_key, change)


def _sale(book: CollectionBook, event: Event, rates: RateLookup, change: Change) -> None:
    token = book._token(event.token_id or "")
    price = book.to_quote(event, event.data["price"], rates)
    book.volume += price
    book.sales_count += 1
    if _newer(event.order_key, token.last_sale_key):
        token.last_sale = {
            "price": str(price),
            "currency": book.currency,
            "paid": event.data["price"],
            "buyer": event.data["to"],
            "seller": event.data["from"],
            "at": event.occurred_at.isoformat(),
        }
        token.last_sale_key = event.order_key
    book._set_owner(token, event.data["to"], event.order_key, change)
    change.nfts.add(token.token_id)
    change.collection = True


def _listing(book: CollectionBook, event: Event, rates: RateLookup, change: Change) -> None:
    token = book._token(event.token_id or "")
    if not _newer(event.order_key, token.listing_key) or not _newer(event.order_key, token.owner_key):
        return
    expires = event.data.get("expires_at")
    token.listing = {
        "price": str(book.to_quote(event, event.data["price"], rates)),
        "currency": book.currency,
        "asked": event.data["price"],
        "seller": event.data["seller"],
        "at": event.occurred_at.isoformat(),
        "expires_at": None if expires is None else _iso(expires),
    }
    token.listing_key = event.order_key
    change.nfts.add(token.token_id)
    change.collection = True


def _listing_cancelled(book: CollectionBook, event: Event, rates: RateLookup, change: Change) -> None:
    token = book._token(event.token_id or "")
    if not _newer(event.order_key, token.listing_key):
        return
    token.listing, token.listing_key = None, event.order_key
    change.nfts.add(token.token_id)
    change.collection = True


def _metadata_update(book: CollectionBook, event: Event, rates: RateLookup, change: Change) -> None:
    token = book._token(event.token_id or "")
    if not _newer(event.order_key, token.traits_key):
        return
    before = token.traits
    token.traits, token.traits_key = dict(event.data["traits"]), event.order_key
    change.note(book.nft_key(token.token_id), "traits", before, token.traits)
    change.nfts.add(token.token_id)


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


_HANDLERS: dict[EventType, Callable[[CollectionBook, Event, RateLookup, Change], None]] = {
    EventType.MINT: _mint,
    EventType.TRANSFER: _transfer,
    EventType.BURN: _burn,
    EventType.SALE: _sale,
    EventType.LISTING: _listing,
    EventType.LISTING_CANCELLED: _listing_cancelled,
    EventType.METADATA_UPDATE: _metadata_update,
}
