"""Durable delivery: one workflow per notification (channels, fallback, escalation) and one per user's digest.

``NotificationWorkflow`` sends a notification on its chosen channels. A critical one escalates along the
user's chain (e.g. in-app → push → SMS) until it is read — the read endpoint sends the ``read`` signal —
waiting ``delay_s`` between steps, moving steps out of quiet hours unless the user lets critical alerts
through, and repeating the escalated part at most ``max_repeats`` times. A channel that fails permanently
is skipped and the next one is tried at once.

``DigestWorkflow`` collects a user's non-urgent items (``add`` signal, sent with signal-with-start by
detection) and sends them on the user's schedule in the user's time zone, early when their combined
magnitude passes the threshold. It ends when idle; the next item starts a new run.

All times come from ``workflow.now()`` and the pure planners in ``domain/``, so replays are exact and the
time-skipping test server can run days of schedule in a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from nftpulse.activities.contracts.notify import (
        DELIVER,
        DELIVER_CRITICAL,
        DETECT_SUMMARY,
        DIGEST_WORKFLOW,
        NOTIFICATION_WORKFLOW,
        PERMANENT_DELIVERY,
        SEND_DIGEST,
        DeliverInput,
        DetectInput,
        DetectSummary,
        DigestEntry,
        DigestGroupOut,
        DigestInput,
        NotificationInput,
        NotifyRequest,
        SendDigestInput,
        parse_time,
    )
    from nftpulse.activities.contracts.pipeline import ChangeSet
    from nftpulse.domain.digest import (
        DigestItem,
        DigestReason,
        DigestSchedule,
        build_digest,
        flush_reason,
        next_send_at,
        retract,
    )
    from nftpulse.domain.escalation import EscalationPolicy, EscalationState, mark_dead, next_step
    from nftpulse.domain.routing import QuietHours
    from nftpulse.domain.rules import AlertSeverity, NotificationKind

#: A digest with nothing pending for this long ends; the next item starts a new run.
DIGEST_IDLE = timedelta(days=2)
DIGEST_SENDS_PER_RUN = 50


async def notify_changes(owner: str) -> DetectSummary:
    """The pipeline hook: run detection for the changes the calling workflow's batches saved (from inside
    that workflow).

    Recalculation saves each batch's changes in the database under the workflow's id, and detection
    consumes them, batch by batch, each idempotent by its cause: so a retry never notifies twice and a
    batch whose result a crash lost is still detected at the next call. Detection starts the
    notifications' workflows itself; the calling workflow reads only the counts (``DETECT_SUMMARY``).
    """
    return await DETECT_SUMMARY.run(DetectInput(changes=ChangeSet(), at="", outbox=owner))


@dataclass
class NotificationOutcome:
    """What the notification workflow did."""

    notification_id: int
    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    steps: int = 0
    read: bool = False


def _permanent(exc: ActivityError) -> bool:
    cause = exc.cause
    return isinstance(cause, ApplicationError) and (cause.non_retryable or cause.type == PERMANENT_DELIVERY)


@workflow.defn(name=NOTIFICATION_WORKFLOW)
class NotificationWorkflow:
    """Delivery and escalation of one notification."""

    @workflow.init
    def __init__(self, inp: NotificationInput) -> None:
        # State lives here so that a read signal arriving before run() starts is not lost.
        self._read = False
        self._outcome = NotificationOutcome(inp.request.notification_id)

    @workflow.signal(name="read")
    def read(self) -> None:
        """The user read the notification: stop escalating."""
        self._read = True

    @workflow.query(name="status")
    def status(self) -> NotificationOutcome:
        """Channels delivered and failed so far."""
        return self._outcome

    @workflow.run
    async def run(self, inp: NotificationInput) -> NotificationOutcome:
        req = inp.request
        critical = req.severity == AlertSeverity.CRITICAL.value
        if req.not_before is not None and await self._sleep_until_read(parse_time(req.not_before)):
            # Deferred by quiet hours and read in the meantime (in the inbox): nothing left to send.
            return self._done()
        if req.escalation is None:
            await asyncio.gather(*(self._deliver(req, ch, 0, critical) for ch in req.channels))
            return self._done()
        return await self._escalate(req)

    async def _escalate(self, req: NotifyRequest) -> NotificationOutcome:
        assert req.escalation is not None
        policy = EscalationPolicy(
            chain=tuple(req.escalation.chain),
            delay_s=req.escalation.delay_s,
            max_repeats=req.escalation.max_repeats,
        )
        quiet = QuietHours.model_validate(req.quiet_hours) if req.quiet_hours else None
        state = EscalationState(started_at=workflow.now(), last_step=0, last_sent_at=workflow.now())
        # Step 0: the first channel of the chain plus the channels the user prefers for this kind. If the
        # chain's first channel fails for good, fall through the chain at once (critical fallback).
        others = [c for c in req.channels if c != policy.chain[0]]
        extra = asyncio.gather(*(self._deliver(req, ch, 0, True) for ch in others))
        if not await self._deliver(req, policy.chain[0], 0, True):
            state = self._fell_back(policy, mark_dead(state, policy.chain[0]), 0)
        await extra
        while (step := next_step(policy, state, quiet)) is not None:
            if await self._sleep_until_read(step.at):
                break
            self._outcome.steps += 1
            if await self._deliver(req, step.channel, step.step, True):
                state = state.model_copy(update={"last_step": step.step, "last_sent_at": workflow.now()})
            else:
                state = self._fell_back(policy, mark_dead(state, step.channel), step.step)
        return self._done()

    @staticmethod
    def _fell_back(policy: EscalationPolicy, state: EscalationState, step: int) -> EscalationState:
        """After a permanent failure the next step is due now, not after another ``delay_s``."""
        due_now = workflow.now() - timedelta(seconds=policy.delay_s)
        return state.model_copy(update={"last_step": step, "last_sent_at": due_now})

    async def _sleep_until_read(self, when: datetime) -> bool:
        """Wait until ``when`` (aware) or a read; True if read."""
        delay = (when - workflow.now()).total_seconds()
        if delay > 0 and not self._read:
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self._read, timeout=timedelta(seconds=delay))
        return self._read

    async def _deliver(self, req: NotifyRequest, channel: str, step: int, critical: bool) -> bool:
        try:
            contract = DELIVER_CRITICAL if critical else DELIVER
            result = await contract.run(DeliverInput(req.notification_id, channel, step))
        except ActivityError as exc:
            workflow.logger.warning(
                "delivery failed",
                extra={"notification": req.notification_id, "channel": channel, "permanent": _permanent(exc)},
            )
            self._outcome.failed.append(channel)
            return False
        self._outcome.delivered.append(result.channel)
        return True

    def _done(self) -> NotificationOutcome:
        self._outcome.read = self._read
        return self._outcome


def _item(entry: DigestEntry) -> DigestItem:
    return DigestItem(
        idempotency_key=entry.idempotency_key,
        kind=NotificationKind(entry.kind),
        severity=AlertSeverity(entry.severity),
        entity_key=entry.entity_key,
        rule_id=entry.rule_id,
        title=entry.title,
        at=parse_time(entry.at),
        magnitude=entry.magnitude,
        cause=entry.cause,
    )


@dataclass
class DigestOutcome:
    """Sends made by one run of the digest workflow."""

    user_id: str
    sends: list[str] = field(default_factory=list)


@workflow.defn(name=DIGEST_WORKFLOW)
class DigestWorkflow:
    """A user's digest: accumulate, then send on schedule (or early on magnitude)."""

    @workflow.init
    def __init__(self, inp: DigestInput) -> None:
        self._pending: list[DigestEntry] = list(inp.pending)
        self._schedule = dict(inp.schedule)
        self._changed = False
        self._outcome = DigestOutcome(inp.user_id)

    @workflow.signal(name="add")
    def add(self, entry: DigestEntry) -> None:
        """A notification routed to the digest."""
        if all(e.idempotency_key != entry.idempotency_key for e in self._pending):
            self._pending.append(entry)
        if entry.schedule:
            self._schedule = dict(entry.schedule)
        self._changed = True

    @workflow.signal(name="retract")
    def retract(self, cause: str) -> None:
        """Withdraw pending items whose cause was reverted (a chain reorganisation)."""
        kept = {i.idempotency_key for i in retract([_item(e) for e in self._pending], cause)}
        self._pending = [e for e in self._pending if e.idempotency_key in kept]
        self._changed = True

    @workflow.query(name="pending")
    def pending(self) -> list[str]:
        """Idempotency keys waiting for the next send."""
        return [e.idempotency_key for e in self._pending]

    @workflow.run
    async def run(self, inp: DigestInput) -> DigestOutcome:
        while True:
            if not self._pending:
                self._changed = False
                try:
                    await workflow.wait_condition(lambda: self._changed, timeout=DIGEST_IDLE)
                except TimeoutError:
                    return self._outcome
                continue
            schedule = DigestSchedule.model_validate(self._schedule)
            due = next_send_at(schedule, workflow.now())
            reason = None
            while reason is None:
                items = [_item(e) for e in self._pending]
                reason = flush_reason(items, schedule, workflow.now(), due)
                if reason is not None or not self._pending:
                    break
                self._changed = False
                try:
                    await workflow.wait_condition(
                        lambda: self._changed, timeout=max(due - workflow.now(), timedelta(0))
                    )
                except TimeoutError:
                    continue
                if self._schedule != schedule.model_dump(mode="json"):
                    # The user changed the schedule: re-plan from the new one.
                    schedule = DigestSchedule.model_validate(self._schedule)
                    due = next_send_at(schedule, workflow.now())
            if reason is None:
                continue  # everything was retracted: an empty digest sends nothing
            await self._send(inp.user_id, reason)
            if (
                len(self._outcome.sends) >= DIGEST_SENDS_PER_RUN
                or workflow.info().is_continue_as_new_suggested()
            ):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(DigestInput(inp.user_id, self._schedule, self._pending))

    async def _send(self, user_id: str, reason: DigestReason) -> None:
        entries = list(self._pending)
        digest = build_digest(user_id, [_item(e) for e in entries], reason)
        if digest is None:
            return
        groups = [
            DigestGroupOut(
                kind=g.kind.value,
                entity_key=g.entity_key,
                severity=g.severity.value,
                titles=[i.title for i in g.items],
                notification_ids=[
                    e.notification_id
                    for e in entries
                    if e.kind == g.kind.value and e.entity_key == g.entity_key
                ],
            )
            for g in digest.groups
        ]
        await SEND_DIGEST.run(SendDigestInput(user_id, digest.idempotency_key, reason, groups))
        sent = set(digest.item_keys) | {e.idempotency_key for e in entries}
        # Items that arrived while the activity ran stay for the next digest.
        self._pending = [e for e in self._pending if e.idempotency_key not in sent]
        self._outcome.sends.append(digest.idempotency_key)
