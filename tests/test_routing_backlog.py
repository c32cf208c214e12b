"""Routing by what an event is, never by how long it waited: under a long backlog routine events stay
batched on their shards (aging only makes a shard's wake urgent) and a re-dispatched event is not aged
twice."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from nftpulse.core.settings import Settings
from nftpulse.dispatcher import Dispatcher
from nftpulse.domain.classify import ClassifyContext, Thresholds, aged, classify
from nftpulse.domain.events import Event
from nftpulse.store.models import EventRecord, Route

CONTRACT = "0x" + "ab" * 20
ROUTINE = ("sale", "listing", "transfer", "bid", "listing_cancelled", "metadata_update")


def _row(seq: int, kind: str, priority: float, waited_s: float, now: datetime) -> EventRecord:
    return EventRecord(
        seq=seq, source="test", external_id=f"e{seq}", type=kind, occurred_at=now,
        received_at=now - timedelta(seconds=waited_s), chain="ethereum", contract=f"0x{seq % 400:040x}",
        token_id="1", data={}, partition=f"collection:ethereum:0x{seq % 400:040x}", priority=priority,
    )  # fmt: skip


def test_a_long_backlog_keeps_routine_events_batched() -> None:
    settings = Settings(significant_priority=80.0, workflow_id_prefix="t/", shards=4)
    dispatcher = Dispatcher(settings, None, None)  # type: ignore[arg-type]  # route() touches neither
    rnd = random.Random(3)
    now = datetime.now(UTC)
    # Five thousand routine events classified below the threshold, waiting up to three hours: at the
    # old aging (2 points a minute, up to 60) most of them had crossed 80 and gone one workflow each.
    rows = [
        _row(seq, rnd.choice(ROUTINE), rnd.uniform(20.0, 79.9), rnd.uniform(0, 3 * 3600), now)
        for seq in range(1, 5001)
    ]
    th = Thresholds(80.0, settings.large_move)
    assert sum(aged(r.priority, (now - r.received_at).total_seconds(), th) >= 80.0 for r in rows) > 2500
    routed = dispatcher.route(rows)
    assert routed.own == []
    assert all(m.route is Route.PARTITION for m in routed.marks)
    assert sum(len(p) for p in routed.shards.values()) == 400  # conflated per collection
    # Aging still orders work: shards with long-waiting events are woken first.
    assert routed.urgent == set(routed.shards)
    # The log keeps each event's classified priority: dispatched again an hour later, it is aged from
    # there, not from an already aged value.
    marks = {m.seq: m for m in routed.marks}
    assert all(marks[r.seq or 0].priority == r.priority for r in rows)
    later = now + timedelta(hours=1)
    for row in rows:
        row.priority = marks[row.seq or 0].priority
        row.received_at = later - (now - row.received_at)
    again = {m.seq: m for m in dispatcher.route(rows).marks}
    assert all(again[seq].priority == marks[seq].priority for seq in marks)


def test_fraud_findings_and_classified_significant_events_still_go_alone() -> None:
    settings = Settings(significant_priority=80.0, workflow_id_prefix="t/", shards=4)
    dispatcher = Dispatcher(settings, None, None)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    routed = dispatcher.route(
        [
            _row(1, "fraud_finding", 10.0, 7200, now),
            _row(2, "sale", 85.0, 0, now),
            _row(3, "sale", 70.0, 7200, now),
        ]
    )
    assert {m.seq: m.route for m in routed.marks} == {1: Route.OWN, 2: Route.OWN, 3: Route.PARTITION}


def test_classification_decides_significance_without_the_wait() -> None:
    event = Event.model_validate(
        {
            "id": "s1", "source": "test", "type": "sale", "occurred_at": "2026-11-01T10:00:00Z",
            "chain": "ethereum", "contract": CONTRACT, "token_id": "1",
            "data": {
                "from": "0x" + "a" * 40, "to": "0x" + "b" * 40, "price": {"amount": "1", "currency": "ETH"}
            },
        }
    )  # fmt: skip
    th = Thresholds(80.0, 0.5)
    fresh = classify(event, ClassifyContext(th, floor=None))
    waited = classify(event, ClassifyContext(th, floor=None, waited_s=6 * 3600))
    assert waited.priority >= 80.0 > fresh.priority  # aging is still shown in the priority
    assert not fresh.significant and not waited.significant
