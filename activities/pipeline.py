"""The pipeline's activities: impact analysis, recalculation and cache invalidation for a batch of events.

They are methods of one class built once by the worker with its dependencies, and they are synchronous
(run on the worker's thread pool) because all their work is database and CPU work.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ParamSpec, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nftpulse.activities.contracts.base import PermanentProcessingError
from nftpulse.activities.contracts.pipeline import (
    ANALYZE_IMPACT,
    COSTLY_APPLY_S,
    INVALIDATE_CACHE,
    RECALCULATE,
    TICK_CLOCKS,
    ChangeSet,
    ClockInput,
    ClockResult,
    ImpactInput,
    ImpactPlan,
    InvalidateInput,
    InvalidateResult,
    IsolatedEvent,
    RecalcInput,
    RecalcResult,
)
from nftpulse.activities.notify.alerts import alert_changes, finding_statuses
from nftpulse.core.metrics import (
    EVENTS_FAILED,
    EVENTS_PROCESSED,
    PROCESSING_SECONDS,
    RECALC_SECONDS,
    TEMPORAL_ACTIONS,
)
from nftpulse.domain.book import (
    Change,
    CollectionBook,
    InconsistentEventError,
    UnpricedEventError,
    rate_keys,
)
from nftpulse.domain.book.retract import RetractionPlan, plan_batch, refold_change
from nftpulse.domain.changes import MetricChange
from nftpulse.domain.events import Event, EventType, retraction_target, utcnow
from nftpulse.domain.impact import SEVERITIES, analyze_each
from nftpulse.store import books, clocks, entities, events, retractions
from nftpulse.store import changes as changelog
from nftpulse.store.books import BookWrite
from nftpulse.store.cache import EntityCache
from nftpulse.store.db import Database, TransientStoreError
from nftpulse.store.entities import RateBook, ViewWrite
from nftpulse.store.models import EventRecord, EventStatus, Route

log = logging.getLogger("pulse.activities")

P = ParamSpec("P")
R = TypeVar("R")


def uninterruptible(fn: Callable[P, R]) -> Callable[P, R]:
    """Deliver a cancellation after the activity, not in the middle of it.

    Temporal cancels a synchronous activity by raising an exception inside its thread, wherever it is;
    one landing while psycopg waits for a reply leaves the connection mid-command, and the pool then hands
    a broken connection to the next transaction. Each step is one short transaction, so letting it finish
    costs little.
    """

    @functools.wraps(fn)
    def shielded(*args: P.args, **kwargs: P.kwargs) -> R:
        with activity.shield_thread_cancel_exception():
            return fn(*args, **kwargs)

    return shielded


#: Errors of the database, not of an event: retried (the activity's retry policy), never isolated.
STORE_ERRORS: tuple[type[BaseException], ...] = (TransientStoreError, SQLAlchemyError)


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
    #: Findings and wallet activity the applied events report (``activities.notify.alerts``).
    alerts: list[MetricChange]


class BookCache:
    """Collection books kept in memory between batches, valid only for the version they were saved as.

    Parsing a large book (megabytes of JSON, then its indexes) costs more than applying a batch; a
    version check against the database is one indexed read. Another worker's commit bumps the version
    and so invalidates the copy here.

    A recalculation *takes* the books it changes and puts them back after its commit (or releases them
    when it ends without saving them). Impact analysis meanwhile waits for them rather than loading the
    same book again from the database: with significant events' workflows analysing the collections a
    shard's batch was changing, those loads were a fifth of a busy worker's time.
    """

    #: How long analysis waits for a book a recalculation holds before it loads a copy of its own.
    READ_WAIT_S = 5.0

    def __init__(self, max_books: int = 4096) -> None:
        self._books: OrderedDict[str, tuple[int, CollectionBook]] = OrderedDict()
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        #: Books a recalculation holds: taken, not yet put back or released.
        self._held: set[str] = set()
        self._max = max_books

    def take(self, key: str, version: int | None) -> CollectionBook | None:
        """The book to change (None: load it), held until :meth:`put` or :meth:`release`.

        Called under the partition's lock, so another recalculation still holding the book has committed
        and is about to put it back: waited for, rather than loading the book again (a significant event's
        workflow and a shard's batch meeting on a big collection took seconds to reload it)."""
        with self._lock:
            self._wait_for(key)
            item = self._books.pop(key, None)
            self._held.add(key)
        return item[1] if item is not None and item[0] == version else None

    def peek(self, key: str, version: int | None) -> CollectionBook | None:
        """A book to read: at ``version`` or newer. A book a recalculation holds is waited for: impact
        analysis is an estimate, and the newer book it puts back only makes the estimate closer."""
        with self._lock:
            self._wait_for(key)
            item = self._books.get(key)
        return item[1] if item is not None and item[0] >= (version or 0) else None

    def _wait_for(self, key: str) -> None:
        """With the lock held: until no recalculation holds ``key``, at most :data:`READ_WAIT_S`."""
        deadline = time.monotonic() + self.READ_WAIT_S
        while key in self._held and (remaining := deadline - time.monotonic()) > 0:
            self._returned.wait(remaining)

    def put(self, key: str, version: int, book: CollectionBook) -> None:
        """A book its recalculation saved (committed)."""
        with self._lock:
            self._held.discard(key)
            self._store(key, version, book)
            self._returned.notify_all()

    def offer(self, key: str, version: int, book: CollectionBook) -> None:
        """A book analysis loaded, kept unless a recalculation holds or has put back a newer one."""
        with self._lock:
            if key not in self._held:
                self._store(key, version, book)

    def release(self, keys: Iterable[str]) -> None:
        """Books a recalculation took and did not save: gone (one may be half-changed)."""
        with self._lock:
            self._held.difference_update(keys)
            self._returned.notify_all()

    def _store(self, key: str, version: int, book: CollectionBook) -> None:
        current = self._books.get(key)
        if current is not None and current[0] > version:
            return  # a later batch's book got here first
        self._books[key] = (version, book)
        self._books.move_to_end(key)
        while len(self._books) > self._max:
            self._books.popitem(last=False)


class ParsedEvents:
    """Events read and parsed by a detailed impact analysis, kept for the recalculation that follows.

    A significant event's workflow analyses its event, then recalculates it: both steps need it as a row
    and as a validated ``Event``, so each is built once. What an event *is* never changes once logged,
    so a copy is safe to reuse; where it *stands* (status, route, whether its effect is stored) is read
    fresh, under the partition lock, in the recalculation's transaction. A shard's batch is not analysed,
    so its rows are loaded and parsed only by the recalculation.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        self._items: OrderedDict[int, tuple[EventRecord, Event | ValidationError]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_events

    def parse(
        self, rows: Sequence[EventRecord], *, consume: bool = False
    ) -> tuple[list[tuple[EventRecord, Event]], list[tuple[EventRecord, BaseException]]]:
        """Each row as an ``Event`` (price ticks left out) or the reason it is not one. ``consume``: the
        last use (recalculation), which takes the events out, so the cache only bridges the two steps and
        stays small: many long-lived objects make every full garbage collection slower."""
        parsed: list[tuple[EventRecord, Event]] = []
        bad: list[tuple[EventRecord, BaseException]] = []
        for row in rows:
            with self._lock:
                item = self._items.pop(row.seq or 0, None) if consume else self._items.get(row.seq or 0)
            if item is None:
                try:
                    outcome: Event | ValidationError = events.to_event(row)
                except ValidationError as exc:
                    outcome = exc
                if not consume:
                    self._remember(row, outcome)
            else:
                outcome = item[1]
            if isinstance(outcome, ValidationError):
                bad.append((row, outcome))
            elif outcome.type is not EventType.PRICE_TICK:
                parsed.append((row, outcome))
        return parsed, bad

    def current_rows(self, session: Session, seqs: Sequence[int]) -> list[EventRecord]:
        """The still applicable events among ``seqs``, in log order, with their state as of now."""
        with self._lock:
            cached = any(seq in self._items for seq in seqs)
        if not cached:
            # Nothing analysed ahead (a shard's batch): one read brings the rows and their state.
            return [r for r in events.load_by_seq(session, seqs) if r.status in _APPLICABLE]
        states = events.states_by_seq(session, seqs)
        wanted = [seq for seq, state in states.items() if state.status in _APPLICABLE]
        with self._lock:
            known = {seq: self._items[seq][0] for seq in wanted if seq in self._items}
        missing = [seq for seq in wanted if seq not in known]
        if missing:
            known |= {row.seq or 0: row for row in events.load_by_seq(session, missing)}
        rows = []
        for seq in sorted(wanted):
            row, state = known[seq], states[seq]
            row.status, row.route, row.ever_applied = state.status, state.route, state.ever_applied
            rows.append(row)
        return rows

    def _remember(self, row: EventRecord, outcome: Event | ValidationError) -> None:
        with self._lock:
            self._items[row.seq or 0] = (row, outcome)
            while len(self._items) > self._max:
                self._items.popitem(last=False)


class PipelineActivities:
    def __init__(
        self,
        db: Database,
        cache: EntityCache,
        workflow_id_prefix: str = "",
        wait_max_s: float = 0.0,
        book_cache: int = 4096,
    ) -> None:
        #: How long an event lacking what it needs (``UnpricedEventError``) waits before it fails.
        self._wait_max_s = wait_max_s
        self._books = BookCache(book_cache)
        self._parsed = ParsedEvents()
        self._db = db
        self._cache = cache
        self._prefix = workflow_id_prefix

    # -- impact analysis ----------------------------------------------------------------------------

    @ANALYZE_IMPACT.implement
    @uninterruptible
    def analyze_impact(self, inp: ImpactInput) -> ImpactPlan:
        """Which events are pending and, when ``inp.analyse`` asks, which entities and factors they move."""
        _count_action()
        if inp.reprocess and inp.seqs:
            with self._db.write() as session:
                for seq in inp.seqs:
                    if events.reopen_failed(session, seq):
                        log.info("pipeline.event_reopened", extra={"seq": seq})
        if not inp.analyse:
            return self._pending(inp)
        with self._db.read() as session:
            if inp.seqs:
                rows = [r for r in events.load_by_seq(session, inp.seqs) if r.status in _APPLICABLE]
            else:
                rows = events.pending_in_partitions(session, inp.partitions, inp.limit + 1)
            has_more = len(rows) > inp.limit
            rows = rows[: inp.limit]
            groups = _by_partition(rows)
            collections = [p for p in groups if p.startswith("collection:")]
            versions = books.book_versions(session, collections)
            by_partition = {p: self._book_for_reading(session, p, versions.get(p)) for p in collections}
        touched: set[str] = set()
        factors: set[str] = set()
        severity = SEVERITIES[0]
        for partition, book in by_partition.items():
            parsed, _ = self._parsed.parse(groups[partition])
            try:
                impact = analyze_each([event for _, event in parsed], book)
            except Exception as exc:  # the plan only informs; recalculation isolates
                log.warning("pipeline.impact_unknown", extra={"partition": partition, "reason": repr(exc)})
                continue
            touched |= impact.entity_keys(book)
            factors |= {f"nft.{f}" for f in impact.nft_factors}
            factors |= {f"collection.{f}" for f in impact.collection_factors}
            severity = max(severity, impact.severity, key=SEVERITIES.index)
        entities_sample = sorted(touched)[:PLAN_SAMPLE]
        return ImpactPlan(
            partitions=list(groups),
            seqs=[r.seq or 0 for r in rows],
            entity_count=len(touched),
            entities=entities_sample,
            factors=sorted(factors),
            severity=severity,
            has_more=has_more,
        )

    def _pending(self, inp: ImpactInput) -> ImpactPlan:
        """The plan of a batch no one reads the impact of: its events' numbers and partitions only."""
        with self._db.read() as session:
            if inp.seqs:
                rows = events.load_by_seq(session, inp.seqs)
                pending = [(r.seq or 0, r.partition) for r in rows if r.status in _APPLICABLE]
            else:
                pending = events.pending_seqs_in_partitions(session, inp.partitions, inp.limit + 1)
        has_more = len(pending) > inp.limit
        pending = pending[: inp.limit]
        partitions = list(dict.fromkeys(partition for _, partition in pending))
        return ImpactPlan(
            partitions=partitions,
            seqs=[seq for seq, _ in pending],
            entity_count=0,
            entities=[],
            factors=[],
            severity="",
            has_more=has_more,
        )

    def _book_for_reading(self, session: Session, partition: str, version: int | None) -> CollectionBook:
        _kind, chain, contract = split_partition(partition)
        book = self._books.peek(partition, version)
        if book is None:
            book, loaded = books.load_book(session, partition, chain, contract)
            if loaded:
                # Kept for the recalculation that follows, which would otherwise parse it again.
                self._books.offer(partition, loaded, book)
        return book

    # -- recalculation ------------------------------------------------------------------------------

    @RECALCULATE.implement
    @uninterruptible
    def recalculate(self, inp: RecalcInput) -> RecalcResult:
        """Apply the planned events to their collections' books in one transaction and rewrite exactly the
        read models that moved. Events already applied (a retry, a redelivered signal) are skipped."""
        _count_action()
        plan = inp.plan
        if not plan.seqs:
            return RecalcResult(plan.partitions)
        try:
            result, failure = self._recalculate(inp)
        except TransientStoreError as exc:
            raise ApplicationError(str(exc), type="TransientStoreError") from exc
        finally:
            # Saved books were put back; any other taken (a rollback, a poison event) is let go.
            self._books.release(plan.partitions)
        if failure is not None:
            row, error = failure
            if self._parks(row, error):
                # Its own workflow ends here; the event waits in the log, and what releases it (or the
                # dispatcher, once it has waited too long) sends it through again.
                assert isinstance(error, UnpricedEventError)
                with self._db.write() as session:
                    events.park(session, row.seq or 0, error.waiting_for, str(error))
                log.info("pipeline.event_waiting", extra={"seq": row.seq, "waiting_for": error.waiting_for})
                return RecalcResult(plan.partitions)
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
        empty = RecalcResult(plan.partitions)
        saved: list[BookWrite] = []
        applied: list[EventRecord] = []
        poison: list[tuple[EventRecord, BaseException]] = []
        writes: list[ViewWrite] = []
        costly: dict[str, float] = {}
        change = Change()
        alerts: list[MetricChange] = []
        with self._db.write() as session:
            self._db.lock_partitions(session, plan.partitions)
            rows = self._parsed.current_rows(session, plan.seqs)
            if not inp.single:
                rows = [r for r in rows if r.route == Route.PARTITION.value]
            if not rows:
                return empty, None
            started = time.perf_counter()
            groups = _by_partition(rows)
            versions = books.book_versions(session, list(groups))
            ever_retracted = retractions.partitions_with_retractions(session, list(groups))
            # Rates first: an event of this batch that needs one of them is valued by it, not parked.
            for partition, group in sorted(groups.items(), key=lambda item: not item[0].startswith("rates:")):
                kind, chain, contract = split_partition(partition)
                if kind == "rates":
                    self._apply_rates(session, group)
                    applied += group
                    continue
                version = versions.get(partition, 0)
                folding = time.perf_counter()
                try:
                    outcome = self._apply(session, partition, chain, contract, version, group, ever_retracted)
                    # NFT rows hold each token's own part; the collection's row the factors every NFT
                    # view derives from when read (``domain.book.derive``).
                    views = [
                        ViewWrite(outcome.book.nft_key(tid), "nft", partition, outcome.book.nft_part(tid))
                        for tid in sorted(outcome.change.nfts)
                        if tid in outcome.book.tokens
                    ]
                    if outcome.change.collection or not outcome.book.tokens:
                        views.append(
                            ViewWrite(partition, "collection", partition, outcome.book.collection_row())
                        )
                except STORE_ERRORS:
                    raise
                except Exception as exc:  # any other error is the domain's, see below
                    # The pure domain raised outside one event's fold (headline metrics, rarity, views):
                    # which event caused it is unknown, so each event of this partition goes to a
                    # workflow of its own, where the guilty one fails for good and the others apply.
                    # Other partitions of the batch, and the shard, go on.
                    if inp.single:
                        return empty, (group[0], exc)
                    log.warning(
                        "pipeline.partition_isolated",
                        extra={"partition": partition, "events": len(group), "reason": repr(exc)},
                    )
                    poison += [(row, exc) for row in group]
                    continue
                if outcome.poison and inp.single:
                    return empty, outcome.poison[0]
                took = time.perf_counter() - folding
                if took >= COSTLY_APPLY_S:
                    costly[partition] = round(took, 4)
                saved.append(BookWrite(partition, version + 1, outcome.book))
                writes += views
                change.merge(outcome.change)
                alerts += outcome.alerts
                applied += outcome.applied
                poison += outcome.poison
            books.save_books(session, saved)
            clocks.set_due(session, [(w.key, w.book) for w in saved])
            views_at = utcnow()
            # The cache's floors rise before the commit: a reader that loads an old row until then cannot
            # cache it afterwards, so once the events below read processed, every read shows their effect.
            # A rollback leaves the floors ahead of the rows, which only sends reads to the database until
            # the retry writes those versions.
            versions = entities.write_views(session, writes, views_at)
            self._cache.invalidate(versions)
            processed_at = events.mark_done(session, [r.seq or 0 for r in applied])
            seqs = sorted(r.seq or 0 for r in applied)
            changes = ChangeSet.of(
                [
                    *(
                        MetricChange(entity, metric, _plain(before), _plain(after))
                        for (entity, metric), (before, after) in change.metrics.items()
                    ),
                    *alerts,
                ]
            )
            if changes and seqs:
                cause = f"{inp.workflow_id}@{seqs[0]}-{seqs[-1]}"
                entities.add_change_batch(session, inp.workflow_id, cause, changes.columns())
                # The live change feed's log, in the same transaction: a change is in it exactly when
                # its batch committed.
                events_of = [(r.partition, r.token_id, r.source, r.external_id) for r in applied]
                causes = changelog.causes_of(events_of, changes)
                changelog.append(session, changes, versions, causes, views_at)
            # An event lacking what it needs (a rate) waits for it; the rest, and one that has waited too
            # long, go to workflows of their own (where it then fails, visibly).
            waits = [
                (row, exc)
                for row, exc in poison
                if isinstance(exc, UnpricedEventError) and self._parks(row, exc)
            ]
            for row, lacking in waits:
                events.park(session, row.seq or 0, lacking.waiting_for, str(lacking))
            parked = {id(row) for row, _ in waits}
            poison = [(row, exc) for row, exc in poison if id(row) not in parked]
            isolated = [self._isolate(session, row, exc, inp.workflow_id) for row, exc in poison]
            RECALC_SECONDS.labels("book").observe(time.perf_counter() - started)
        log.info(
            "pipeline.batch_applied",
            extra={"workflow_id": inp.workflow_id, "partitions": len(saved), "events": len(applied)},
        )
        # Committed: later batches of these partitions may start from the books in memory.
        for write in saved:
            books.history_saved(write.book)
            self._books.put(write.key, write.version, write.book)
        _observe_processed(applied, processed_at)
        return RecalcResult(
            partitions=plan.partitions,
            applied=len(seqs),
            first_seq=seqs[0] if seqs else 0,
            last_seq=seqs[-1] if seqs else 0,
            isolated=isolated,
            views_at=views_at.isoformat() if writes else "",
            changes=len(changes) if seqs else 0,
            costly=costly,
        ), None

    def _parks(self, row: EventRecord, exc: BaseException) -> bool:
        """Whether the event waits for what it lacks rather than fail (see ``store.events.may_wait``)."""
        return isinstance(exc, UnpricedEventError) and events.may_wait(row, self._wait_max_s)

    def _isolate(
        self, session: Session, row: EventRecord, exc: BaseException, batch_workflow_id: str
    ) -> IsolatedEvent:
        wf_id = event_workflow_id(self._prefix, row.source, row.external_id)
        events.isolate(session, row.seq or 0, wf_id)
        log.warning(
            "pipeline.event_isolated",
            extra={
                "event_id": f"{row.source}/{row.external_id}",
                "workflow_id": wf_id,
                "batch_workflow_id": batch_workflow_id,
                "reason": str(exc),
            },
        )
        return IsolatedEvent(
            workflow_id=wf_id,
            seq=row.seq or 0,
            source=row.source,
            external_id=row.external_id,
            type=row.type,
            entity=row.partition,
            priority_class=row.priority_class,
            reason=str(exc),
        )

    def _apply(
        self,
        session: Session,
        partition: str,
        chain: str,
        contract: str,
        version: int,
        rows: list[EventRecord],
        ever_retracted: set[str],
    ) -> _Applied:
        rates = RateBook(session)
        parsed, poison = self._parsed.parse(rows, consume=True)
        # Taken out of the cache: a book being changed is never shared, and one a bug left half-changed
        # is simply not put back.
        book = self._books.take(partition, version)
        if book is None:
            book, _ = books.load_book(session, partition, chain, contract)
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
        step = self._retractions(session, partition, ordered, ever_retracted)
        if step.refold:
            # A retraction met an event whose effect is stored: the book is derived again from the log
            # without it (exact), and what that moved is reported as any change is.
            batch = {r.seq for r in rows}
            history = [
                events.to_event(r)
                for r in events.processed_events_of(session, partition)
                if r.seq not in batch
            ]
            refolded = CollectionBook.recompute(chain, contract, history, rates)
            change.merge(refold_change(book, refolded))
            self._drop_gone_views(session, book, refolded)
            book = refolded
        statuses = finding_statuses(book, step.apply)
        # A poison event leaves no trace in the book: apply_batch isolates it and goes on.
        batch_change, failures = book.apply_batch(step.apply, rates)
        change.merge(batch_change)
        failed = {id(event) for event, _ in failures}
        poison += [(row_of[id(event)], exc) for event, exc in failures]
        skipped = {id(event) for event in step.skipped}
        applied = [row for row, event in ordered if id(event) not in failed and id(event) not in skipped]
        alerts = alert_changes(book, [event for event in step.apply if id(event) not in failed], statuses)
        return _Applied(book, change, applied, poison, alerts)

    def _retractions(
        self,
        session: Session,
        partition: str,
        pairs: list[tuple[EventRecord, Event]],
        ever_retracted: set[str],
    ) -> RetractionPlan:
        """How the batch meets retractions (``domain.book.retract``); records the batch's retractions and
        marks what they take back. ``ever_retracted``: the batch's partitions a retraction has named an
        event of; for the others (nearly all) nothing is read."""
        batch = [event for _, event in pairs]
        named = [(t, row.seq or 0) for row, e in pairs if (t := retraction_target(e)) is not None]
        refs = {(e.source, e.id) for e in batch if e.type is not EventType.RETRACTION}
        retracted = (
            retractions.retracted_among(session, partition, refs | {t for t, _ in named})
            if partition in ever_retracted or named
            else set()
        )
        applied = retractions.applied_among(session, partition, {t for t, _ in named}) if named else set()
        step = plan_batch(batch, retracted, applied)
        now = utcnow()
        if named:
            first: dict[tuple[str, str], int] = {}
            for target, seq in named:
                first.setdefault(target, seq)
            retractions.record(session, partition, sorted(first.items()), now)
        gone = [*step.undone, *((e.source, e.id) for e in step.skipped)]
        if gone:
            retractions.mark_retracted(session, partition, gone, now)
            log.info("pipeline.retracted", extra={"partition": partition, "events": len(gone)})
        if step.undone:
            # What only the undone events made Pulse tell someone: cancelled if not delivered yet, else
            # corrected (detection's next run delivers the correction).
            undone = retractions.undone_rows(session, partition, step.undone)
            caused = retractions.caused_only_by(session, partition, undone)
            cancelled, corrected = retractions.withdraw(session, caused, now)
            if cancelled or corrected:
                log.info(
                    "pipeline.notifications_withdrawn",
                    extra={"partition": partition, "cancelled": cancelled, "corrected": corrected},
                )
        return step

    def _drop_gone_views(self, session: Session, before: CollectionBook, after: CollectionBook) -> None:
        """Tokens only retracted events made (a retracted mint) have no view any more."""
        gone = [before.nft_key(t) for t in before.tokens if t not in after.tokens]
        if gone:
            self._cache.invalidate(entities.drop_views(session, gone))

    def _apply_rates(self, session: Session, rows: list[EventRecord]) -> None:
        for row in rows:
            base, quote = row.data["pair"].split("/")
            entities.add_rate(session, base, quote, row.occurred_at, row.data["rate"], row.seq or 0)
            # The events waiting for this pair go through again, in the same transaction as the rate.
            released = events.release_waiting(session, rate_keys(base, quote))
            if released:
                log.info("pipeline.waiting_released", extra={"pair": row.data["pair"], "events": released})

    # -- time without events ------------------------------------------------------------------------

    @TICK_CLOCKS.implement
    @uninterruptible
    def tick_clocks(self, inp: ClockInput) -> ClockResult:
        """Clock events for the collections whose next moment has come (``store.clocks``)."""
        _count_action()
        ticked, following, more = clocks.tick(self._db, datetime.fromisoformat(inp.now), inp.limit)
        return ClockResult(ticked, "" if following is None else following.isoformat(), more)

    # -- cache invalidation -------------------------------------------------------------------------

    @INVALIDATE_CACHE.implement
    @uninterruptible
    def invalidate_cache(self, inp: InvalidateInput) -> InvalidateResult:
        """Drop stale cached answers, then mark the partition's applied events processed.

        Recalculation now does both in its own transaction; this step remains for workflows whose
        history predates that (see ``workflows.pipeline.INVALIDATION_IN_RECALCULATION``) and the events
        an older worker left applied.
        """
        _count_action()
        collections = [p for p in inp.partitions if p.startswith("collection:")]
        with self._db.write() as session:
            applied = events.applied_in_partitions(session, inp.partitions)
            keys = {r.nft_key for r in applied if r.nft_key is not None} | set(collections)
            versions = entities.view_versions(session, keys)
            # The read models the batch rewrote, found by the time it stamped on them. Without it (a crash
            # lost the batch's result), every model rewritten since the oldest applied event arrived: a
            # superset, and invalidating more than needed is harmless.
            since = (
                datetime.fromisoformat(inp.views_at)
                if inp.views_at
                else min((r.received_at for r in applied), default=None)
            )
            if since is not None and collections:
                versions |= entities.views_updated_since(session, collections, since)
            self._cache.invalidate(versions)
            processed_at = events.mark_processed(session, [r.seq for r in applied])
        _observe_processed(applied, processed_at)
        return InvalidateResult(invalidated=len(versions), processed=len(applied))


def _observe_processed(rows: Sequence[EventRecord | events.AppliedEvent], processed_at: datetime) -> None:
    for row in rows:
        EVENTS_PROCESSED.labels(row.type, "processed").inc()
        PROCESSING_SECONDS.labels(row.priority_class).observe(
            max(0.0, (processed_at - row.received_at).total_seconds())
        )


#: Entities named in a plan: it travels through workflow history, where thousands of keys cost more
#: to convert than the batch costs to apply; the count is always exact.
PLAN_SAMPLE = 50

_APPLICABLE = frozenset({EventStatus.RECEIVED.value, EventStatus.DISPATCHED.value})


def _count_action() -> None:
    TEMPORAL_ACTIONS.labels("local_activity" if activity.info().is_local else "activity").inc()


def event_workflow_id(prefix: str, source: str, external_id: str) -> str:
    return f"{prefix}event/{source}/{external_id}"


def _by_partition(rows: Sequence[EventRecord]) -> dict[str, list[EventRecord]]:
    groups: dict[str, list[EventRecord]] = {}
    for row in rows:
        groups.setdefault(row.partition, []).append(row)
    return groups


def _order(event: Event) -> tuple[tuple[int, int, str], str, str]:
    return (event.order_key, event.source, event.id)


def _plain(value: object) -> str | float | int | bool | None:
    """Metric values travel as JSON scalars; Decimals and anything else as their string form."""
    if value is None or isinstance(value, str | float | int | bool):
        return value
    return str(value)
