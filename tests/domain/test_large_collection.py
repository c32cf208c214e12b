"""A collection-wide change on a large collection (trust, floor, a fraud finding) rewrites only the NFT
views whose driven figures moved past their epsilons; every view left alone stays within them, and the
book still equals the recompute (what ``pulse verify`` checks)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from nftpulse.domain.book import CollectionBook
from nftpulse.domain.events import Event
from nftpulse.domain.significance import moved
from nftpulse.domain.trust import NFT_WEIGHTS
from nftpulse.synth import Stream
from tests.domain.eventgen import CHAIN, assert_close, rates
from tests.domain.test_properties import views

TOKENS = 2000


def _within(written: dict[str, Any], fresh: dict[str, Any], book: CollectionBook) -> None:
    """A written NFT view lags the book by less than its own epsilons as of the last move of a collection
    figure, plus what the collection figures may drift since without moving past theirs (an NFT's trust
    is 60 % of its collection's; its price estimate follows the floor and the time-weighted floor)."""
    eps = book.epsilons
    trust_lag = eps.trust_abs + NFT_WEIGHTS["collection"] * eps.trust_abs
    assert not moved(written["trust"]["score"], fresh["trust"]["score"], abs_=trust_lag)
    assert written["risk"]["level"] == fresh["risk"]["level"]
    before, after = written["price_estimate"]["value"], fresh["price_estimate"]["value"]
    assert not moved(
        None if before is None else Decimal(str(before)),
        None if after is None else Decimal(str(after)),
        rel=eps.price_rel + eps.floor_rel + eps.twap_rel,
    )


def test_collection_wide_changes_rewrite_only_what_moved() -> None:
    stream = Stream(sizes=[TOKENS], seed=9, fraud_share=0.02, fraud_severity="critical")
    mints = [Event.model_validate(e) for e in stream.mints()]
    activity = [Event.model_validate(e) for e in stream.take(1200)]
    contract = mints[0].contract
    book = CollectionBook.empty(CHAIN, contract)
    written: dict[str, dict[str, Any]] = {}
    for at in range(0, TOKENS, 500):
        change, _ = book.apply_batch(mints[at : at + 500], rates)
        written |= {tid: book.nft_view(tid) for tid in change.nfts}
    per_move: list[int] = []
    for at in range(0, len(activity), 20):
        batch = activity[at : at + 20]
        change, failed = book.apply_batch(batch, rates)
        assert failed == []
        written |= {tid: book.nft_view(tid) for tid in change.nfts}
        if change.all_nfts:
            per_move.append(len(change.nfts))
    # Every driver move used to rewrite every view. Now a move that shifts each NFT's figures by less
    # than their epsilons (a floor or time-weighted floor move, most trust moves of a settled
    # collection) rewrites few; one that moves them all (the collection's risk level, a big trust
    # drop) still rewrites all.
    assert len(per_move) >= 10
    assert sum(per_move) < 0.8 * len(per_move) * TOKENS, per_move
    assert sum(n < TOKENS / 10 for n in per_move) >= 3, per_move
    for tid in book.tokens:
        _within(written[tid], book.nft_view(tid), book)
    reference = CollectionBook.recompute(CHAIN, contract, [*mints, *activity], rates)
    assert_close(views(book), views(reference))
