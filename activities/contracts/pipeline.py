"""The pipeline's activities (impact analysis, recalculation, cache invalidation) as contracts, with their
inputs and results: plain dataclasses, safe inside the workflow sandbox.

No ``from __future__ import annotations``: see ``base.py``.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

from nftpulse.activities.contracts.base import ActivityContract, PermanentProcessingError
from nftpulse.domain.changes import MetricChange


@dataclass
class ImpactInput:
    #: Collection (``collection:<chain>:<contract>``) and rate (``rates:<chain>``) partitions.
    partitions: list[str]
    #: The events to analyse; empty means "whatever is pending in those partitions".
    seqs: list[int] = field(default_factory=list)
    limit: int = 2000
    #: Name the entities and factors the events move and rate their severity. Only a significant event's
    #: workflow reads them (its result and its page in the Web UI); a shard needs only which events are
    #: pending, so it leaves this off and its batch is not analysed at all.
    analyse: bool = False
    #: An event's own workflow re-drives it (a reset of that workflow: the Web UI's Reset,
    #: ``temporal workflow reset``): a ``failed`` event among ``seqs`` is made applicable again first.
    reprocess: bool = False


@dataclass
class ImpactPlan:
    #: The partitions with events in this plan.
    partitions: list[str]
    seqs: list[int]
    #: The rest is filled only when ``ImpactInput.analyse`` asked for it (0, empty lists, empty severity).
    entity_count: int
    #: A sample of the touched entity keys (see ``activities.pipeline.PLAN_SAMPLE``).
    entities: list[str]
    factors: list[str]
    severity: str
    #: More events were pending than ``limit``: the same partitions need another batch.
    has_more: bool = False


@dataclass
class RecalcInput:
    plan: ImpactPlan
    workflow_id: str
    #: True when the batch is a single event in its own workflow: a permanent failure fails the workflow.
    single: bool = False


@dataclass
class ChangeSet:
    """The metric changes of one batch, as columns: how detection receives them and how the pipeline saves
    them for detection (``store.models.ChangeBatchRecord``). Columns of scalars encode and decode in one
    pass, where a list of dataclasses costs a type-hint lookup per element.
    """

    entities: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    #: ``Scalar`` values; typed ``Any`` so that decoding does not try each member of the union per value.
    before: list[Any] = field(default_factory=list)
    after: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, changes: Iterable[MetricChange]) -> "ChangeSet":
        out = cls()
        for change in changes:
            out.entities.append(change.entity_key)
            out.metrics.append(change.metric)
            out.before.append(change.before)
            out.after.append(change.after)
        return out

    def __iter__(self) -> Iterator[MetricChange]:
        for row in zip(self.entities, self.metrics, self.before, self.after, strict=True):
            yield MetricChange(*row)

    def __len__(self) -> int:
        return len(self.entities)

    def columns(self) -> dict[str, list[Any]]:
        return {
            "entities": self.entities,
            "metrics": self.metrics,
            "before": self.before,
            "after": self.after,
        }


@dataclass
class IsolatedEvent:
    workflow_id: str
    seq: int
    source: str
    external_id: str
    type: str
    entity: str
    priority_class: str
    reason: str


#: A partition whose events took this long to apply in one batch (a rarity rebuild in a 10,000-token
#: collection takes about 30 ms, a small collection's batch about 1) is reported as costly.
COSTLY_APPLY_S = 0.02


@dataclass
class RecalcResult:
    """What one batch did, kept small: it is recorded in workflow history once per batch."""

    partitions: list[str]
    applied: int = 0
    first_seq: int = 0
    last_seq: int = 0
    isolated: list[IsolatedEvent] = field(default_factory=list)
    #: The time stamped on every read model the batch rewrote (ISO 8601; empty: none), by which
    #: invalidation finds them.
    views_at: str = ""
    #: Metric changes saved for detection (``store.models.ChangeBatchRecord``).
    changes: int = 0
    #: Partitions whose share of the batch took at least ``COSTLY_APPLY_S``, with the seconds it took:
    #: a shard lets them rest in proportion before their next batch (``workflows.pipeline``).
    costly: dict[str, float] = field(default_factory=dict)


@dataclass
class InvalidateInput:
    partitions: list[str]
    #: ``RecalcResult.views_at`` of the batch just applied; empty: find what is stale from the log.
    views_at: str = ""


@dataclass
class InvalidateResult:
    invalidated: int
    processed: int


@dataclass
class ClockInput:
    #: The clock workflow's time (ISO 8601): moments due at or before it get their clock events.
    now: str
    limit: int = 1000


@dataclass
class ClockResult:
    ticked: int
    #: The next moment after ``now`` (ISO 8601; empty: none recorded).
    next_due: str = ""
    #: More moments were due than ``limit``.
    more: bool = False


#: Transient failures (database busy or down, a worker lost) retry without end: an accepted event must
#: end processed or visibly failed, never dropped. Permanent ones fail at once.
PIPELINE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
    non_retryable_error_types=[PermanentProcessingError.__name__],
)

# Local activities: each step is recorded in the workflow's history without a round trip through the
# server's task queues (see ``workflows.pipeline``).
ANALYZE_IMPACT: ActivityContract[ImpactInput, ImpactPlan] = ActivityContract(
    "analyze_impact", ImpactInput, ImpactPlan, timedelta(seconds=30), PIPELINE_RETRY, local=True
)
RECALCULATE: ActivityContract[RecalcInput, RecalcResult] = ActivityContract(
    "recalculate", RecalcInput, RecalcResult, timedelta(seconds=120), PIPELINE_RETRY, local=True
)
#: Kept for workflows whose history predates invalidation inside recalculation
#: (``workflows.pipeline.INVALIDATION_IN_RECALCULATION``).
INVALIDATE_CACHE: ActivityContract[InvalidateInput, InvalidateResult] = ActivityContract(
    "invalidate_cache", InvalidateInput, InvalidateResult, timedelta(seconds=30), PIPELINE_RETRY, local=True
)
#: Pulse's clock (``workflows.clock``): appends the clock events of collections whose moment came.
TICK_CLOCKS: ActivityContract[ClockInput, ClockResult] = ActivityContract(
    "tick_clocks", ClockInput, ClockResult, timedelta(seconds=30), PIPELINE_RETRY, local=True
)
