"""Durable processing of events: one long-lived workflow per partition, one workflow per significant event.

Routine events are conflated per collection: the dispatcher sends one ``wake`` signal per partition per
tick, and the partition workflow drains everything pending in batches of local activities (impact →
recalculation → invalidation), so a thousand events cost a handful of Temporal actions. Significant
events (fraud findings, large moves) and poison events isolated out of a batch get a workflow of their
own with regular activities, so each has its own page and search attributes in the Web UI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from activities.contracts import (
        ImpactInput,
        ImpactPlan,
        InvalidateInput,
        InvalidateResult,
        IsolatedEvent,
        PermanentProcessingError,
        RecalcInput,
        RecalcResult,
    )
    from workflows.notify import notify_changes

EVENT_TYPE = SearchAttributeKey.for_keyword("EventType")
ENTITY_KEY = SearchAttributeKey.for_keyword("EntityKey")
PRIORITY = SearchAttributeKey.for_keyword("Priority")
SEVERITY = SearchAttributeKey.for_keyword("Severity")
SEARCH_ATTRIBUTES = (EVENT_TYPE, ENTITY_KEY, PRIORITY, SEVERITY)

#: Transient failures (database busy or down, a worker lost) retry without end: an accepted event must
#: end processed or visibly failed, never dropped. Permanent ones fail at once.
PIPELINE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
    non_retryable_error_types=[PermanentProcessingError.__name__],
)
ANALYZE_TIMEOUT = timedelta(seconds=30)
RECALC_TIMEOUT = timedelta(seconds=120)
INVALIDATE_TIMEOUT = timedelta(seconds=30)
#: A partition with nothing to do for this long closes; the next signal-with-start opens a new run.
PARTITION_IDLE = timedelta(minutes=10)
BATCHES_PER_RUN = 500


@dataclass
class PartitionInput:
    partition: str
    #: Carried across continue-as-new: a wake that arrived while the last run was finishing.
    pending: bool = False
    batch_limit: int = 2000


@dataclass
class Wake:
    """Sent by the dispatcher: events of this partition up to ``up_to_seq`` are waiting."""

    up_to_seq: int


@dataclass
class PartitionResult:
    partition: str
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


def partition_workflow_id(prefix: str, partition: str) -> str:
    return f"{prefix}partition/{partition}"


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


@workflow.defn(name="Partition")
class PartitionWorkflow:
    @workflow.init
    def __init__(self, inp: PartitionInput) -> None:
        # State lives here, not in run(): a signal may arrive before run() starts, including right after
        # a continue-as-new.
        self._partition = inp.partition
        self._pending = inp.pending
        self._last_wake = 0
        self._batches = 0
        self._events = 0

    @workflow.signal(name="wake")
    def wake(self, signal: Wake) -> None:
        self._pending = True
        self._last_wake = max(self._last_wake, signal.up_to_seq)

    @workflow.query(name="progress")
    def progress(self) -> PartitionResult:
        return PartitionResult(self._partition, self._batches, self._events)

    @workflow.run
    async def run(self, inp: PartitionInput) -> PartitionResult:
        while True:
            try:
                await workflow.wait_condition(lambda: self._pending, timeout=PARTITION_IDLE)
            except TimeoutError:
                return PartitionResult(self._partition, self._batches, self._events)
            # Reset before draining: a wake during the drain means more may have arrived since.
            self._pending = False
            while True:
                plan = await self._drain_once(inp.batch_limit)
                if not plan.has_more:
                    break
            if self._batches >= BATCHES_PER_RUN or workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(PartitionInput(self._partition, self._pending, inp.batch_limit))

    async def _drain_once(self, limit: int) -> ImpactPlan:
        plan: ImpactPlan = await workflow.execute_local_activity(
            "analyze_impact",
            ImpactInput(self._partition, [], limit),
            result_type=ImpactPlan,
            start_to_close_timeout=ANALYZE_TIMEOUT,
            retry_policy=PIPELINE_RETRY,
        )
        keys: list[str] = []
        result: RecalcResult | None = None
        if plan.seqs:
            result = await workflow.execute_local_activity(
                "recalculate",
                RecalcInput(plan, workflow.info().workflow_id),
                result_type=RecalcResult,
                start_to_close_timeout=RECALC_TIMEOUT,
                retry_policy=PIPELINE_RETRY,
            )
            keys = result.keys
            self._events += len(result.applied)
            for poison in result.isolated:
                await self._isolate(poison)
        # Always run: it also finishes events a crash left applied but not yet invalidated.
        await workflow.execute_local_activity(
            "invalidate_cache",
            InvalidateInput(self._partition, keys),
            result_type=InvalidateResult,
            start_to_close_timeout=INVALIDATE_TIMEOUT,
            retry_policy=PIPELINE_RETRY,
        )
        if result is not None and result.changes and result.applied:
            # After invalidation: a notification never points at a value a read could not yet show.
            cause = f"{self._partition}@{min(result.applied)}-{max(result.applied)}"
            await notify_changes(result.changes, cause)
        self._batches += 1
        return plan

    async def _isolate(self, poison: IsolatedEvent) -> None:
        try:
            child = await workflow.start_child_workflow(
                EventWorkflow.run,
                EventInput(self._partition, poison.seq, poison.source, poison.external_id, poison.type),
                id=poison.workflow_id,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                search_attributes=event_search_attributes(
                    poison.type, poison.entity, poison.priority_class, "isolated"
                ),
            )
        except WorkflowAlreadyStartedError:
            workflow.logger.info("isolated event already has a workflow", extra={"seq": poison.seq})
            return
        # Abandoned on purpose: its failure is the event's own page in the Web UI, not this partition's.
        child.add_done_callback(lambda done: done.exception())


@workflow.defn(name="Event")
class EventWorkflow:
    """One event on its own page: fraud findings, threshold crossings, and poison events."""

    @workflow.run
    async def run(self, inp: EventInput) -> EventResult:
        plan: ImpactPlan = await workflow.execute_activity(
            "analyze_impact",
            ImpactInput(inp.partition, [inp.seq], 1),
            result_type=ImpactPlan,
            start_to_close_timeout=ANALYZE_TIMEOUT,
            retry_policy=PIPELINE_RETRY,
        )
        if not plan.seqs:
            # Already processed (a duplicate start after a crash): nothing left to do.
            return EventResult(inp.seq, False, [], plan.severity)
        result: RecalcResult = await workflow.execute_activity(
            "recalculate",
            RecalcInput(plan, workflow.info().workflow_id, single=True),
            result_type=RecalcResult,
            start_to_close_timeout=RECALC_TIMEOUT,
            retry_policy=PIPELINE_RETRY,
        )
        await workflow.execute_activity(
            "invalidate_cache",
            InvalidateInput(inp.partition, result.keys),
            result_type=InvalidateResult,
            start_to_close_timeout=INVALIDATE_TIMEOUT,
            retry_policy=PIPELINE_RETRY,
        )
        if result.changes:
            await notify_changes(result.changes, f"{inp.partition}@{inp.seq}", local=False)
        return EventResult(inp.seq, bool(result.applied), plan.entities, plan.severity)
