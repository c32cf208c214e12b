"""Consumers (other services fed the change log by signed webhooks) as contracts: the runner workflow's
input and signals, and its two activities, reading the change log by cursor and delivering one change.

The runner (``workflows.consumers``) reads the changes that match a consumer's filters in batches
(:data:`READ_CHANGES`, which writes each into the consumer's outbox, ``consumer_deliveries``) and
delivers them (:data:`DELIVER_CHANGE`), one entity's changes in cursor order. An endpoint's answer is a
result, not a failure: the workflow waits the Standard Webhooks retry delay the activity names (a durable
timer), gives up after the schedule, and stops at a 410. Only the infrastructure failing (the database,
the worker dying mid-request) is retried by the contracts' policies, which re-send under the same
``webhook-id``: delivery is at least once.

No ``from __future__ import annotations``: see ``base.py``.
"""

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from nftpulse.activities.contracts.base import ActivityContract

#: Workflow type name, as the API starts it and the worker registers it.
CONSUMER_WORKFLOW = "Consumer"

#: Outcomes of :data:`DELIVER_CHANGE`.
DELIVERED = "delivered"
RETRY = "retry"
GAVE_UP = "failed"
GONE = "gone"
MISSING = "missing"


def consumer_workflow_id(prefix: str, consumer_id: str) -> str:
    """Workflow id of a consumer's runner: one per consumer, which the API ensures and signals."""
    return f"{prefix}consumer/{consumer_id}"


@dataclass
class QueuedDelivery:
    """A change read for the consumer and not yet delivered or given up."""

    delivery_id: int
    entity_key: str
    cursor: int
    #: ISO-8601: the next attempt waits until then (the retry schedule); None: due now.
    not_before: str | None = None


@dataclass
class ConsumerInput:
    """The runner's state, carried across continue-as-new. A fresh start (``cursor`` None) resumes from the
    cursor stored with the consumer."""

    consumer_id: str
    cursor: int | None = None
    generation: int = 0
    queued: list[QueuedDelivery] = field(default_factory=list)
    #: The lowest change log id found missing below newer ones (a transaction still committing), and
    #: since when; see ``store.consumers.read``.
    gap_id: int | None = None
    gap_since: str | None = None
    #: Continue as new past this many history events (tests make it small).
    history_limit: int = 5000
    #: How long a read waits for a new change (a long poll in the activity); and how long the workflow
    #: then waits on a timer before the next read. Tests on the time-skipping server, which skips timers
    #: but not a running activity, trade the first for the second.
    read_wait_s: float = 5.0
    idle_s: float = 0.0


@dataclass
class Replay:
    """Signal ``replay``: deliver again everything after ``from_cursor``, as ``generation``."""

    from_cursor: int
    generation: int


@dataclass
class ConsumerOutcome:
    """Why the runner ended: ``deleted`` or ``disabled``."""

    consumer_id: str
    reason: str


@dataclass
class ReadInput:
    consumer_id: str
    #: Read after this cursor; None: from the consumer's stored cursor.
    cursor: int | None
    generation: int
    gap_id: int | None = None
    gap_since: str | None = None
    limit: int = 200
    #: With nothing new, wait up to this long for a change before answering (long poll).
    wait_s: float = 5.0


@dataclass
class ReadResult:
    queued: list[QueuedDelivery]
    cursor: int
    gap_id: int | None = None
    gap_since: str | None = None
    #: The consumer was deleted or disabled: the runner ends.
    stop: str | None = None


@dataclass
class DeliverChangeInput:
    delivery_id: int


@dataclass
class DeliverChangeResult:
    """``outcome``: delivered, retry (after ``retry_in_s``), failed (the schedule is spent), gone (410:
    the consumer is disabled) or missing (the consumer was deleted)."""

    outcome: str
    response_code: int | None = None
    retry_in_s: float | None = None


#: Both activities only touch the database and (delivery) one HTTP request whose answer is the result:
#: retry what fails underneath them without end, backing off to a minute.
CONSUMER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=0,
)

#: Both heartbeat while they wait (the long poll, the endpoint's answer): a worker killed under them is
#: noticed after :data:`HEARTBEAT`, and the attempt runs again on another.
HEARTBEAT = timedelta(seconds=10)

READ_CHANGES: ActivityContract[ReadInput, ReadResult] = ActivityContract(
    "read_consumer_changes",
    ReadInput,
    ReadResult,
    timedelta(seconds=60),
    CONSUMER_RETRY,
    heartbeat=HEARTBEAT,
)
#: Longer than the webhook client's own timeout (15 s), so an attempt ends by its answer, not this.
DELIVER_CHANGE: ActivityContract[DeliverChangeInput, DeliverChangeResult] = ActivityContract(
    "deliver_consumer_change",
    DeliverChangeInput,
    DeliverChangeResult,
    timedelta(seconds=60),
    CONSUMER_RETRY,
    heartbeat=HEARTBEAT,
)


async def ensure_runner(client: Client, prefix: str, task_queue: str, consumer_id: str) -> None:
    """Start the consumer's runner unless it is running (idempotent: the API calls it at creation, the
    worker for every active consumer when it starts)."""
    await client.start_workflow(
        CONSUMER_WORKFLOW,
        ConsumerInput(consumer_id),
        id=consumer_workflow_id(prefix, consumer_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def replay_runner(
    client: Client, prefix: str, task_queue: str, consumer_id: str, replay: Replay
) -> None:
    """Send ``replay`` to the consumer's runner, starting it first if it ended (a disabled consumer)."""
    await client.start_workflow(
        CONSUMER_WORKFLOW,
        ConsumerInput(consumer_id),
        id=consumer_workflow_id(prefix, consumer_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        start_signal="replay",
        start_signal_args=[replay],
    )
