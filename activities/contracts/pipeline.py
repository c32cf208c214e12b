"""Inputs and results of the pipeline's activities: plain dataclasses, safe inside the workflow sandbox.

No ``from __future__ import annotations``: see ``base.py``.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nftpulse.domain.changes import MetricChange


@dataclass
class ImpactInput:
    #: Collection (``collection:<chain>:<contract>``) and rate (``rates:<chain>``) partitions.
    partitions: list[str]
    #: The events to analyse; empty means "whatever is pending in those partitions".
    seqs: list[int] = field(default_factory=list)
    limit: int = 2000


@dataclass
class ImpactPlan:
    #: The partitions with events in this plan.
    partitions: list[str]
    seqs: list[int]
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


@dataclass
class InvalidateInput:
    partitions: list[str]
    #: ``RecalcResult.views_at`` of the batch just applied; empty: find what is stale from the log.
    views_at: str = ""


@dataclass
class InvalidateResult:
    invalidated: int
    processed: int
