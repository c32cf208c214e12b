"""Escalation plans for critical alerts nobody has read: pure timeline arithmetic.

The escalation workflow sends step 0 at once, then repeatedly asks :func:`next_step` for the next
(channel, time), waits on a timer or the "read" signal, and sends. Reading the alert stops everything
(``next_step`` returns ``None`` once ``read`` is set). The chain runs once through all channels; each
repeat re-runs the escalated part of the chain (everything after the first channel: re-writing the same
inbox row is pointless) until ``max_repeats`` is used up.

Quiet hours move a step to the window's end unless the user lets critical alerts through.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nftpulse.domain.routing import QuietHours
from nftpulse.domain.rules import AlertSeverity, ChannelName

#: A user's escalation unless they set their own: the inbox, then push, then SMS, 15 minutes apart,
#: the escalated part (push, SMS) repeated once. The API's profile defaults and detection's fallback for
#: a stored profile without these fields both read them from here.
DEFAULT_CHAIN: tuple[ChannelName, ...] = ("in_app", "push", "sms")
DEFAULT_DELAY_S = 900.0
DEFAULT_MAX_REPEATS = 1


class EscalationPolicy(BaseModel):
    """Which channels, in order, how long to wait for a read between steps, and how often to repeat."""

    model_config = ConfigDict(frozen=True)

    chain: tuple[str, ...] = DEFAULT_CHAIN
    delay_s: float = Field(default=DEFAULT_DELAY_S, gt=0, description="wait for a read before the next step")
    max_repeats: int = Field(
        default=DEFAULT_MAX_REPEATS, ge=0, description="extra passes over the escalated channels"
    )
    severity: AlertSeverity = AlertSeverity.CRITICAL

    @field_validator("chain")
    @classmethod
    def _non_empty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("an escalation chain needs at least one channel")
        return v

    @property
    def total_steps(self) -> int:
        """Steps in the whole plan: the first pass plus the repeats of the escalated channels."""
        escalated = len(self.chain) - 1
        return len(self.chain) + (self.max_repeats * escalated if escalated else 0)

    def channel_at(self, step: int) -> str:
        """The channel of step ``step`` (0-based)."""
        if step < len(self.chain):
            return self.chain[step]
        escalated = self.chain[1:]
        return escalated[(step - len(self.chain)) % len(escalated)]


class EscalationStep(BaseModel):
    """One planned send."""

    model_config = ConfigDict(frozen=True)

    step: int
    channel: str
    at: datetime
    repeat: int = Field(description="0 for the first pass, 1… for repeats")
    deferred_by_quiet_hours: bool = False


class EscalationState(BaseModel):
    """What the workflow has done so far; stored in workflow state, JSON-serialisable."""

    started_at: datetime
    last_step: int = 0
    last_sent_at: datetime
    read: bool = False
    #: channels that failed permanently (invalid number, gone subscription): skipped from then on.
    dead_channels: list[str] = Field(default_factory=list)


def _repeat_of(policy: EscalationPolicy, step: int) -> int:
    if step < len(policy.chain):
        return 0
    return 1 + (step - len(policy.chain)) // max(len(policy.chain) - 1, 1)


def next_step(
    policy: EscalationPolicy, state: EscalationState, quiet: QuietHours | None = None
) -> EscalationStep | None:
    """The next send after ``state``, or ``None`` when the alert was read or the plan is exhausted.

    The step is due ``delay_s`` after the previous send; inside quiet hours it moves to the window's end
    unless the user allows critical alerts through. Channels in ``dead_channels`` are skipped (a critical
    alert falls back to the next channel instead).
    """
    if state.read:
        return None
    due = state.last_sent_at.astimezone(UTC) + timedelta(seconds=policy.delay_s)
    step = state.last_step + 1
    while step < policy.total_steps:
        channel = policy.channel_at(step)
        if channel not in state.dead_channels:
            deferred = False
            if quiet is not None and quiet.blocks(policy.severity, due):
                due, deferred = quiet.ends_at(due), True
            return EscalationStep(
                step=step,
                channel=channel,
                at=due,
                repeat=_repeat_of(policy, step),
                deferred_by_quiet_hours=deferred,
            )
        step += 1
    return None


def plan(policy: EscalationPolicy, start: datetime, quiet: QuietHours | None = None) -> list[EscalationStep]:
    """The whole timeline if nobody reads the alert: step 0 at ``start`` (or the end of quiet hours), then
    each step ``delay_s`` after the previous one. For display and tests; workflows use :func:`next_step`."""
    first_at = start.astimezone(UTC)
    deferred = False
    if quiet is not None and quiet.blocks(policy.severity, first_at):
        first_at, deferred = quiet.ends_at(first_at), True
    steps = [
        EscalationStep(
            step=0, channel=policy.chain[0], at=first_at, repeat=0, deferred_by_quiet_hours=deferred
        )
    ]
    state = EscalationState(started_at=first_at, last_step=0, last_sent_at=first_at)
    while (nxt := next_step(policy, state, quiet)) is not None:
        steps.append(nxt)
        state = state.model_copy(update={"last_step": nxt.step, "last_sent_at": nxt.at})
    return steps


def advance(state: EscalationState, step: EscalationStep) -> EscalationState:
    """The state after ``step`` was sent."""
    return state.model_copy(update={"last_step": step.step, "last_sent_at": step.at})


def mark_read(state: EscalationState) -> EscalationState:
    """The state after the user read the alert: no further steps."""
    return state.model_copy(update={"read": True})


def mark_dead(state: EscalationState, channel: str) -> EscalationState:
    """The state after ``channel`` failed permanently for this user."""
    if channel in state.dead_channels:
        return state
    return state.model_copy(update={"dead_channels": [*state.dead_channels, channel]})
