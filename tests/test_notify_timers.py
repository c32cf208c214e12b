"""Escalation and digest timers on Temporal's time-skipping test server, with stand-in activities
registered under the real activity names (``deliver``, ``send_digest``) that record what they were asked
to do and at which (skipped) time."""

from __future__ import annotations

import asyncio
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from nftpulse.activities.contracts.notify import (
    DeliverInput,
    DeliverResult,
    DigestEntry,
    DigestInput,
    EscalationSpec,
    NotificationInput,
    NotifyRequest,
    SendDigestInput,
    SendDigestResult,
)
from nftpulse.domain.escalation import DEFAULT_CHAIN, DEFAULT_DELAY_S, DEFAULT_MAX_REPEATS
from nftpulse.workflows.notify import DigestWorkflow, NotificationOutcome, NotificationWorkflow


def _test_server() -> str | None:
    return shutil.which("temporal-test-server") or next(
        (str(p) for p in [Path(sys.executable).parent / "temporal-test-server"] if p.exists()), None
    )


pytestmark = pytest.mark.skipif(_test_server() is None, reason="temporal-test-server not installed")


@dataclass
class Recorder:
    """What the stand-in activities saw."""

    env: WorkflowEnvironment
    deliveries: list[tuple[str, int, datetime]] = field(default_factory=list)
    digests: list[tuple[SendDigestInput, datetime]] = field(default_factory=list)
    fail_permanently: set[str] = field(default_factory=set)

    def activities(self) -> list[Any]:
        @activity.defn(name="deliver")
        async def deliver(inp: DeliverInput) -> DeliverResult:
            now = await self.env.get_current_time()
            if inp.channel in self.fail_permanently:
                self.deliveries.append((f"{inp.channel}!", inp.step, now))
                raise ApplicationError("invalid number", type="PermanentDeliveryError", non_retryable=True)
            self.deliveries.append((inp.channel, inp.step, now))
            return DeliverResult(inp.notification_id, inp.channel, "delivered")

        @activity.defn(name="send_digest")
        async def send_digest(inp: SendDigestInput) -> SendDigestResult:
            self.digests.append((inp, await self.env.get_current_time()))
            return SendDigestResult(
                inp.digest_key, ["email"], sum(len(g.notification_ids) for g in inp.groups)
            )

        return [deliver, send_digest]


@pytest_asyncio.fixture
async def skipping() -> AsyncIterator[tuple[WorkflowEnvironment, Recorder, str]]:
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=_test_server())
    recorder = Recorder(env)
    queue = f"notify-timers-{uuid.uuid4().hex[:8]}"
    try:
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[NotificationWorkflow, DigestWorkflow],
            activities=recorder.activities(),
        ):
            yield env, recorder, queue
    finally:
        await env.shutdown()


def _request(
    severity: str = "critical",
    chain: list[str] | None = None,
    quiet: dict[str, Any] | None = None,
    delay_s: float = DEFAULT_DELAY_S,
    max_repeats: int = DEFAULT_MAX_REPEATS,
) -> NotifyRequest:
    return NotifyRequest(
        notification_id=7,
        idempotency_key="ntf_test",
        user_id="u1",
        kind="price_movement",
        severity=severity,
        entity_key="collection:ethereum:0xabc",
        rule_id="r1",
        title="Floor fell 25 %",
        magnitude=1.25,
        at=datetime.now(UTC).isoformat(),
        route="now",
        channels=["in_app"],
        escalation=EscalationSpec(chain or list(DEFAULT_CHAIN), delay_s, max_repeats)
        if severity == "critical"
        else None,
        quiet_hours=quiet,
    )


async def _start(env: WorkflowEnvironment, queue: str, req: NotifyRequest) -> WorkflowHandle[Any, Any]:
    return await env.client.start_workflow(
        NotificationWorkflow.run, NotificationInput(req), id=f"ntf-{uuid.uuid4().hex}", task_queue=queue
    )


async def _until(predicate: Any, limit_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_read_before_deadline_stops_escalation(
    skipping: tuple[WorkflowEnvironment, Recorder, str],
) -> None:
    env, rec, queue = skipping
    handle = await _start(env, queue, _request())
    await _until(lambda: len(rec.deliveries) >= 1)
    await handle.signal(NotificationWorkflow.read)
    outcome: NotificationOutcome = await handle.result()
    assert [d[0] for d in rec.deliveries] == ["in_app"]
    assert outcome.read and outcome.steps == 0


async def test_unread_walks_the_chain_and_repeats(
    skipping: tuple[WorkflowEnvironment, Recorder, str],
) -> None:
    env, rec, queue = skipping
    start = await env.get_current_time()
    handle = await _start(env, queue, _request(delay_s=600, max_repeats=1))
    outcome: NotificationOutcome = await handle.result()
    assert [(c, s) for c, s, _ in rec.deliveries] == [
        ("in_app", 0),
        ("push", 1),
        ("sms", 2),
        ("push", 3),
        ("sms", 4),
    ]
    offsets = [round((at - start).total_seconds() / 600) for _, _, at in rec.deliveries]
    assert offsets == [0, 1, 2, 3, 4]
    assert not outcome.read and outcome.steps == 4


async def test_permanent_failure_falls_back_at_once(
    skipping: tuple[WorkflowEnvironment, Recorder, str],
) -> None:
    env, rec, queue = skipping
    rec.fail_permanently.add("push")
    start = await env.get_current_time()
    handle = await _start(env, queue, _request(delay_s=600, max_repeats=0))
    await handle.result()
    (c0, _, _t0), (c1, _, t1), (c2, _, t2) = rec.deliveries
    assert (c0, c1, c2) == ("in_app", "push!", "sms")
    # SMS follows the failed push immediately instead of waiting another delay.
    assert round((t1 - start).total_seconds() / 600) == 1
    assert (t2 - t1) < timedelta(seconds=60)


def _quiet_window(now: datetime, start_in: timedelta, length: timedelta) -> tuple[time, time]:
    a, b = now + start_in, now + start_in + length
    return a.time().replace(second=0, microsecond=0), b.time().replace(second=0, microsecond=0)


@pytest.mark.parametrize("allow_critical", [False, True])
async def test_quiet_hours_defer_escalation_unless_allowed(
    skipping: tuple[WorkflowEnvironment, Recorder, str], allow_critical: bool
) -> None:
    env, rec, queue = skipping
    now = await env.get_current_time()
    start_q, end_q = _quiet_window(now, timedelta(minutes=5), timedelta(hours=3))
    quiet = {
        "start": start_q.isoformat(),
        "end": end_q.isoformat(),
        "tz": "UTC",
        "allow_critical": allow_critical,
    }
    handle = await _start(
        env, queue, _request(chain=["in_app", "push"], quiet=quiet, delay_s=900, max_repeats=0)
    )
    await handle.result()
    (_, _, t0), (c1, _, t1) = rec.deliveries
    assert c1 == "push"
    if allow_critical:
        assert round((t1 - t0).total_seconds()) in range(899, 902)
    else:
        # Due 15 min in, inside quiet hours: sent when the window ends, about 3 h 5 min in.
        end_at = datetime.combine(now.date(), end_q, tzinfo=UTC)
        if end_at < now:
            end_at += timedelta(days=1)
        assert abs((t1 - end_at).total_seconds()) < 5


def _entry(
    n: int, magnitude: float = 1.0, cause: str | None = None, schedule: dict[str, Any] | None = None
) -> DigestEntry:
    return DigestEntry(
        notification_id=n,
        idempotency_key=f"ntf_{n}",
        kind="price_movement",
        severity="warning",
        entity_key=f"collection:ethereum:0x{n:040x}",
        rule_id="r1",
        title=f"Floor moved ({n})",
        at=datetime.now(UTC).isoformat(),
        magnitude=magnitude,
        cause=cause or f"cause-{n}",
        schedule=schedule,
    )


async def _start_digest(
    env: WorkflowEnvironment, queue: str, schedule: dict[str, Any], first: DigestEntry
) -> WorkflowHandle[Any, Any]:
    return await env.client.start_workflow(
        DigestWorkflow.run,
        DigestInput("u1", schedule),
        id=f"digest-{uuid.uuid4().hex}",
        task_queue=queue,
        start_signal="add",
        start_signal_args=[first],
    )


@pytest.mark.parametrize("tz", ["Asia/Tokyo", "America/New_York"])
async def test_digest_goes_out_on_schedule_in_user_time_zone(
    skipping: tuple[WorkflowEnvironment, Recorder, str], tz: str
) -> None:
    env, rec, queue = skipping
    schedule = {"frequency": "daily", "at": "08:30", "tz": tz, "flush_magnitude": 100.0}
    start = await env.get_current_time()
    handle = await _start_digest(env, queue, schedule, _entry(1))
    await handle.signal(DigestWorkflow.add, _entry(2))
    await handle.result()  # sends, then ends after the idle period (all skipped time)
    assert len(rec.digests) == 1
    sent, at = rec.digests[0]
    local = at.astimezone(ZoneInfo(tz))
    assert (local.hour, local.minute) == (8, 30)
    assert timedelta(0) < at - start <= timedelta(days=1)
    assert sent.reason == "schedule"
    assert sorted(i for g in sent.groups for i in g.notification_ids) == [1, 2]


async def test_digest_flushes_early_on_magnitude(skipping: tuple[WorkflowEnvironment, Recorder, str]) -> None:
    env, rec, queue = skipping
    now = await env.get_current_time()
    # Scheduled 12 h from now: only the magnitude can make it go sooner.
    at = (now + timedelta(hours=12)).astimezone(UTC).strftime("%H:%M")
    schedule = {"frequency": "daily", "at": at, "tz": "UTC", "flush_magnitude": 3.0}
    handle = await _start_digest(env, queue, schedule, _entry(1, magnitude=1.5))
    await handle.signal(DigestWorkflow.add, _entry(2, magnitude=1.6))
    await _until(lambda: len(rec.digests) >= 1)
    sent, sent_at = rec.digests[0]
    assert sent.reason == "magnitude"
    assert sent_at - now < timedelta(hours=1)
    await handle.terminate("test done")


async def test_empty_digest_sends_nothing(skipping: tuple[WorkflowEnvironment, Recorder, str]) -> None:
    env, rec, queue = skipping
    schedule = {"frequency": "hourly", "at": "00:00", "tz": "UTC"}
    handle = await _start_digest(env, queue, schedule, _entry(1, cause="reorged"))
    await handle.signal(DigestWorkflow.retract, "reorged")
    await handle.result()
    assert rec.digests == []
