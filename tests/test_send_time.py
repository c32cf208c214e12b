"""Learned send times on Temporal's time-skipping server: a user's reads (marked through the store's read
path, as the inbox, e-mail opens and push clicks mark them) teach detection their hour; an informational
alert of a user who chose learned send times is held until that hour (out of quiet hours), a warning is
not, a digest goes out then, and without enough reads the cold-start hour applies. Detection runs for real
on SQLite and Postgres; the notification and digest workflows run on the time-skipping server with
stand-in activities that record the (skipped) time they were asked to send at."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete

from nftpulse.activities.contracts.notify import (
    DetectInput,
    DigestInput,
    NotificationInput,
    NotifyRequest,
    digest_entry,
    parse_time,
)
from nftpulse.activities.contracts.pipeline import ChangeSet
from nftpulse.activities.notify.detection import DetectionActivities
from nftpulse.channels.registry import ChannelRegistry
from nftpulse.domain.changes import MetricChange
from nftpulse.store import notifications, watching
from nftpulse.store import notify as store
from nftpulse.store.db import Database
from nftpulse.workflows.notify import DigestWorkflow, NotificationWorkflow
from tests.test_notify_timers import Recorder, _test_server, skipping  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(_test_server() is None, reason="temporal-test-server not installed")

BERLIN = ZoneInfo("Europe/Berlin")
COLLECTION = "collection:ethereum:0x" + "5e" * 20
INFO_RULE = {"id": "floor-info", "kind": "relative_change", "metric": "floor", "pct": 0.2, "cooldown_s": 0}


def _user(db: Database, user_id: str, reads_at: list[datetime], **profile: Any) -> None:
    """A user with learned send times watching the collection, who read a notification at each time."""
    now = datetime.now(UTC)
    with db.write() as s:
        s.add(
            store.NotifyUser(
                id=user_id, timezone="Europe/Berlin", send_time="learned", updated_at=now, **profile
            )
        )
        s.flush()
        sub = store.Subscription(
            id=f"sub_{user_id}",
            user_id=user_id,
            target="collection",
            entity_key=COLLECTION,
            rules=[INFO_RULE | {"severity": "info"}],
            created_at=now,
            updated_at=now,
        )
        s.add(sub)
        s.flush()
        watching.replace_subscription_keys(s, sub.id, [COLLECTION])
        for i, at in enumerate(reads_at):
            row = store.Notification(
                idempotency_key=f"ntf_read_{user_id}_{i}",
                user_id=user_id,
                kind="market_update",
                severity="info",
                entity_key=COLLECTION,
                created_at=at,
                inbox_at=at,
            )
            s.add(row)
            s.flush()
            assert row.id is not None
            # The read path every channel's "user acted" goes through.
            assert notifications.mark_read(s, user_id, [row.id], at)


def _evenings(n: int, hour: int = 21) -> list[datetime]:
    """``n`` reads at ``hour``:10 Berlin time on successive days in May."""
    return [datetime(2026, 5, 1 + i, hour, 10, tzinfo=BERLIN) for i in range(n)]


def _detect(db: Database, now: datetime) -> list[NotifyRequest]:
    acts = DetectionActivities(db, ChannelRegistry(), send_time_default_hour=9, send_time_min_reads=5)
    changes = ChangeSet.of([MetricChange(COLLECTION, "floor", "10", "7")])
    result = acts.detect(DetectInput(changes, now.isoformat(), cause=f"st@{uuid.uuid4().hex[:8]}"))
    return result.notifications


def _next(now: datetime, hour: int) -> datetime:
    local = now.astimezone(BERLIN)
    at = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    return (
        at
        if at > local
        else (local + timedelta(days=1)).replace(hour=hour, minute=0, second=0, microsecond=0)
    )


async def test_an_info_alert_waits_for_the_hour_the_user_reads_most(
    db: Database,
    skipping: tuple[Any, Recorder, str],  # noqa: F811
) -> None:
    env, rec, queue = skipping
    now = await env.get_current_time()
    if now.astimezone(BERLIN).hour == 21:
        now += timedelta(hours=1)  # inside the hour it would go at once (another test says so)
    _user(db, "dora", _evenings(5))
    (req,) = _detect(db, now)
    assert req.route == "defer" and req.not_before is not None
    due = parse_time(req.not_before)
    assert due == _next(now, 21)
    with db.read() as s:
        hours = s.get(store.ReadHours, "dora")
    assert hours is not None and hours.reads == 5 and hours.hours[21] == 5

    handle = await env.client.start_workflow(
        NotificationWorkflow.run, NotificationInput(req), id=f"st-{uuid.uuid4().hex}", task_queue=queue
    )
    await handle.result()
    (channel, _, at) = rec.deliveries[0]
    assert channel == "in_app"
    assert abs((at - due).total_seconds()) < 5, (at, due)


def test_quiet_hours_and_cold_start(db: Database) -> None:
    now = datetime(2026, 6, 3, 10, 30, tzinfo=BERLIN)
    # The learned hour falls in quiet hours (20:00-07:00): the end of them.
    _user(db, "fay", _evenings(6), quiet_hours={"start": "20:00:00", "end": "07:00:00"})
    # Two reads are not enough to go by: the cold-start hour (9).
    _user(db, "ed", _evenings(2))
    due = {r.user_id: parse_time(r.not_before or "") for r in _detect(db, now)}
    assert due == {
        "fay": datetime(2026, 6, 4, 7, 0, tzinfo=BERLIN),
        "ed": datetime(2026, 6, 4, 9, 0, tzinfo=BERLIN),
    }


def test_inside_the_hour_and_warnings_go_at_once(db: Database) -> None:
    _user(db, "gil", _evenings(5, hour=10))
    (req,) = _detect(db, datetime(2026, 6, 3, 10, 30, tzinfo=BERLIN))
    assert req.route == "now" and req.not_before is None
    with db.write() as s:
        sub = s.get(store.Subscription, "sub_gil")
        assert sub is not None
        sub.rules = [INFO_RULE | {"severity": "warning"}]
        s.add(sub)
        s.execute(delete(store.RuleStateRecord))  # a changed rule starts afresh, as the API does it
        watching.bump_watch_generation(s)
    (req,) = _detect(db, datetime(2026, 6, 4, 15, 0, tzinfo=BERLIN))
    assert req.route == "now" and req.not_before is None and req.severity == "warning"


async def test_the_digest_goes_out_at_the_learned_hour(
    db: Database,
    skipping: tuple[Any, Recorder, str],  # noqa: F811
) -> None:
    env, rec, queue = skipping
    now = await env.get_current_time()
    # Daily at 08:00 as the user set it, hourly budget spent: the item goes to the digest, which is
    # sent at the hour this user reads (21:00), on the user's daily schedule.
    _user(db, "hal", _evenings(5), digest={"frequency": "daily", "at": "08:00:00"}, hourly_budget=0)
    (req,) = _detect(db, now)
    assert req.route == "digest" and req.digest is not None and req.digest["at"] == "21:00:00"
    handle = await env.client.start_workflow(
        DigestWorkflow.run,
        DigestInput(req.user_id, req.digest),
        id=f"st-digest-{uuid.uuid4().hex}",
        task_queue=queue,
        start_signal="add",
        start_signal_args=[digest_entry(req)],
    )
    for _ in range(200):
        if rec.digests:
            break
        await env.sleep(timedelta(minutes=30))
    assert rec.digests, "the digest was not sent within a skipped day"
    (_sent, at) = rec.digests[0]
    assert at.astimezone(BERLIN).hour == 21 and at.astimezone(BERLIN).minute == 0
    assert at - now < timedelta(days=1, minutes=1)
    await handle.terminate()
