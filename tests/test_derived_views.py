"""NFT views derived when read, through the real recalculation activity on SQLite and Postgres: the stored
rows (each NFT's part, the collection's factors) give exactly the book's views, detection's facts derive the
same price estimates, and rows a book stored as whole views are replaced by parts on its next batch."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import update
from sqlmodel import col
from temporalio.testing import ActivityEnvironment

from nftpulse.activities.contracts.pipeline import ImpactPlan, RecalcInput
from nftpulse.activities.pipeline import PipelineActivities
from nftpulse.domain.book import derive
from nftpulse.domain.events import Event
from nftpulse.store import events as store_events
from nftpulse.store import watching
from nftpulse.store.books import load_book
from nftpulse.store.cache import MemoryCache
from nftpulse.store.db import Database
from nftpulse.store.entities import read_view
from nftpulse.store.events import DispatchMark
from nftpulse.store.models import CollectionBookRecord, EntityView, Route
from tests.domain.eventgen import CHAIN, CONTRACT, T0

PARTITION = f"collection:{CHAIN}:{CONTRACT}"
A, B, C = ("0x" + c * 40 for c in "123")


def _event(eid: str, kind: str, data: dict[str, Any], token: str | None, minutes: int) -> Event:
    return Event(
        id=eid,
        source="gen",
        type=kind,
        occurred_at=T0 + timedelta(minutes=minutes),
        chain=CHAIN,
        contract=CONTRACT,
        token_id=token,
        block_number=minutes + 1,
        log_index=0,
        data=data,
    )


def _deliver(db: Database, acts: PipelineActivities, batch: list[Event], n: int) -> None:
    outcomes = store_events.append(db, batch, [(0.5, "normal")] * len(batch))
    seqs = [o.seq for o in outcomes if o.seq is not None]
    store_events.mark_dispatched(
        db, [DispatchMark(seq, Route.PARTITION, "wf", 0.5, "normal") for seq in seqs]
    )
    plan = ImpactPlan([PARTITION], seqs, 0, [], [], "")
    ActivityEnvironment().run(acts.recalculate, RecalcInput(plan, f"wf-{n}"))


def _eth(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "ETH"}


TOKENS = [str(t) for t in range(12)]
BATCHES = [
    [
        _event(f"m{t}", "mint", {"to": A if int(t) % 3 else B, "traits": {"hat": f"h{int(t) % 4}"}}, t, 0)
        for t in TOKENS
    ],
    [
        _event("l1", "listing", {"seller": A, "price": _eth("2")}, "1", 5),
        _event("l2", "listing", {"seller": A, "price": _eth("3")}, "2", 6),
        _event("s4", "sale", {"from": A, "to": C, "price": _eth("2.5")}, "4", 7),
    ],
    # Collection-wide: a collection offer and a trait offer, then a critical finding about the collection.
    [
        _event("o1", "bid", {"bidder": C, "price": _eth("1.8")}, None, 10),
        _event(
            "o2",
            "bid",
            {"bidder": B, "price": _eth("2.2"), "trait": {"type": "hat", "value": "h1"}},
            None,
            11,
        ),
    ],
    [
        _event(
            "f1", "fraud_finding", {"finding_id": "F1", "kind": "rug_pull", "severity": "critical"}, None, 20
        )
    ],
    # A wallet finding moves the tokens its wallet holds; a cancellation moves the floor.
    [
        _event(
            "f2",
            "fraud_finding",
            {"finding_id": "F2", "kind": "wash", "severity": "high", "wallets": [B]},
            None,
            30,
        ),
        _event("c1", "listing_cancelled", {"seller": A}, "1", 31),
    ],
]


def test_reads_from_the_stored_rows_are_the_books_views(db: Database) -> None:
    acts = PipelineActivities(db, MemoryCache())
    for n, batch in enumerate(BATCHES):
        before = {t: read_view(db, f"nft:{CHAIN}:{CONTRACT}:{t}") for t in TOKENS}
        _deliver(db, acts, batch, n)
        with db.read() as session:
            book, _ = load_book(session, PARTITION, CHAIN, CONTRACT)
            facts = watching.entity_facts(session, [book.nft_key(t) for t in TOKENS])
        coll = read_view(db, PARTITION)
        assert coll is not None
        factors = coll.view[derive.FACTORS]
        for t in TOKENS:
            row = read_view(db, book.nft_key(t))
            assert row is not None and derive.is_part(row.view)
            view = derive.nft_view(row.view, factors)
            fresh = book.nft_view(t)
            if row.view[derive.INPUTS]["rarity_score"] != book.rarity.score(t):
                view, fresh = _without_rarity(view), _without_rarity(fresh)  # its own epsilons publish it
            assert view == fresh, (n, t)
            assert facts[book.nft_key(t)].price_estimate == view["price_estimate"]["value"]
        if n >= 2:
            # Collection-wide moves (offers, a collection finding) rewrote no NFT the batch did not name.
            named = {e.token_id for e in batch} | {t for t in TOKENS if book.tokens[t].owner == B and n == 4}
            for t in TOKENS:
                if t not in named:
                    row = read_view(db, book.nft_key(t))
                    assert row is not None and row.version == before[t].version, (n, t)  # type: ignore[union-attr]
    last = derive.nft_view(read_view(db, f"nft:{CHAIN}:{CONTRACT}:5").view, factors)  # type: ignore[union-attr]
    assert last["risk"]["level"] == "critical" and last["best_offer"]["scope"] == "trait"


def _without_rarity(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k not in ("rarity", "price_estimate")}


def test_whole_views_stored_before_are_replaced_by_parts(db: Database) -> None:
    acts = PipelineActivities(db, MemoryCache())
    _deliver(db, acts, BATCHES[0], 0)
    # As a book and its rows were stored before views were derived: whole views, no marker in the book.
    with db.write() as session:
        book, _ = load_book(session, PARTITION, CHAIN, CONTRACT)
        for t in TOKENS:
            session.exec(
                update(EntityView).where(col(EntityView.key) == book.nft_key(t)).values(view=book.nft_view(t))
            )
        core = book.core_dict()
        del core["nft_rows"]
        session.exec(
            update(CollectionBookRecord)
            .where(col(CollectionBookRecord.key) == PARTITION)
            .values(book=orjson.dumps(core))
        )
    assert not derive.is_part(read_view(db, f"nft:{CHAIN}:{CONTRACT}:3").view)  # type: ignore[union-attr]
    # A new worker (nothing in memory) applies one event of one token: every row becomes a part.
    _deliver(db, PipelineActivities(db, MemoryCache()), BATCHES[1][:1], 1)
    for t in TOKENS:
        row = read_view(db, f"nft:{CHAIN}:{CONTRACT}:{t}")
        assert row is not None and derive.is_part(row.view), t
    with db.read() as session:
        book, _ = load_book(session, PARTITION, CHAIN, CONTRACT)
    assert book.core_dict()["nft_rows"] == "parts"
