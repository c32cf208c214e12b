"""The notification activities (detection, delivery, digests) as contracts, with their inputs and results
and the inputs of the notification workflows: plain dataclasses, safe inside the workflow sandbox.

Failures: a transient one (provider down, timeout, 429) is raised as :data:`TRANSIENT_DELIVERY` and
retried by the contract's policy, with the provider's Retry-After as the next delay when it gave one; a
permanent one (invalid number, gone endpoint, no destination) as :data:`PERMANENT_DELIVERY`, and a
notification or user that no longer exists as :data:`NOT_FOUND`, both non-retryable: a critical
notification's workflow then falls through its escalation chain at once.

Times travel as ISO-8601 strings. No ``from __future__ import annotations``: see ``base.py``.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.common import RetryPolicy

from nftpulse.activities.contracts.base import ActivityContract
from nftpulse.activities.contracts.pipeline import ChangeSet

#: ``ApplicationError.type`` of the delivery activities' failures (see the module's docstring).
TRANSIENT_DELIVERY = "TransientDeliveryError"
PERMANENT_DELIVERY = "PermanentDeliveryError"
NOT_FOUND = "NotFound"

# -- detection ------------------------------------------------------------------------------------------


@dataclass
class DetectInput:
    """The metric changes of one applied batch, the time they were applied, and what caused them."""

    changes: ChangeSet
    #: ISO-8601 aware time of the change; empty: the activity's own clock. The pipeline leaves it empty
    #: because a workflow's clock stands still while one task runs a chain of local activities; a retry
    #: still answers the same, through the cause's detection record.
    at: str
    #: Identifies the batch (e.g. ``partition@seq``); makes a retried detection return its first answer.
    cause: str | None = None
    #: Instead of ``changes``: detect every batch of changes the pipeline saved for this workflow id
    #: (``store.models.ChangeBatchRecord``), each under its own cause, consuming them.
    outbox: str | None = None


@dataclass
class EscalationSpec:
    """The user's escalation policy for one critical notification."""

    chain: list[str]
    delay_s: float
    max_repeats: int


@dataclass
class NotifyRequest:
    """One notification detection created, and how to deliver it."""

    notification_id: int
    idempotency_key: str
    user_id: str
    kind: str
    severity: str
    entity_key: str
    rule_id: str
    title: str
    magnitude: float
    at: str
    #: now, digest or defer (quiet hours): ``domain.rules.DeliveryRoute``.
    route: str
    channels: list[str]
    not_before: str | None = None
    escalation: EscalationSpec | None = None
    #: ``QuietHours`` fields (with ``tz``), for escalation steps.
    quiet_hours: dict[str, Any] | None = None
    #: ``DigestSchedule`` fields (with ``tz``), for digest routing.
    digest: dict[str, Any] | None = None
    cause: str | None = None


@dataclass
class DetectResult:
    """What detection created; ``notifications`` need delivery (now, deferred or by digest)."""

    notifications: list[NotifyRequest] = field(default_factory=list)
    evaluated: int = 0
    suppressed: int = 0


@dataclass
class DetectSummary:
    """What the pipeline's workflows read of a detection's result: its counts.

    The same activity's result, decoded leanly: the converter ignores the fields a dataclass does not
    name, so the pipeline's workflow does not build a ``NotifyRequest`` per notification it never reads
    (detection started their workflows itself).
    """

    evaluated: int = 0
    suppressed: int = 0


# -- delivery ---------------------------------------------------------------------------------------------


@dataclass
class DeliverInput:
    """Deliver one notification on one channel."""

    notification_id: int
    channel: str
    #: Escalation step (0: the first send). Repeats re-send on purpose, under a distinct message id.
    step: int = 0


@dataclass
class DeliverResult:
    """The channel's answer; ``already`` when an earlier attempt delivered it (retry or replay)."""

    notification_id: int
    channel: str
    status: str
    provider_message_id: str | None = None
    already: bool = False


# -- digests ----------------------------------------------------------------------------------------------


@dataclass
class DigestEntry:
    """One pending item of a user's digest (signal payload of the digest workflow)."""

    notification_id: int
    idempotency_key: str
    kind: str
    severity: str
    entity_key: str
    rule_id: str | None
    title: str
    at: str
    magnitude: float = 1.0
    cause: str | None = None
    #: The latest schedule (``DigestSchedule`` fields): a user's edit reaches a running digest this way.
    schedule: dict[str, Any] | None = None


@dataclass
class DigestGroupOut:
    """A digest group as the send activity needs it."""

    kind: str
    entity_key: str
    severity: str
    titles: list[str]
    notification_ids: list[int]


@dataclass
class SendDigestInput:
    """One digest send; ``digest_key`` makes a retried send a no-op on idempotent channels."""

    user_id: str
    digest_key: str
    reason: str
    groups: list[DigestGroupOut]


@dataclass
class SendDigestResult:
    """Channels that carried the digest."""

    digest_key: str
    channels: list[str]
    items: int


# -- the workflows' inputs --------------------------------------------------------------------------------


@dataclass
class NotificationInput:
    """Input of the per-notification workflow."""

    request: NotifyRequest


@dataclass
class DigestInput:
    """Input of the per-user digest workflow; ``pending`` carries items across continue-as-new."""

    user_id: str
    schedule: dict[str, Any]
    pending: list[DigestEntry] = field(default_factory=list)


#: Workflow type names, as detection starts them and the worker registers them.
NOTIFICATION_WORKFLOW = "Notification"
DIGEST_WORKFLOW = "Digest"


def notification_workflow_id(prefix: str, notification_id: int) -> str:
    """Workflow id of a notification's delivery and escalation: the read endpoint signals it."""
    return f"{prefix}notification/{notification_id}"


def digest_workflow_id(prefix: str, user_id: str) -> str:
    """Workflow id of a user's digest."""
    return f"{prefix}digest/{user_id}"


def digest_entry(req: NotifyRequest) -> DigestEntry:
    """The digest signal payload for a notification routed to the digest."""
    return DigestEntry(
        notification_id=req.notification_id,
        idempotency_key=req.idempotency_key,
        kind=req.kind,
        severity=req.severity,
        entity_key=req.entity_key,
        rule_id=req.rule_id or None,
        title=req.title,
        at=req.at,
        magnitude=req.magnitude,
        cause=req.cause,
        schedule=req.digest,
    )


def parse_time(value: str) -> datetime:
    """An aware UTC datetime from ISO text (naive text is taken as UTC)."""
    parsed = datetime.fromisoformat(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


# -- the contracts ----------------------------------------------------------------------------------------

#: Detection only touches the database: retry transient trouble without end, like the pipeline does.
DETECT_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
#: Routine deliveries: the activity sets ``next_retry_delay`` from Retry-After and, for webhooks, from the
#: Standard Webhooks schedule (5 s … 10 h); eight attempts cover that schedule.
DELIVER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=4.0,
    maximum_interval=timedelta(hours=10),
    maximum_attempts=8,
    non_retryable_error_types=[PERMANENT_DELIVERY, NOT_FOUND],
)
#: Critical deliveries give up sooner: the escalation chain is the better retry.
CRITICAL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=4,
    non_retryable_error_types=[PERMANENT_DELIVERY, NOT_FOUND],
)

#: Detection, run by the pipeline's workflows as a local activity after each recalculation.
DETECT: ActivityContract[DetectInput, DetectResult] = ActivityContract(
    "detect_significant_changes", DetectInput, DetectResult, timedelta(seconds=30), DETECT_RETRY, local=True
)
#: The same activity as the pipeline's workflows call it (``workflows.notify.notify_changes``): its result
#: read as a :class:`DetectSummary`.
DETECT_SUMMARY: ActivityContract[DetectInput, DetectSummary] = ActivityContract(
    DETECT.name, DetectInput, DetectSummary, DETECT.start_to_close, DETECT.retry, local=True
)
DELIVER: ActivityContract[DeliverInput, DeliverResult] = ActivityContract(
    "deliver", DeliverInput, DeliverResult, timedelta(seconds=30), DELIVER_RETRY
)
#: The same activity for a critical notification's steps: fewer, faster retries.
DELIVER_CRITICAL: ActivityContract[DeliverInput, DeliverResult] = ActivityContract(
    DELIVER.name, DeliverInput, DeliverResult, DELIVER.start_to_close, CRITICAL_RETRY
)
SEND_DIGEST: ActivityContract[SendDigestInput, SendDigestResult] = ActivityContract(
    "send_digest", SendDigestInput, SendDigestResult, timedelta(seconds=60), DELIVER_RETRY
)
