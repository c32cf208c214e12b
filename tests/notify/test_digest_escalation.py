"""Digest schedule (time zones, DST), grouping, early flush; escalation plans (domain/digest, escalation)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from nftpulse.domain.digest import (
    DigestItem,
    DigestSchedule,
    build_digest,
    combined_magnitude,
    flush_reason,
    group_items,
    merge_pending,
    next_send_at,
    retract,
)
from nftpulse.domain.escalation import (
    EscalationPolicy,
    EscalationState,
    advance,
    mark_dead,
    mark_read,
    next_step,
    plan,
)
from nftpulse.domain.routing import QuietHours
from nftpulse.domain.rules import AlertSeverity, NotificationKind

BERLIN = ZoneInfo("Europe/Berlin")
NY = ZoneInfo("America/New_York")
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Apia", "UTC"]


def test_daily_schedule_across_dst_in_berlin() -> None:
    s = DigestSchedule(frequency="daily", at=time(8, 0), tz="Europe/Berlin")
    # Saturday before the spring change (30 March 2025): 08:00 CET is 07:00 UTC;
    # on Sunday 08:00 CEST is 06:00 UTC.
    first = next_send_at(s, datetime(2025, 3, 29, 6, 0, tzinfo=UTC))
    assert first == datetime(2025, 3, 29, 7, 0, tzinfo=UTC)
    second = next_send_at(s, first)
    assert second == datetime(2025, 3, 30, 6, 0, tzinfo=UTC)
    assert (second - first) == timedelta(hours=23)
    assert second.astimezone(BERLIN).time() == time(8, 0)


def test_skipped_wall_time_moves_forward() -> None:
    # 02:30 does not exist in New York on 9 March 2025; the send moves forward by the gap (03:30 EDT).
    s = DigestSchedule(frequency="daily", at=time(2, 30), tz="America/New_York")
    got = next_send_at(s, datetime(2025, 3, 9, 5, 0, tzinfo=UTC))
    assert got == datetime(2025, 3, 9, 7, 30, tzinfo=UTC)
    assert got.astimezone(NY).time() == time(3, 30)


def test_weekly_and_hourly() -> None:
    weekly = DigestSchedule(frequency="weekly", weekday=0, at=time(9, 0), tz="Europe/Berlin")
    got = next_send_at(weekly, datetime(2025, 1, 8, 12, 0, tzinfo=UTC))  # a Wednesday
    assert got.astimezone(BERLIN) == datetime(2025, 1, 13, 9, 0, tzinfo=BERLIN)
    hourly = DigestSchedule(frequency="hourly", at=time(0, 15))
    assert next_send_at(hourly, datetime(2025, 1, 8, 12, 15, tzinfo=UTC)) == datetime(
        2025, 1, 8, 13, 15, tzinfo=UTC
    )


@settings(max_examples=300, deadline=None)
@given(
    after=st.datetimes(
        min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
    at=st.times(),
    tz=st.sampled_from(ZONES),
    weekly=st.booleans(),
    weekday=st.integers(min_value=0, max_value=6),
)
def test_next_send_properties(after: datetime, at: time, tz: str, weekly: bool, weekday: int) -> None:
    """Strictly after ``after``, at the wall time (or shifted past a DST gap), on the right weekday, and no
    valid send time is skipped in between."""
    zone = ZoneInfo(tz)
    s = DigestSchedule(frequency="weekly" if weekly else "daily", weekday=weekday, at=at, tz=tz)
    got = next_send_at(s, after)
    assert got > after
    local = got.astimezone(zone)
    wall = local.time().replace(tzinfo=None)
    gap = local.utcoffset() - (local - timedelta(hours=3)).utcoffset()  # type: ignore[operator]
    assert wall == at or (gap > timedelta(0) and wall > at)
    horizon = timedelta(days=7 if weekly else 1, hours=2)
    assert got - after <= horizon
    if weekly:
        assert local.date().weekday() == weekday or wall != at
    # No earlier valid occurrence between after and got.
    probe = after.astimezone(zone).date()
    while True:
        naive = datetime.combine(probe, at)
        cand = naive.replace(tzinfo=zone).astimezone(UTC)
        if cand >= got:
            break
        if cand > after and (not weekly or probe.weekday() == weekday):
            assert cand.astimezone(zone).replace(tzinfo=None) != naive, "skipped a valid send time"
        probe += timedelta(days=1)


T = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _item(
    key: str,
    kind: NotificationKind = NotificationKind.PRICE_MOVEMENT,
    entity: str = "c:1",
    rule: str | None = "r1",
    minutes: int = 0,
    magnitude: float = 1.0,
    before: str = "10",
    after: str = "8",
    cause: str | None = None,
    severity: AlertSeverity = AlertSeverity.INFO,
) -> DigestItem:
    return DigestItem(
        idempotency_key=key,
        kind=kind,
        entity_key=entity,
        rule_id=rule,
        at=T + timedelta(minutes=minutes),
        magnitude=magnitude,
        before=before,
        after=after,
        cause=cause,
        severity=severity,
    )


def test_newer_state_replaces_older_and_duplicates_collapse() -> None:
    items = [
        _item("a", before="10", after="8"),
        _item("b", minutes=5, before="8", after="7", magnitude=1.5),
        _item("a", minutes=9),
    ]
    [merged] = merge_pending(items)
    assert (merged.before, merged.after, merged.magnitude) == ("10", "7", 1.5)


def test_grouping_by_kind_and_entity() -> None:
    items = [
        _item("a"),
        _item("b", entity="c:2"),
        _item("c", kind=NotificationKind.TRUST_CHANGE, rule="r2"),
        _item("d", kind=NotificationKind.TRUST_CHANGE, rule="r3", severity=AlertSeverity.WARNING),
    ]
    groups = group_items(items)
    assert (groups[0].kind, groups[0].entity_key, len(groups[0].items)) == (
        NotificationKind.TRUST_CHANGE,
        "c:1",
        2,
    )
    assert {(g.kind, g.entity_key) for g in groups} == {
        (NotificationKind.PRICE_MOVEMENT, "c:1"),
        (NotificationKind.PRICE_MOVEMENT, "c:2"),
        (NotificationKind.TRUST_CHANGE, "c:1"),
    }


def test_flush_rules() -> None:
    s = DigestSchedule(flush_magnitude=5.0)
    due = T + timedelta(hours=10)
    assert flush_reason([], s, due + timedelta(hours=1), due) is None  # empty digest sends nothing
    small = [_item("a", rule="r1", magnitude=1.0), _item("b", rule="r2", magnitude=2.0)]
    assert flush_reason(small, s, T, due) is None
    assert flush_reason(small, s, due, due) == "schedule"
    big = [*small, _item("c", rule="r3", magnitude=2.5)]
    assert combined_magnitude(big) == 5.5
    assert flush_reason(big, s, T, due) == "magnitude"


def test_build_and_retract() -> None:
    assert build_digest("u1", [], "schedule") is None
    items = [_item("a", cause="evt-1"), _item("b", rule="r2", cause="evt-2")]
    left = retract(items, "evt-1")
    assert [i.idempotency_key for i in left] == ["b"]
    d1 = build_digest("u1", items, "schedule")
    d2 = build_digest("u1", list(reversed(items)), "schedule")
    assert d1 is not None and d2 is not None and d1.idempotency_key == d2.idempotency_key
    assert d1.item_keys == ["a", "b"]


# -- escalation ----------------------------------------------------------------------------------------


def test_plan_runs_chain_then_repeats_escalated_channels() -> None:
    policy = EscalationPolicy(chain=("in_app", "push", "sms"), delay_s=600, max_repeats=2)
    steps = plan(policy, T)
    assert [s.channel for s in steps] == ["in_app", "push", "sms", "push", "sms", "push", "sms"]
    assert [s.repeat for s in steps] == [0, 0, 0, 1, 1, 2, 2]
    assert [s.at for s in steps] == [T + timedelta(minutes=10 * i) for i in range(7)]


def test_read_stops_escalation() -> None:
    policy = EscalationPolicy(delay_s=600)
    state = EscalationState(started_at=T, last_sent_at=T)
    assert next_step(policy, state) is not None
    assert next_step(policy, mark_read(state)) is None


def test_dead_channel_falls_back_to_next() -> None:
    policy = EscalationPolicy(chain=("in_app", "push", "sms"), delay_s=600, max_repeats=0)
    state = mark_dead(EscalationState(started_at=T, last_sent_at=T), "push")
    step = next_step(policy, state)
    assert step is not None and step.channel == "sms" and step.step == 2
    assert next_step(policy, advance(state, step)) is None


def test_escalation_respects_quiet_hours_unless_allowed() -> None:
    policy = EscalationPolicy(delay_s=1800, max_repeats=0)
    quiet = QuietHours(start=time(22, 0), end=time(7, 0), tz="Europe/Berlin")
    start = datetime(2025, 1, 10, 21, 45, tzinfo=BERLIN)
    steps = plan(policy, start, quiet)
    assert steps[0].at == start.astimezone(UTC) and not steps[0].deferred_by_quiet_hours
    assert steps[1].deferred_by_quiet_hours and steps[1].at == datetime(2025, 1, 11, 7, 0, tzinfo=BERLIN)
    assert steps[2].at == datetime(2025, 1, 11, 7, 30, tzinfo=BERLIN)
    allowed = plan(policy, start, quiet.model_copy(update={"allow_critical": True}))
    assert allowed[1].at == datetime(2025, 1, 10, 22, 15, tzinfo=BERLIN)


@settings(max_examples=100, deadline=None)
@given(
    chain=st.lists(st.sampled_from(["in_app", "push", "sms", "email"]), min_size=1, max_size=4, unique=True),
    repeats=st.integers(min_value=0, max_value=3),
    delay=st.integers(min_value=60, max_value=7200),
)
def test_plan_length_and_monotonic(chain: list[str], repeats: int, delay: int) -> None:
    policy = EscalationPolicy(chain=tuple(chain), delay_s=delay, max_repeats=repeats)
    steps = plan(policy, T)
    assert len(steps) == policy.total_steps
    assert all(b.at > a.at for a, b in pairwise(steps))
    assert steps[0].channel == chain[0]
