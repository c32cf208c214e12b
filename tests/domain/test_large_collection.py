"""A collection-wide change on a large collection (trust, floor, a fraud finding) rewrites no NFT row: each
NFT's trust, risk, price estimate and best offer are derived when read from its own stored part and the
collection's factors, and such a read is exactly the book's view (rarity apart, which its own epsilons
publish); the book still equals the recompute (what ``pulse verify`` checks)."""

from __future__ import annotations

from typing import Any

from nftpulse.domain.book import CollectionBook, derive
from nftpulse.domain.events import Event, EventType
from nftpulse.synth import Stream
from tests.domain.eventgen import CHAIN, assert_close, rates
from tests.domain.test_properties import views, write

TOKENS = 2000
BATCH = 20


def _without_rarity(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k not in ("rarity", "price_estimate")}


def test_collection_wide_changes_rewrite_no_nft_rows_and_reads_stay_exact() -> None:
    stream = Stream(sizes=[TOKENS], seed=9, fraud_share=0.02, fraud_severity="critical")
    mints = [Event.model_validate(e) for e in stream.mints()]
    activity = [Event.model_validate(e) for e in stream.take(1200)]
    contract = mints[0].contract
    book = CollectionBook.empty(CHAIN, contract)
    stored: dict[str, Any] = {}
    for at in range(0, TOKENS, 500):
        change, _ = book.apply_batch(mints[at : at + 500], rates)
        write(stored, book, change)
    per_move: list[int] = []
    for at in range(0, len(activity), BATCH):
        batch = activity[at : at + BATCH]
        change, failed = book.apply_batch(batch, rates)
        assert failed == []
        write(stored, book, change)
        if change.all_nfts:
            # A token of the batch's own, a holder's token when a finding names wallets, or one whose
            # rarity was published: never the collection's other tokens.
            wallets = {
                w for e in batch if e.type is EventType.FRAUD_FINDING for w in e.data.get("wallets", [])
            }
            held = {tid for tid, t in book.tokens.items() if t.owner in wallets}
            ranked = {key.rsplit(":", 1)[1] for key, m in change.metrics if m.startswith("rarity_")}
            extra = change.nfts - {e.token_id for e in batch} - held - ranked
            assert not extra, extra
            per_move.append(len(change.nfts))
        factors = stored["collection"][derive.FACTORS]
        for tid in book.tokens:
            read, fresh = derive.nft_view(stored[tid], factors), book.nft_view(tid)
            # Rarity (and the price estimate's rarity premium) is published by its own epsilons.
            if stored[tid][derive.INPUTS]["rarity_score"] != book.rarity.score(tid):
                read, fresh = _without_rarity(read), _without_rarity(fresh)
            assert read == fresh, tid
    # Findings are critical: the first moves every NFT's risk level, later ones trust; floors move too.
    # Stored whole, each would rewrite every NFT row.
    assert len(per_move) >= 10 and sum(per_move) < 0.05 * len(per_move) * TOKENS, per_move
    reference = CollectionBook.recompute(CHAIN, contract, [*mints, *activity], rates)
    assert_close(views(book), views(reference))
