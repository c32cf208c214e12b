"""A collection book: its state, folded from events, read as views and written as JSON. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from nftpulse.domain import price as price_engine
from nftpulse.domain.book.codec import BookCodec
from nftpulse.domain.book.retract import effective
from nftpulse.domain.book.state import RateLookup
from nftpulse.domain.events import Event
from nftpulse.domain.significance import Epsilons


class CollectionBook(BookCodec):
    """One collection folded from its events: facts, derived indexes and the views read from them."""

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
        """The reference: fold every event of the collection in chain order, then derive from scratch.
        Retracted events and the retractions themselves do not count (``retract.effective``)."""
        book = cls.empty(chain, contract, epsilons, price_params)
        book._bulk = True
        for event in sorted(effective(events), key=lambda e: (e.order_key, e.source, e.id)):
            book.apply(event, rates)
        book._bulk = False
        # What was folded in bulk is the whole history, not an addition to one: only later entries count
        # as appended.
        book.mark_history()
        book._rebuild()
        book.published = book._collection_headline()
        book._d.publisher.republish(book._d.rarity)
        return book
