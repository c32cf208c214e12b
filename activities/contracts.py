"""Inputs and results of the pipeline's activities: plain dataclasses, safe inside the workflow sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field


class PermanentProcessingError(Exception):
    """An event that can never be applied as it is (bad data, unknown rate): retrying will not help.

    Raised as the ``type`` of a non-retryable ``ApplicationError`` so workflows and the Web UI show it.
    """


@dataclass
class ImpactInput:
    partition: str
    #: The events to analyse; empty means "whatever is pending in the partition".
    seqs: list[int] = field(default_factory=list)
    limit: int = 2000


@dataclass
class ImpactPlan:
    partition: str
    seqs: list[int]
    entity_count: int
    #: A sample of the touched entity keys (see ``activities.pipeline.PLAN_SAMPLE``).
    entities: list[str]
    factors: list[str]
    severity: str
    has_more: bool = False


@dataclass
class RecalcInput:
    plan: ImpactPlan
    workflow_id: str
    #: True when the batch is a single event in its own workflow: a permanent failure fails the workflow.
    single: bool = False


@dataclass
class MetricChange:
    entity: str
    metric: str
    before: str | float | int | bool | None
    after: str | float | int | bool | None


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
    partition: str
    applied: list[int]
    isolated: list[IsolatedEvent]
    keys: list[str]
    changes: list[MetricChange]


@dataclass
class InvalidateInput:
    partition: str
    keys: list[str]


@dataclass
class InvalidateResult:
    invalidated: int
    processed: int
