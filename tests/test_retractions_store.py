"""Retractions through the real recalculation activity and event log: random streams with retractions
interleaved, delivered in random batches, in any order and with repeats, leave stored books and read models
equal to the full recompute of the log without the retracted events (what `pulse verify` checks), retracted
events read ``retracted``, and the change feed carries the reversal."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select
from temporalio.testing import ActivityEnvironment

from nftpulse.activities.contracts.pipeline import ImpactPlan, RecalcInput
from nftpulse.activities.pipeline import PipelineActivities
from nftpulse.domain.book import CollectionBook
from nftpulse.domain.book.retract import ref
from nftpulse.domain.events import Event, collection_key
from nftpulse.store import events as store_events
from nftpulse.store import schema
from nftpulse.store.books import load_book
from nftpulse.store.cache import MemoryCache
from nftpulse.store.db import Database
from nftpulse.store.entities import read_view
from nftpulse.store.events import DispatchMark
from nftpulse.store.models import ChangeLogRecord, EventStatus, Route
from nftpulse.verify import verify
from tests.domain.eventgen import CHAIN, CONTRACT, rates, streams
from tests.domain.test_retractions import retraction

PARTITION = collection_key(CHAIN, CONTRACT)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("retractions")


def fresh_db(workdir: Path, name: str) -> Database:
    db = Database(f"sqlite:///{workdir / name}.db")
    schema.upgrade(db)
    return with_rate(db)


def with_rate(db: Database) -> Database:
    # The USDC/ETH rate the generated events are priced with (eventgen.rates).
    from nftpulse.store.entities import add_rate
    from tests.domain.eventgen import T0

    with db.write() as session:
        add_rate(session, "USDC", "ETH", T0.replace(year=2020), "0.0004", 0)
    return db


def deliver(db: Database, acts: PipelineActivities, batch: list[Event], n: int) -> None:
    if not batch:
        return
    outcomes = store_events.append(db, batch, [(0.5, "normal")] * len(batch))
    seqs = [o.seq for o in outcomes if o.seq is not None]
    if not seqs:
        return
    marks = [DispatchMark(seq, Route.PARTITION, "wf", 0.5, "normal") for seq in seqs]
    store_events.mark_dispatched(db, marks)
    plan = ImpactPlan([PARTITION], seqs, 0, [], [], "")
    ActivityEnvironment().run(acts.recalculate, RecalcInput(plan, f"wf-{n}"))


def views(book: CollectionBook) -> dict[str, Any]:
    return {book.key: book.collection_view(), **{book.nft_key(t): book.nft_view(t) for t in book.tokens}}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(max_size=25), st.randoms(use_true_random=False), st.data())
def test_stored_state_after_retractions_equals_the_log_without_them(
    workdir: Path, events: list[Event], rnd: random.Random, data: st.DataObject
) -> None:
    unique = list({ref(e): e for e in reversed(events)}.values())
    targets = data.draw(st.lists(st.sampled_from([*unique, None]), max_size=6))
    retractions = [retraction(n, t) for n, t in enumerate(targets)]
    again = data.draw(st.lists(st.sampled_from(retractions), max_size=2)) if retractions else []
    deliveries = events + retractions + again
    rnd.shuffle(deliveries)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(deliveries)), max_size=4)))
    db = fresh_db(workdir, uuid.uuid4().hex)
    acts = PipelineActivities(db, MemoryCache())
    start = 0
    for n, cut in enumerate([*cuts, len(deliveries)]):
        deliver(db, acts, deliveries[start:cut], n)
        start = cut
    gone = {ref(t) for t in targets if t is not None}
    expected = CollectionBook.recompute(CHAIN, CONTRACT, [e for e in unique if ref(e) not in gone], rates)
    with db.read() as session:
        stored, _ = load_book(session, PARTITION, CHAIN, CONTRACT)
    assert views(stored) == views(expected) or not unique
    report = verify(db)
    assert report.ok, report.differences[:3]
    for key in views(expected):
        assert read_view(db, key) is not None, key
    for event in unique:
        row = store_events.get(db, event.source, event.id)
        assert row is not None
        if ref(event) in gone:
            assert row.status == EventStatus.RETRACTED.value
        else:
            assert row.status in (EventStatus.PROCESSED.value, EventStatus.FAILED.value)
    db.dispose()


def test_a_retracted_sale_is_undone_and_the_feed_carries_the_reversal(db: Database) -> None:
    from datetime import timedelta

    from tests.domain.eventgen import T0

    with_rate(db)
    acts = PipelineActivities(db, MemoryCache())
    a, b = "0x" + "1" * 40, "0x" + "2" * 40
    common: dict[str, Any] = {"source": "gen", "chain": CHAIN, "contract": CONTRACT, "token_id": "7"}
    mint = Event(id="m", type="mint", occurred_at=T0, block_number=1, log_index=0, data={"to": a}, **common)
    sale = Event(
        id="s",
        type="sale",
        occurred_at=T0 + timedelta(hours=1),
        block_number=2,
        log_index=0,
        data={"from": a, "to": b, "price": {"amount": "3", "currency": "ETH"}},
        **common,
    )
    deliver(db, acts, [mint], 0)
    deliver(db, acts, [sale], 1)
    nft = f"nft:{CHAIN}:{CONTRACT}:7"
    view = read_view(db, nft)
    assert view is not None and view.view["owner"] == b
    version = view.version
    deliver(db, acts, [retraction(0, sale)], 2)
    deliver(db, acts, [retraction(0, sale), retraction(1, sale)], 3)  # twice, and again by another: harmless
    view = read_view(db, nft)
    assert view is not None and view.view["owner"] == a and view.version > version
    sale_row = store_events.get(db, "gen", "s")
    assert sale_row is not None and sale_row.status == "retracted"
    with db.read() as session:
        feed = list(session.exec(select(ChangeLogRecord).where(ChangeLogRecord.entity_key == nft)))
    reversal = feed[-1]
    assert reversal.changes["owner"] == [b, a]
    assert "gen-r/r0" in reversal.causes
    # A retraction before its event: the event arrives as a no-op.
    late = sale.model_copy(update={"id": "s2"})
    deliver(db, acts, [retraction(9, late)], 4)
    deliver(db, acts, [late], 5)
    view = read_view(db, nft)
    assert view is not None and view.view["owner"] == a
    assert (store_events.get(db, "gen", "s2") or sale_row).status == "retracted"
    assert verify(db).ok
    # A retracted mint: the token is gone, its view too.
    deliver(db, acts, [retraction(10, mint)], 6)
    assert read_view(db, nft) is None
    assert verify(db).ok
