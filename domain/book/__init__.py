"""The state of one collection and its tokens, folded from events, and every engine hung off it. Pure.

By concern: ``state`` (the facts, the indexes derived from them and the figures read off them),
``views`` (the read models and headline figures), ``fold`` (applying events), ``codec`` (the JSON
form), and ``collection`` (:class:`CollectionBook`, all of them together). How a book is stored is
``store.books``'.

Every rule is order-independent so that applying events incrementally, in whatever order they arrive,
gives the same views as a full recompute over the events sorted in chain order:

* last-writer-wins by the event's chain position (``order_key``), ties at one position broken by the
  event's ``source:id`` (``state.Stamp``), for owner, traits, listing, last sale, fraud findings (per
  ``finding_id``) and creator verification; a token's listing slot ranks its writes as its listing
  history does (``state.listing_rank``): an ownership change or a cancellation ends only the listings
  strictly before its position;
* prices in the quote currency in one written form (``state.canonical_amount``: ``1``, never ``1.0000``),
  so equal prices are equal strings however a view was reached;
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
time (wash rules) and the neighbours of its listing-history entry (floor intervals); nothing scales
with the length of the history. Per batch: rarity brought up to date once (a plan per changed token, or
one rebuild of the index when that is cheaper, as in a mint-out), the collection headline, the floor
series from the earliest change (the listings live then plus what came after), and each touched token's
headline before and after. Nothing per batch scales with the collection's size: an NFT's trust, risk,
price estimate and best offer are derived when read from its stored part and the collection's factors
(``derive``), so a collection-wide move rewrites one row, not one per token.
"""

from nftpulse.domain.book.collection import CollectionBook
from nftpulse.domain.book.state import (
    EVENT_ERRORS,
    NATIVE_CURRENCY,
    NFT_DRIVERS,
    TWAP_WINDOW_US,
    AppendedHistory,
    Change,
    InconsistentEventError,
    OrderKey,
    RateLookup,
    Token,
    UnpricedEventError,
    normalise_currency,
    quote_currency,
    rate_keys,
)

__all__ = [
    "EVENT_ERRORS",
    "NATIVE_CURRENCY",
    "NFT_DRIVERS",
    "TWAP_WINDOW_US",
    "AppendedHistory",
    "Change",
    "CollectionBook",
    "InconsistentEventError",
    "OrderKey",
    "RateLookup",
    "Token",
    "UnpricedEventError",
    "normalise_currency",
    "quote_currency",
    "rate_keys",
]
