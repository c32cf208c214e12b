"""The dispatcher: moves events from the log to Temporal, in order, at least once.

Each tick reads the oldest received events, routes them by the priority they were classified at when
accepted (aged by how long they have waited since), records each one's route in the log (the outbox's
commit point), then hands them to Temporal: one ``wake`` signal-with-start per
shard for routine events, one workflow per significant event. A crash between the two steps is
repaired by the sweep, which re-sends the hand-off for events dispatched long ago and still unfinished,
and at start-up for every event still dispatched (a killed predecessor's deferred wakes);
processing is idempotent, so a second hand-off never counts an event twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from nftpulse.activities.pipeline import event_workflow_id
from nftpulse.core import tracing
from nftpulse.core.metrics import (
    BACKLOG,
    DISPATCH_BATCH,
    EVENTS_DISPATCHED,
    TASK_QUEUE_BACKLOG,
    TEMPORAL_ACTIONS,
)
from nftpulse.core.settings import Settings
from nftpulse.domain.classify import Thresholds, aged, is_significant, priority_class
from nftpulse.domain.events import nft_key
from nftpulse.store import events
from nftpulse.store.db import Database
from nftpulse.store.events import DispatchMark
from nftpulse.store.models import EventRecord, Route
from nftpulse.workflows.clock import ClockRun, ClockWorkflow, clock_workflow_id
from nftpulse.workflows.pipeline import (
    SHARD_TASK_TIMEOUT,
    EventInput,
    EventWorkflow,
    ShardInput,
    ShardWorkflow,
    Wake,
    event_search_attributes,
    shard_count,
    shard_of,
    shard_workflow_id,
)

log = logging.getLogger("pulse.dispatcher")

SWEEP_EVERY_S = 15.0
STALE_AFTER = timedelta(seconds=60)
GAUGES_EVERY_S = 2.0
MAX_HANDOFF_CONCURRENCY = 64
#: The shortest time between two wakes of one shard, even for critical events.
URGENT_WAKE_INTERVAL_S = 0.2
#: Backlog that doubles the wake interval (see ``Dispatcher.wake_interval``).
BACKLOG_PER_STEP = 10_000
_QUEUE_KINDS = {
    "workflow": TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    "activity": TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
}


@dataclass
class Routed:
    marks: list[DispatchMark] = field(default_factory=list)
    #: Per shard, the partitions with new routine events.
    shards: dict[int, set[str]] = field(default_factory=dict)
    own: list[tuple[EventRecord, str, str]] = field(default_factory=list)
    #: Per shard, the traceparents of the requests whose events one wake carries (tracing only).
    traces: dict[int, list[str]] = field(default_factory=dict)
    #: Shards with a critical or high-priority event: woken at once, never deferred.
    urgent: set[int] = field(default_factory=set)


@dataclass
class Deferred:
    """What the next wake of a shard will carry."""

    partitions: set[str] = field(default_factory=set)
    traces: list[str] = field(default_factory=list)
    #: Carries a critical or high-priority event: due after ``URGENT_WAKE_INTERVAL_S``.
    urgent: bool = False


class Dispatcher:
    def __init__(self, settings: Settings, db: Database, client: Client) -> None:
        self._settings = settings
        self._db = db
        self._client = client
        self._last_sweep = 0.0
        #: Until the first sweep has run: a predecessor killed with wakes still deferred in its memory
        #: left their events ``dispatched`` with no signal sent, so the first sweep re-sends everything
        #: dispatched before this dispatcher started, not only what is older than ``STALE_AFTER``.
        self._started_at: datetime | None = datetime.now(UTC)
        self._last_gauges = 0.0
        #: Waiting events past ``PULSE_WAIT_MAX_SECONDS`` are looked for this often: a fraction of the wait
        #: (they fail at most a quarter late), at most every sweep.
        self._last_expiry = 0.0
        self._expiry_every_s = min(SWEEP_EVERY_S, max(0.5, settings.wait_max_seconds / 4))
        self._woken_at: dict[int, float] = {}
        self._backlog = 0
        self._deferred: dict[int, Deferred] = {}
        self._handoff = asyncio.Semaphore(8)
        self._thresholds = Thresholds(settings.significant_priority, settings.large_move)
        self.dispatched = 0
        #: Shard workflows routine events are spread over (``workflows.pipeline.shard_count``): at least
        #: ``PULSE_SHARDS``, two per worker process polling the shards' queue, so that adding workers
        #: adds batches that run at once. Changing it is safe for events already dispatched (see
        #: ``shard_of``).
        self.shards = settings.shards

    async def run(self, stop: asyncio.Event) -> None:
        log.info("dispatcher.started", extra={"task_queue": self._settings.task_queue})
        while not stop.is_set():
            started = time.monotonic()
            try:
                moved = await self.tick()
            except Exception:
                # Temporal or the database may be down: nothing is lost (events stay received), so wait
                # and try again rather than exit.
                log.exception("dispatcher.tick_failed")
                moved = 0
            pause = pause_after_tick(
                moved,
                self._settings.dispatch_batch_max,
                time.monotonic() - started,
                self._settings.dispatch_interval_s,
            )
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=pause)

    async def tick(self) -> int:
        now = time.monotonic()
        if self._started_at is not None or now - self._last_sweep > SWEEP_EVERY_S:
            self._last_sweep = now
            await self.sweep()
        if now - self._last_expiry > self._expiry_every_s:
            self._last_expiry = now
            expired = await asyncio.to_thread(
                events.expire_waiting, self._db, self._settings.wait_max_seconds
            )
            if expired:
                log.info("dispatcher.waits_expired", extra={"events": expired})
        if now - self._last_gauges > GAUGES_EVERY_S:
            self._last_gauges = now
            await self.measure_backlog()
        rows = await asyncio.to_thread(events.next_received, self._db, self._settings.dispatch_batch_max)
        if not rows:
            await self.flush_deferred()
            return 0
        DISPATCH_BATCH.observe(len(rows))
        routed = self.route(rows)
        await asyncio.to_thread(events.mark_dispatched, self._db, routed.marks)
        await self.hand_off(routed)
        self.dispatched += len(rows)
        return len(rows)

    def route(self, rows: list[EventRecord]) -> Routed:
        """Each event's route by what it is: the priority classified when it was accepted
        (``api.events``) decides between a workflow of its own and its shard. The wait since only orders
        work within the path: an aged routine event wakes its shard sooner, it never moves onto a
        per-event workflow (60-80 times dearer per event, exactly when Pulse is behind). The log keeps
        the classified priority, so an event dispatched again is not aged twice. The event is neither
        parsed nor classified again here."""
        routed = Routed()
        wall = datetime.now(UTC)
        th = self._thresholds
        for row in rows:
            cls = priority_class(row.priority)
            seq = row.seq or 0
            if is_significant(row.type, row.priority, th):
                wf_id = event_workflow_id(self._settings.workflow_id_prefix, row.source, row.external_id)
                routed.own.append((row, cls, str(row.data.get("severity") or cls)))
                routed.marks.append(DispatchMark(seq, Route.OWN, wf_id, row.priority, cls))
            else:
                shard = shard_of(row.partition, self.shards)
                wf_id = shard_workflow_id(self._settings.workflow_id_prefix, shard)
                routed.shards.setdefault(shard, set()).add(row.partition)
                if row.traceparent:
                    routed.traces.setdefault(shard, []).append(row.traceparent)
                waited = aged(row.priority, (wall - row.received_at).total_seconds(), th)
                if priority_class(waited) in ("critical", "high"):
                    routed.urgent.add(shard)
                routed.marks.append(DispatchMark(seq, Route.PARTITION, wf_id, row.priority, cls))
        return routed

    async def hand_off(self, routed: Routed) -> None:
        now = time.monotonic()
        for shard, partitions in routed.shards.items():
            deferred = self._deferred.setdefault(shard, Deferred())
            deferred.partitions |= partitions
            deferred.traces += routed.traces.get(shard, [])
            deferred.urgent = deferred.urgent or shard in routed.urgent
        jobs = self._due_wakes(now)
        jobs += [self._start_event(row, cls, severity) for row, cls, severity in routed.own]
        self._handoff = asyncio.Semaphore(self.handoff_concurrency())
        await asyncio.gather(*jobs)
        EVENTS_DISPATCHED.labels(Route.PARTITION.value).inc(
            sum(1 for m in routed.marks if m.route is Route.PARTITION)
        )
        EVENTS_DISPATCHED.labels(Route.OWN.value).inc(len(routed.own))

    def _due_wakes(self, now: float) -> list[Any]:
        """Wakes for shards not woken within the wake interval. Conflating wakes makes batches larger
        under load: a signal is a workflow task, and a few per second per shard cost more than the
        events themselves. Events wait at most the interval; critical and high ones at most
        ``URGENT_WAKE_INTERVAL_S``: at once unless their shard was just woken, when a signal per tick would
        cost the Temporal server more than the batch it starts."""
        interval = self.wake_interval()
        due = [
            shard
            for shard, deferred in self._deferred.items()
            if now - self._woken_at.get(shard, -1e9)
            >= (min(interval, URGENT_WAKE_INTERVAL_S) if deferred.urgent else interval)
        ]
        jobs = []
        for shard in due:
            deferred = self._deferred.pop(shard)
            self._woken_at[shard] = now
            jobs.append(self._wake(shard, sorted(deferred.partitions), deferred.traces))
        return jobs

    def handoff_concurrency(self) -> int:
        """Hand-offs in flight at once: few when idle, more as the backlog grows (up to a bound that keeps
        the Temporal frontend's queue short)."""
        return min(MAX_HANDOFF_CONCURRENCY, 8 + self._backlog // 1_000)

    def wake_interval(self) -> float:
        """Adapts to the backlog: idle, wakes come at the configured pace for low latency; behind, they
        come up to four times rarer, so each batch carries more events and Temporal does less per event."""
        base = self._settings.partition_wake_interval_s
        return base * min(4.0, 1.0 + self._backlog / BACKLOG_PER_STEP)

    async def flush_deferred(self) -> None:
        jobs = self._due_wakes(time.monotonic())
        if jobs:
            await asyncio.gather(*jobs)

    async def _wake(self, shard: int, partitions: list[str], traceparents: list[str] | None = None) -> None:
        TEMPORAL_ACTIONS.labels("signal_with_start").inc()
        async with self._handoff:
            with tracing.linked_span(
                "dispatch shard", traceparents or [], shard=str(shard), partitions=",".join(partitions)
            ):
                await self._signal_shard(shard, partitions)

    async def _signal_shard(self, shard: int, partitions: list[str]) -> None:
        await self._client.start_workflow(
            ShardWorkflow.run,
            ShardInput(shard, batch_limit=self._settings.partition_batch_max),
            id=shard_workflow_id(self._settings.workflow_id_prefix, shard),
            task_queue=self._settings.task_queue,
            start_signal="wake",
            start_signal_args=[Wake(partitions)],
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            task_timeout=SHARD_TASK_TIMEOUT,
        )

    async def _start_event(self, row: EventRecord, priority_class: str, severity: str) -> None:
        TEMPORAL_ACTIONS.labels("workflow_start").inc()
        async with self._handoff:
            try:
                with tracing.continue_trace("dispatch event", row.traceparent, event=row.external_id):
                    await self._start_event_workflow(row, priority_class, severity)
            except RPCError:
                log.exception("dispatcher.start_failed", extra={"event_seq": row.seq})
                raise

    async def _start_event_workflow(self, row: EventRecord, priority_class: str, severity: str) -> None:
        await self._client.start_workflow(
            EventWorkflow.run,
            EventInput(row.partition, row.seq or 0, row.source, row.external_id, row.type),
            id=event_workflow_id(self._settings.workflow_id_prefix, row.source, row.external_id),
            task_queue=self._settings.event_task_queue,
            search_attributes=event_search_attributes(row.type, _entity(row), priority_class, severity),
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )

    async def measure_backlog(self) -> None:
        """The two backlogs an operator (and an autoscaler) watches: the log's and Temporal's."""
        counts = await asyncio.to_thread(events.backlog_by_class, self._db)
        self._backlog = sum(counts.values())
        for cls in ("critical", "high", "normal", "low"):
            BACKLOG.labels(cls).set(counts.get(cls, 0))
        settings = self._settings
        queues = (settings.task_queue, settings.event_task_queue)
        for queue in queues:
            for kind, queue_type in _QUEUE_KINDS.items():
                try:
                    described = await self._client.workflow_service.describe_task_queue(
                        DescribeTaskQueueRequest(
                            namespace=self._client.namespace,
                            task_queue=TaskQueue(name=queue),
                            task_queue_type=queue_type,
                            include_task_queue_status=True,
                        )
                    )
                except RPCError:
                    log.warning("dispatcher.describe_task_queue_failed", exc_info=True)
                    continue
                TASK_QUEUE_BACKLOG.labels(queue, kind).set(described.task_queue_status.backlog_count_hint)
                if queue == settings.task_queue and kind == "workflow":
                    self.scale_to({poller.identity for poller in described.pollers})

    def scale_to(self, workers: set[str]) -> None:
        """Spread routine events over as many shard workflows as the worker processes polling (by their
        identities, ``pid@host``) can run at once."""
        shards = shard_count(self._settings.shards, len(workers), self._settings.shards_per_worker)
        if shards != self.shards:
            log.info("dispatcher.shards", extra={"shards": shards, "workers": len(workers)})
            self.shards = shards

    async def sweep(self) -> None:
        """Hand off again what was dispatched long ago and is still unfinished (lost signal or start), and
        at start-up whatever a predecessor dispatched: the database, not a dispatcher's memory, is where a
        deferred wake is kept (its events are ``dispatched``), and a second hand-off is harmless."""
        await self.ensure_clock()
        cutoff = self._started_at or datetime.now(UTC) - STALE_AFTER
        stale = await asyncio.to_thread(events.stale_dispatched, self._db, cutoff)
        if not stale.partitions and not stale.own:
            self._started_at = None
            return
        log.info("dispatcher.sweep", extra={"partitions": len(stale.partitions), "events": len(stale.own)})
        shards: dict[int, list[str]] = {}
        for partition in stale.partitions:
            shards.setdefault(shard_of(partition, self.shards), []).append(partition)
        await asyncio.gather(
            *[self._wake(shard, partitions) for shard, partitions in shards.items()],
            *[self._start_event(row, row.priority_class, "unknown") for row in stale.own],
        )
        self._started_at = None

    async def ensure_clock(self) -> None:
        """Start Pulse's clock (``workflows.clock``) unless it runs: checked at every sweep, so a clock
        that failed or was terminated is back within ``SWEEP_EVERY_S``."""
        try:
            await self._client.start_workflow(
                ClockWorkflow.run,
                ClockRun(),
                id=clock_workflow_id(self._settings.workflow_id_prefix),
                task_queue=self._settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            return
        except RPCError:
            # The clock is retried at the next sweep; the events' hand-off must not wait for it.
            log.warning("dispatcher.clock_start_failed", exc_info=True)
            return
        TEMPORAL_ACTIONS.labels("workflow_start").inc()


def pause_after_tick(moved: int, batch_max: int, took_s: float, interval_s: float) -> float:
    """Seconds to wait before the next tick. Only a full tick (a backlog) goes on at once; any other tick
    starts at most once per interval, so that under a steady stream each tick carries an interval's worth
    of events: a tick has a fixed cost (a read, a transaction, the hand-offs), and ticking as fast as
    possible moved a few dozen events per tick at 1,000 events/s, which doubled the dispatcher's CPU per
    event (bench/pipeline.py)."""
    if moved >= batch_max:
        return 0.0
    return max(0.0, interval_s - took_s)


def _entity(row: EventRecord) -> str:
    if row.token_id is not None:
        return nft_key(row.chain, row.contract, row.token_id)
    return row.partition
