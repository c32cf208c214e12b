"""The pipeline's activities: impact analysis, recalculation and cache invalidation for a batch of events.

They are methods of one class built once by the worker with its dependencies, and they are synchronous
(run on the worker's thread pool) because all their work is database and CPU work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import (
    ImpactInput,
    ImpactPlan,
    InvalidateInput,
    InvalidateResult,
    IsolatedEvent,
    MetricChange,
    PermanentProcessingError,
    RecalcInput,
    RecalcResult,
)
from domain.book import Change, CollectionBook, InconsistentEventError, UnpricedEventError
from domain.events import Event, EventType
from domain.impact import analyze_each
from pulse.metrics import (
    EVENTS_FAILED,
    EVENTS_PROCESSED,
    PROCESSING_SECONDS,
    RECALC_SECONDS,
    TEMPORAL_ACTIONS,
)
from store import entities, events
from store.cache import EntityCache
from store.db import Database, TransientStoreError
from store.entities import RateBook, ViewWrite
from store.models import EventRecord, EventStatus, Route

log = logging.getLogger("pulse.activities")


def error_category(exc: BaseException) -> str:
    if isinstance(exc, UnpricedEventError):
        return "unpriced"
    if isinstance(exc, InconsistentEventError):
        return "inconsistent"
    if isinstance(exc, ValidationError):
        return "schema"
    return "engine"


def split_partition(partition: str) -> tuple[str, str, str]:
    """``collection:<chain>:<contract>`` or ``rates:<chain>`` (whose contract part is empty)."""
    kind, chain, *rest = partition.split(":", 2)
    return kind, chain, rest[0] if rest else ""


@dataclass
class _Applied:
    book: CollectionBook
    change: Change
    applied: list[EventRecord]
    poison: list[tuple[EventRecord, BaseException]]


class BookCache:
    """Collection books kept in memory between batches, valid only for the version they were saved as.

    Parsing a large book (megabytes of JSON, then its indexes) costs more than applying a batch; a
    version check against the database is one indexed read. Another worker's commit bumps the version
    and so invalidates the copy here.
    """

    def __init__(self, max_books: int = 256) -> None:
        self._books: OrderedDict[str, tuple[int, CollectionBook]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_books

    def take(self, key: str, version: int | None) -> CollectionBook | None:
        with self._lock:
            item = self._books.pop(key, None)
        return item[1] if item is not None and item[0] == version else None

    def peek(self, key: str, version: int | None) -> CollectionBook | None:
        with self._lock:
            item = self._books.get(key)
        return item[1] if item is not None and item[0] == version else None

    def put(self, key: str, version: int, book: CollectionBook) -> None:
        with self._lock:
            self._books[key] = (version, book)
            self._books.move_to_end(key)
            while len(self._books) > self._max:
                self._books.popitem(last=False)


class PipelineActivities:
    def __init__(self, db: Database, cache: EntityCache, workflow_id_prefix: str = "") -> None:
        self._books = BookCache()
        self._db = db
        self._cache = cache
        self._prefix = workflow_id_prefix

    # -- impact analysis ----------------------------------------------------------------------------

    @activity.defn(name="analyze_impact")
    def analyze_impact(self, inp: ImpactInput) -> ImpactPlan:
        """Which events are pending, and exactly which entities and factors they move."""
        _count_action()
        kind, chain, contract = split_partition(inp.partition)
        with self._db.read() as session:
            if inp.seqs:
                rows = [r for r in events.load_by_seq(session, inp.seqs) if r.status in _APPLICABLE]
            else:
                rows = events.pending_for_partition(session, inp.partition, inp.limit + 1)
            has_more = len(rows) > inp.limit
            rows = rows[: inp.limit]
            if kind != "collection" or not rows:
                return ImpactPlan(inp.partition, [r.seq or 0 for r in rows], 0, [], [], "low", has_more)
            book = self._books.peek(inp.partition, entities.book_version(session, inp.partition))
            if book is None:
                book, _version = entities.load_book(session, inp.partition, chain, contract)
        parsed, _ = _parse(rows)
        impact = analyze_each([event for _, event in parsed], book)
        factors = {f"nft.{f}" for f in impact.nft_factors} | {
            f"collection.{f}" for f in impact.collection_factors
        }
        touched = sorted(impact.entity_keys(book))
        return ImpactPlan(
            partition=inp.partition,
            seqs=[r.seq or 0 for r in rows],
            entity_count=len(touched),
            entities=touched[:PLAN_SAMPLE],
            factors=sorted(factors),
            severity=impact.severity,
            has_more=has_more,
        )

    # -- recalculation ------------------------------------------------------------------------------

    @activity.defn(name="recalculate")
    def recalculate(self, inp: RecalcInput) -> RecalcResult:
        """Apply the planned events to their collection's book in one transaction and rewrite exactly the
        read models that moved. Events already applied (a retry, a redelivered signal) are skipped."""
        _count_action()
        plan = inp.plan
        if not plan.seqs:
            return RecalcResult(plan.partition, [], [], [], [])
        try:
            result, failure = self._recalculate(inp)
        except TransientStoreError as exc:
            raise ApplicationError(str(exc), type="TransientStoreError") from exc
        if failure is not None:
            row, error = failure
            category = error_category(error)
            with self._db.write() as session:
                events.mark_failed(session, row.seq or 0, str(error), category, inp.workflow_id)
            EVENTS_FAILED.labels(category).inc()
            EVENTS_PROCESSED.labels(row.type, "failed").inc()
            raise ApplicationError(
                f"event {row.source}/{row.external_id} cannot be processed: {error}",
                {"seq": row.seq, "category": category},
                type=PermanentProcessingError.__name__,
                non_retryable=True,
            )
        return result

    def _recalculate(self, inp: RecalcInput) -> tuple[RecalcResult, tuple[EventRecord, BaseException] | None]:
        plan = inp.plan
        kind, chain, contract = split_partition(plan.partition)
        with self._db.write() as session:
            self._db.lock_partition(session, plan.partition)
            rows = [r for r in events.load_by_seq(session, plan.seqs) if r.status in _APPLICABLE]
            if not inp.single:
                rows = [r for r in rows if r.route == Route.PARTITION.value]
            if not rows:
                return RecalcResult(plan.partition, [], [], [], []), None
            if kind == "rates":
                return self._apply_rates(session, plan.partition, rows), None

            started = time.perf_counter()
            version = entities.book_version(session, plan.partition) or 0
            outcome = self._apply(session, plan.partition, chain, contract, version, rows)
            if outcome.poison and inp.single:
                return RecalcResult(plan.partition, [], [], [], []), outcome.poison[0]
            entities.save_book(session, plan.partition, outcome.book, version + 1)
            writes = [
                ViewWrite(outcome.book.nft_key(tid), "nft", plan.partition, outcome.book.nft_view(tid))
                for tid in sorted(outcome.change.nfts)
                if tid in outcome.book.tokens
            ]
            if outcome.change.collection or not outcome.book.tokens:
                writes.append(
                    ViewWrite(plan.partition, "collection", plan.partition, outcome.book.collection_view())
                )
            versions = entities.write_views(session, self._db, writes)
            events.mark_applied(session, [r.seq or 0 for r in outcome.applied])
            isolated = []
            for row, exc in outcome.poison:
                wf_id = event_workflow_id(self._prefix, row.source, row.external_id)
                events.isolate(session, row.seq or 0, wf_id)
                log.warning(
                    "pipeline.event_isolated",
                    extra={
                        "event_id": f"{row.source}/{row.external_id}",
                        "workflow_id": wf_id,
                        "batch_workflow_id": inp.workflow_id,
                        "reason": str(exc),
                    },
                )
                isolated.append(
                    IsolatedEvent(
                        workflow_id=wf_id,
                        seq=row.seq or 0,
                        source=row.source,
                        external_id=row.external_id,
                        type=row.type,
                        entity=row.partition,
                        priority_class=row.priority_class,
                        reason=str(exc),
                    )
                )
            RECALC_SECONDS.labels("book").observe(time.perf_counter() - started)
        log.info(
            "pipeline.batch_applied",
            extra={
                "workflow_id": inp.workflow_id,
                "partition": plan.partition,
                "events": len(outcome.applied),
            },
        )
        # Committed: later batches of this partition may start from the book in memory.
        self._books.put(plan.partition, version + 1, outcome.book)
        changes = [
            MetricChange(entity, metric, _plain(before), _plain(after))
            for (entity, metric), (before, after) in outcome.change.metrics.items()
        ]
        return RecalcResult(
            plan.partition, [r.seq or 0 for r in outcome.applied], isolated, sorted(versions), changes
        ), None

    def _apply(  # type: ignore[no-untyped-def]
        self, session, partition: str, chain: str, contract: str, version: int, rows: list[EventRecord]
    ) -> _Applied:
        rates = RateBook(session)
        parsed, poison = _parse(rows)
        # Taken out of the cache: a book being changed is never shared, and one a bug left half-changed
        # is simply not put back.
        book = self._books.take(partition, version)
        if book is None:
            book, _ = entities.load_book(session, partition, chain, contract)
        change = Change()
        if any(r.ever_applied for r in rows):
            # A replay of events whose effect is already stored: derive the book again from the log so
            # nothing is counted twice.
            batch = {r.seq for r in rows}
            history = [
                events.to_event(r)
                for r in events.processed_events_of(session, partition)
                if r.seq not in batch
            ]
            book = CollectionBook.recompute(chain, contract, history, rates)
            change.collection = True
            change.nfts |= set(book.tokens)
        ordered = sorted(parsed, key=lambda pair: _order(pair[1]))
        row_of = {id(event): row for row, event in ordered}
        # A poison event leaves no trace in the book: apply_batch isolates it and goes on.
        batch_change, failures = book.apply_batch([event for _, event in ordered], rates)
        change.merge(batch_change)
        failed = {id(event) for event, _ in failures}
        poison += [(row_of[id(event)], exc) for event, exc in failures]
        applied = [row for row, event in ordered if id(event) not in failed]
        return _Applied(book, change, applied, poison)

    def _apply_rates(self, session, partition: str, rows: list[EventRecord]) -> RecalcResult:  # type: ignore[no-untyped-def]
        for row in rows:
            base, quote = row.data["pair"].split("/")
            entities.add_rate(session, self._db, base, quote, row.occurred_at, row.data["rate"], row.seq or 0)
        events.mark_applied(session, [r.seq or 0 for r in rows])
        return RecalcResult(partition, [r.seq or 0 for r in rows], [], [], [])

    # -- cache invalidation -------------------------------------------------------------------------

    @activity.defn(name="invalidate_cache")
    def invalidate_cache(self, inp: InvalidateInput) -> InvalidateResult:
        """Drop stale cached answers, then mark the partition's applied events processed.

        Applied events left behind by a crash between recalculation and invalidation are picked up
        here as well: their entities are invalidated too, so nothing stays stale.
        """
        _count_action()
        with self._db.write() as session:
            applied = events.applied_in_partition(session, inp.partition)
            keys = set(inp.keys) | {r.nft_key for r in applied if r.nft_key is not None}
            if not inp.partition.startswith("rates:"):
                keys.add(inp.partition)
            versions = entities.view_versions(session, keys)
            self._cache.invalidate(versions)
            processed_at = events.mark_processed(session, [r.seq for r in applied])
        for item in applied:
            EVENTS_PROCESSED.labels(item.type, "processed").inc()
            PROCESSING_SECONDS.labels(item.priority_class).observe(
                max(0.0, (processed_at - item.received_at).total_seconds())
            )
        return InvalidateResult(invalidated=len(versions), processed=len(applied))


#: Entities named in a plan: it travels through workflow history, where thousands of keys cost more
#: to convert than the batch costs to apply; the count is always exact.
PLAN_SAMPLE = 50

_APPLICABLE = frozenset({EventStatus.RECEIVED.value, EventStatus.DISPATCHED.value})


def _count_action() -> None:
    TEMPORAL_ACTIONS.labels("local_activity" if activity.info().is_local else "activity").inc()


def event_workflow_id(prefix: str, source: str, external_id: str) -> str:
    return f"{prefix}event/{source}/{external_id}"


def _order(event: Event) -> tuple[tuple[int, int, str], str, str]:
    return (event.order_key, event.source, event.id)


def _parse(
    rows: Sequence[EventRecord],
) -> tuple[list[tuple[EventRecord, Event]], list[tuple[EventRecord, BaseException]]]:
    parsed: list[tuple[EventRecord, Event]] = []
    bad: list[tuple[EventRecord, BaseException]] = []
    for row in rows:
        try:
            event = events.to_event(row)
        except ValidationError as exc:
            bad.append((row, exc))
            continue
        if event.type is not EventType.PRICE_TICK:
            parsed.append((row, event))
    return parsed, bad


def _plain(value: object) -> str | float | int | bool | None:
    """Metric values travel as JSON scalars; Decimals and anything else as their string form."""
    if value is None or isinstance(value, str | float | int | bool):
        return value
    return str(value)
