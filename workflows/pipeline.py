"""Durable processing of events: a few long-lived shard workflows for routine events, one workflow per
significant event.

Routine events are conflated per collection (a *partition*: ``collection:<chain>:<contract>``, or
``rates:<chain>``). A partition hashes to one of ``VIRTUAL_SHARDS`` slots once and for all, and the slots
are spread over the shard workflows the dispatcher runs: at least ``PULSE_SHARDS``, and more as more
workers poll (``nftpulse.dispatcher``), so the shard count never caps the workers. The
dispatcher sends a shard at most one ``wake`` signal per wake interval, naming its partitions with new
events, and the shard workflow drains them in batches of local activities (the batch's pending events →
recalculation with invalidation → detection), each batch spanning many collections in one transaction.
Impact analysis (which entities and factors move, how severe) runs only in a significant event's
workflow, whose result and page show it: a shard's batch is only planned. So a thousand events
cost a handful of Temporal actions and database round trips, and the shards bound how many batches run at
once. A collection whose share of a batch was costly (a rarity rebuild in a 10,000-token collection)
rests for ten times as long, at most 1.5 s, while its shard keeps up, so its events come in fewer, larger
batches and it takes no more than about a tenth of the shard. Significant events (fraud findings, large
moves) and poison events isolated out of a batch get a workflow of their own, so each has its own page
and search attributes in the Web UI.
"""

# No ``from __future__ import annotations``: see activities/contracts/base.py.
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from nftpulse.activities.contracts.pipeline import (
        ANALYZE_IMPACT,
        INVALIDATE_CACHE,
        RECALCULATE,
        ImpactInput,
        ImpactPlan,
        InvalidateInput,
        IsolatedEvent,
        RecalcInput,
        RecalcResult,
    )
    from nftpulse.workflows.draining import DirtyQueue
    from nftpulse.workflows.notify import notify_changes

EVENT_TYPE = SearchAttributeKey.for_keyword("EventType")
ENTITY_KEY = SearchAttributeKey.for_keyword("EntityKey")
PRIORITY = SearchAttributeKey.for_keyword("Priority")
SEVERITY = SearchAttributeKey.for_keyword("Severity")
SEARCH_ATTRIBUTES = (EVENT_TYPE, ENTITY_KEY, PRIORITY, SEVERITY)

#: A shard with nothing to do for this long closes; the next signal-with-start opens a new run.
SHARD_IDLE = timedelta(minutes=10)
BATCHES_PER_RUN = 500
#: Bounds the partition list one batch's queries carry; the rest wait for the next batch.
PARTITIONS_PER_BATCH = 200
#: Patch id: recalculation marks events processed and moves the cache's floors in its own transaction,
#: so the invalidation step runs only when replaying a history from before that.
INVALIDATION_IN_RECALCULATION = "invalidation-in-recalculation"
#: Patch id: an event's workflow re-drives its event when it failed (a reset run of that workflow).
REPROCESS_FAILED = "reprocess-failed"
#: Patch id: a shard drains its oldest dirty partitions first (see ``workflows.draining``); histories
#: from before took the alphabetically first.
FAIR_DRAINING = "fair-draining"
#: A shard's workflow task stays open while its batches run as local activities, and the SDK core (not
#: Python code, so not the interpreter lock) renews it at 80 % of this timeout. It is also how long a
#: worker killed mid-batch holds its shard before another worker may take the task over, so it is sized
#: to the work: a batch (``PULSE_PARTITION_BATCH_MAX`` events) takes well under a second, and what must
#: fit in one task besides, a replay of the run's history on a worker that lost it from its cache,
#: takes about one on a busy worker. (At 60 s, a kill mid-batch stalled a shard a minute; at 10 s,
#: 9.8-10.5 s in tests/test_crash.py.)
SHARD_TASK_TIMEOUT = timedelta(seconds=5)
#: Patch id: a partition whose batch was costly rests before its next one (``ShardWorkflow._rest``).
PACE_COSTLY = "pace-costly"
#: How long a costly partition rests, in multiples of what its batch took, and at most.
REST_FACTOR = 10
MAX_REST = timedelta(seconds=1.5)
#: Partitions hash to this many slots, whatever the number of shard workflows: a shard workflow serves
#: the slots congruent to its number modulo the shard count, a power of two up to this (with 4 shards,
#: the spread is the same as the hash modulo 4 was).
VIRTUAL_SHARDS = 64


@dataclass
class ShardInput:
    shard: int
    #: Carried across continue-as-new: partitions woken while the last run was finishing.
    dirty: list[str] = field(default_factory=list)
    batch_limit: int = 2000


@dataclass
class Wake:
    """Sent by the dispatcher: these partitions of the shard have events waiting."""

    partitions: list[str]


@dataclass
class ShardResult:
    shard: int
    batches: int
    events: int


@dataclass
class EventInput:
    partition: str
    seq: int
    source: str
    external_id: str
    type: str


@dataclass
class EventResult:
    seq: int
    applied: bool
    entities: list[str]
    severity: str


def shard_workflow_id(prefix: str, shard: int) -> str:
    return f"{prefix}shard/{shard}"


def slot_of(partition: str) -> int:
    """A partition's virtual shard: stable across processes (``hash()`` is not) and shard counts."""
    digest = hashlib.blake2b(partition.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % VIRTUAL_SHARDS


def shard_of(partition: str, shards: int) -> int:
    """The shard workflow that serves a partition while ``shards`` of them run. When the count changes,
    a partition's events already dispatched are drained by the shard they were sent to and its new events
    by the new one: both apply whatever is pending in the partition, under its lock, each event once."""
    return slot_of(partition) % shards


def shard_count(minimum: int, workers: int, per_worker: int = 2) -> int:
    """Shard workflows to run: ``minimum`` (``PULSE_SHARDS``), or ``per_worker`` for each worker process
    polling, as a power of two up to ``VIRTUAL_SHARDS``, whichever is more."""
    wanted = workers * per_worker
    if wanted <= minimum:
        return minimum
    return max(minimum, min(VIRTUAL_SHARDS, 1 << (wanted - 1).bit_length()))


def event_search_attributes(
    event_type: str, entity: str, priority: str, severity: str
) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(EVENT_TYPE, event_type),
            SearchAttributePair(ENTITY_KEY, entity),
            SearchAttributePair(PRIORITY, priority),
            SearchAttributePair(SEVERITY, severity),
        ]
    )


@workflow.defn(name="Shard")
class ShardWorkflow:
    @workflow.init
    def __init__(self, inp: ShardInput) -> None:
        # State lives here, not in run(): a signal may arrive before run() starts, including right after
        # a continue-as-new.
        self._shard = inp.shard
        self._dirty = DirtyQueue(inp.dirty)
        self._batches = 0
        self._events = 0
        #: Partitions resting after a costly batch, and until when (workflow time).
        self._rest_until: dict[str, datetime] = {}

    @workflow.signal(name="wake")
    def wake(self, signal: Wake) -> None:
        self._dirty.mark(signal.partitions)

    @workflow.query(name="progress")
    def progress(self) -> ShardResult:
        return ShardResult(self._shard, self._batches, self._events)

    @workflow.run
    async def run(self, inp: ShardInput) -> ShardResult:
        while True:
            if not await self._work_waits():
                return ShardResult(self._shard, self._batches, self._events)
            while self._dirty.any_but(resting := self._resting()):
                # Taken out before the batch: a wake during it marks its partitions dirty again.
                take = self._dirty.take(
                    PARTITIONS_PER_BATCH, fair=workflow.patched(FAIR_DRAINING), resting=resting
                )
                plan = await self._drain_once(take, inp.batch_limit)
                if plan.has_more:
                    self._dirty.requeue(take)
            if self._batches >= BATCHES_PER_RUN or workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    ShardInput(
                        self._shard, self._dirty.listed(fair=workflow.patched(FAIR_DRAINING)), inp.batch_limit
                    ),
                    task_timeout=SHARD_TASK_TIMEOUT,
                )

    async def _work_waits(self) -> bool:
        """Wait until a dirty partition may be drained; False once nothing was dirty for ``SHARD_IDLE``."""
        while True:
            # Until the next rest ends too: a wake for a resting partition does not make it drainable, so
            # only the clock can.
            now = workflow.now()
            ends = [until for until in self._rest_until.values() if until > now]
            try:
                await workflow.wait_condition(
                    lambda: self._dirty.any_but(self._resting()),
                    timeout=min(ends) - now if ends else SHARD_IDLE,
                )
                return True
            except TimeoutError:
                if not ends:
                    return False

    def _resting(self) -> set[str]:
        """Partitions still resting after a costly batch (see ``_rest``). Read only: it is the wait's
        condition."""
        if not self._rest_until:
            return set()
        now = workflow.now()
        return {partition for partition, until in self._rest_until.items() if until > now}

    def _rest(self, costly: dict[str, float]) -> None:
        """A partition whose batch was costly waits ``REST_FACTOR`` times as long before its next one,
        so that no collection takes more than about a tenth of its shard's time: its events are then
        applied in fewer, larger batches (a big collection's rarity is brought up to date once a batch
        whatever the batch's size), and other collections are not held behind it."""
        if not costly or not workflow.patched(PACE_COSTLY):
            return
        now = workflow.now()
        self._rest_until = {p: until for p, until in self._rest_until.items() if until > now}
        for partition, seconds in costly.items():
            self._rest_until[partition] = now + min(MAX_REST, timedelta(seconds=seconds * REST_FACTOR))

    async def _drain_once(self, partitions: list[str], limit: int) -> ImpactPlan:
        # Not analysed: the shard reads only which events are pending (see ``ImpactInput.analyse``).
        plan = await ANALYZE_IMPACT.run(ImpactInput(partitions, [], limit))
        result: RecalcResult | None = None
        if plan.seqs:
            result = await RECALCULATE.run(RecalcInput(plan, workflow.info().workflow_id))
            self._events += result.applied
            if not plan.has_more:
                # A full batch means the shard is behind: batches are as large as they get, and a
                # rest would only hold the collection back.
                self._rest(result.costly)
            for poison in result.isolated:
                await self._isolate(poison)
        if not workflow.patched(INVALIDATION_IN_RECALCULATION):
            await INVALIDATE_CACHE.run(InvalidateInput(partitions, result.views_at if result else ""))
        if result is not None and result.changes:
            # After invalidation: a notification never points at a value a read could not yet show.
            await notify_changes(workflow.info().workflow_id)
        self._batches += 1
        return plan

    async def _isolate(self, poison: IsolatedEvent) -> None:
        try:
            child = await workflow.start_child_workflow(
                EventWorkflow.run,
                EventInput(poison.entity, poison.seq, poison.source, poison.external_id, poison.type),
                id=poison.workflow_id,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                search_attributes=event_search_attributes(
                    poison.type, poison.entity, poison.priority_class, "isolated"
                ),
            )
        except WorkflowAlreadyStartedError:
            workflow.logger.info("isolated event already has a workflow", extra={"seq": poison.seq})
            return
        # Abandoned on purpose: its failure is the event's own page in the Web UI, not this shard's.
        child.add_done_callback(lambda done: done.exception())


@workflow.defn(name="Event")
class EventWorkflow:
    """One event on its own page: fraud findings, threshold crossings, and poison events.

    Its steps are local activities too: each is recorded in the event's history (its page shows what ran,
    how long, and why it failed) without the round trips through the server's task queues that regular
    activities take, which made a few significant events per second cost the Temporal server more than
    all routine batches together.
    """

    @workflow.run
    async def run(self, inp: EventInput) -> EventResult:
        # A failed event's workflow runs again only when an operator resets it (the Web UI's Reset button,
        # ``temporal workflow reset``) to re-drive the event once its cause is fixed, so the run reopens a
        # failed event rather than skipping it as already handled. (A reset run cannot tell itself apart
        # by its run id: a replay of its history runs under the first run's id.)
        reprocess = workflow.patched(REPROCESS_FAILED)
        plan = await ANALYZE_IMPACT.run(
            ImpactInput([inp.partition], [inp.seq], 1, analyse=True, reprocess=reprocess)
        )
        if not plan.seqs:
            # Already processed (a duplicate start after a crash): nothing left to do.
            return EventResult(inp.seq, False, [], plan.severity)
        result = await RECALCULATE.run(RecalcInput(plan, workflow.info().workflow_id, single=True))
        if not workflow.patched(INVALIDATION_IN_RECALCULATION):
            await INVALIDATE_CACHE.run(InvalidateInput([inp.partition], result.views_at))
        if result.changes:
            await notify_changes(workflow.info().workflow_id)
        return EventResult(inp.seq, bool(result.applied), plan.entities, plan.severity)
