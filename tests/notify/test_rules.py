"""Detectors, hysteresis, cooldown, budget, quiet hours and ranking (domain/rules.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nftpulse.domain.changes import MetricChange
from nftpulse.domain.evaluation import evaluate, modified_z
from nftpulse.domain.routing import (
    BudgetState,
    Candidate,
    DeliveryPreferences,
    DeliveryRoute,
    QuietHours,
    rank_candidates,
    route_candidates,
)
from nftpulse.domain.rules import (
    AlertSeverity,
    NotificationKind,
    Rule,
    RuleKind,
    RuleState,
    event_cause,
    idempotency_key,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ENTITY = "collection:ethereum:0xbc4c"


def run(rule: Rule, values: list[object], step_s: float = 60.0, first_before: object = None) -> list[bool]:
    """Feed a series through a rule; returns which changes fired."""
    state: RuleState | None = None
    fired = []
    before = first_before if first_before is not None else values[0]
    for i, value in enumerate(values):
        change = MetricChange(
            entity_key=ENTITY,
            metric=rule.metric,
            before=before,
            after=value,
            at=T0 + timedelta(seconds=step_s * i),
        )
        ev = evaluate(rule, state, change)
        state = RuleState.from_dict(ev.state.to_dict())  # stored as JSON between evaluations
        fired.append(ev.fired)
        before = value
    return fired


def test_threshold_fires_once_until_rearmed() -> None:
    rule = Rule(
        id="r", kind=RuleKind.THRESHOLD, metric="trust", level=Decimal(50), rearm=Decimal(55), cooldown_s=0
    )
    # Dithering around 50 alerts once; only going back past 55 re-arms.
    assert run(rule, ["60", "49", "51", "48", "52", "49", "56", "49"]) == [
        False,
        True,
        False,
        False,
        False,
        False,
        False,
        True,
    ]


def test_threshold_severity_and_explanation() -> None:
    rule = Rule(
        id="r", kind=RuleKind.THRESHOLD, metric="trust", level=Decimal(50), critical_level=Decimal(30)
    )
    ev = evaluate(
        rule, None, MetricChange(entity_key=ENTITY, metric="trust", before="62", after="28.5", at=T0)
    )
    assert ev.fired and ev.severity is AlertSeverity.CRITICAL
    assert ev.kind is NotificationKind.TRUST_CHANGE
    assert ev.explanation is not None
    assert (ev.explanation.before, ev.explanation.after, ev.explanation.reason) == (
        "62",
        "28.5",
        "below_level",
    )
    assert ev.explanation.details["level"] == "50"
    ev2 = evaluate(
        rule, None, MetricChange(entity_key=ENTITY, metric="trust", before="62", after=45.0, at=T0)
    )
    assert ev2.severity is AlertSeverity.WARNING


def test_threshold_above() -> None:
    rule = Rule(
        id="r", kind=RuleKind.THRESHOLD, metric="volume", level=Decimal(100), direction="above", cooldown_s=0
    )
    assert run(rule, ["90", "101", "120", "94", "101"]) == [False, True, False, False, True]


def test_cooldown_suppresses_then_fires_when_still_true() -> None:
    rule = Rule(
        id="r", kind=RuleKind.THRESHOLD, metric="trust", level=Decimal(50), rearm=Decimal(55), cooldown_s=600
    )
    # Fire at t=0, re-arm at t=60, cross again at t=120 (inside cooldown: suppressed, stays armed),
    # still below at t=660 (cooldown over): fires.
    state = None
    results = []
    for t, v in [(0, "45"), (60, "56"), (120, "45"), (660, "44")]:
        ev = evaluate(
            rule,
            state,
            MetricChange(
                entity_key=ENTITY, metric="trust", before=None, after=v, at=T0 + timedelta(seconds=t)
            ),
        )
        state = ev.state
        results.append((ev.fired, ev.suppressed))
    assert results == [(True, None), (False, None), (False, "cooldown"), (True, None)]


def test_stale_changes_are_ignored() -> None:
    rule = Rule(id="r", kind=RuleKind.THRESHOLD, metric="trust", level=Decimal(50), cooldown_s=0)
    ev = evaluate(rule, None, MetricChange(entity_key=ENTITY, metric="trust", before="60", after="55", at=T0))
    old = evaluate(
        rule,
        ev.state,
        MetricChange(
            entity_key=ENTITY, metric="trust", before="60", after="10", at=T0 - timedelta(seconds=1)
        ),
    )
    assert not old.fired and old.suppressed == "stale"


def test_relative_change_window_and_hysteresis() -> None:
    rule = Rule(id="r", kind=RuleKind.RELATIVE_CHANGE, metric="floor", pct=0.2, window_s=3600, cooldown_s=0)
    # 10 -> 7.9 is -21 %: fire. Small wiggles around 7.9 never re-fire (window restarts at the alert level,
    # the down side is disarmed until the floor is back 10 % above 7.9).
    assert run(rule, ["10", "9", "7.9", "8.1", "7.8", "8.0", "7.9"]) == [False, False, True] + [False] * 4
    # A second leg down of another 20 % is news again.
    assert run(rule, ["10", "7.9", "7.0", "6.3"]) == [False, True, False, True]


def test_relative_change_outside_window_does_not_fire() -> None:
    rule = Rule(id="r", kind=RuleKind.RELATIVE_CHANGE, metric="floor", pct=0.2, window_s=600, cooldown_s=0)
    # -5 % every 5 minutes: never 20 % within 10 minutes.
    values = [str(10 * 0.95**i) for i in range(12)]
    assert not any(run(rule, values, step_s=300))
    # Same moves every minute: fires.
    assert any(run(rule, values, step_s=60))


def test_relative_change_up_and_critical() -> None:
    rule = Rule(id="r", kind=RuleKind.RELATIVE_CHANGE, metric="floor", pct=0.2, critical_pct=0.5)
    ev = evaluate(
        rule, None, MetricChange(entity_key=ENTITY, metric="floor", before="1.0", after="1.6", at=T0)
    )
    assert ev.fired and ev.explanation and ev.explanation.reason == "moved_up"
    assert ev.severity is AlertSeverity.CRITICAL
    assert ev.magnitude == pytest.approx(3.0)


def test_relative_change_ignores_missing_floor() -> None:
    rule = Rule(id="r", kind=RuleKind.RELATIVE_CHANGE, metric="floor")
    ev = evaluate(
        rule, None, MetricChange(entity_key=ENTITY, metric="floor", before="1.0", after=None, at=T0)
    )
    assert not ev.fired and ev.suppressed == "no_value"


def test_trend_reversal_labels_and_levels() -> None:
    rule = Rule(id="r", kind=RuleKind.TREND_REVERSAL, metric="trend", cooldown_s=0)
    assert run(rule, ["up", "up", "flat", "up", "down", "flat", "down", "up"]) == [
        False,
        False,
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    lvl = Rule(id="r2", kind=RuleKind.TREND_REVERSAL, metric="floor", band=0.01, cooldown_s=0)
    rising = [str(10 + i) for i in range(10)]
    falling = [str(19 - 2 * i) for i in range(8)]
    fired = run(lvl, rising + falling)
    assert fired[:10] == [False] * 10 and sum(fired) == 1


def test_anomaly_score_and_history() -> None:
    rule = Rule(id="r", kind=RuleKind.ANOMALY, metric="anomaly", z=3.5, cooldown_s=0)
    assert run(rule, ["0.5", "4.1", "5.0", "1.0", "3.0", "4.0"]) == [False, True, False, False, False, True]
    assert run(rule, [False, True, True, "normal", "anomalous"]) == [False, True, False, False, True]
    hist = Rule(id="r2", kind=RuleKind.ANOMALY, metric="volume", cooldown_s=0)
    series = ["100", "102", "98", "101", "99", "100", "103", "97", "100", "400", "100"]
    assert run(hist, series) == [False] * 9 + [True, False]


def test_modified_z_matches_definition() -> None:
    hist = [1.0, 2.0, 3.0, 4.0, 100.0]
    # median 3, MAD 1 -> 0.6745 * (10 - 3) / 1
    assert modified_z(10.0, hist) == pytest.approx(0.6745 * 7)
    assert modified_z(5.0, [5.0] * 9) == 0.0
    assert modified_z(6.0, [5.0] * 9) == float("inf")


def test_new_risk_levels_and_findings() -> None:
    rule = Rule(id="r", kind=RuleKind.NEW_RISK, metric="risk", cooldown_s=0)
    # low->medium fires (info), medium->high fires, high->medium->high does not (not re-armed),
    # back to low re-arms, then ->critical fires critical.
    assert run(rule, ["low", "medium", "high", "medium", "high", "low", "critical"]) == [
        False,
        True,
        True,
        False,
        False,
        False,
        True,
    ]
    ev = evaluate(
        rule, None, MetricChange(entity_key=ENTITY, metric="risk", before="high", after="critical", at=T0)
    )
    assert ev.severity is AlertSeverity.CRITICAL and ev.kind is NotificationKind.RISK_CHANGE
    findings = Rule(id="f", kind=RuleKind.NEW_RISK, metric="fraud_findings", cooldown_s=0)
    assert run(findings, [0, 1, 1, 2, 0, 1], first_before=0) == [False, True, False, True, False, True]
    ev = evaluate(
        findings, None, MetricChange(entity_key=ENTITY, metric="fraud_findings", before=0, after=1, at=T0)
    )
    assert ev.kind is NotificationKind.FRAUD_FINDING and ev.severity is AlertSeverity.CRITICAL


def test_rule_metric_mismatch_is_an_error() -> None:
    rule = Rule(id="r", kind=RuleKind.THRESHOLD, metric="trust", level=Decimal(50))
    with pytest.raises(ValueError):
        evaluate(rule, None, MetricChange(entity_key=ENTITY, metric="floor", before="1", after="2", at=T0))


def test_idempotency_key_is_stable_and_unambiguous() -> None:
    a = idempotency_key("u1", "r1", ENTITY, "evt-1")
    assert a == idempotency_key("u1", "r1", ENTITY, "evt-1")
    assert a != idempotency_key("u1", "r1", ENTITY, "evt-2")
    assert idempotency_key("a:b", "c", "e", "x") != idempotency_key("a", "b:c", "e", "x")
    change = MetricChange(entity_key=ENTITY, metric="floor", before="1", after="2", at=T0)
    assert event_cause(change) == event_cause(replace(change))
    assert event_cause(replace(change, cause="evt-9")) == "evt-9"


def test_a_change_without_an_aware_time_is_refused() -> None:
    rule = Rule(id="r", kind=RuleKind.THRESHOLD, metric="trust", level=Decimal(50))
    for at in (None, datetime(2025, 3, 1, 12, 0)):
        with pytest.raises(ValueError, match="timezone-aware"):
            evaluate(rule, None, MetricChange(ENTITY, "trust", "60", "40", at=at))


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.decimals(min_value=0, max_value=100, places=1), min_size=1, max_size=60),
    gaps=st.lists(st.integers(min_value=1, max_value=900), min_size=60, max_size=60),
    cooldown=st.integers(min_value=0, max_value=3600),
)
def test_threshold_properties(values: list[Decimal], gaps: list[int], cooldown: int) -> None:
    """Between two firings the value went back past the re-arm level, and firings respect the cooldown."""
    rule = Rule(
        id="r",
        kind=RuleKind.THRESHOLD,
        metric="trust",
        level=Decimal(50),
        rearm=Decimal(55),
        cooldown_s=cooldown,
    )
    state, at, before = None, T0, values[0]
    fired_at: list[tuple[int, datetime]] = []
    for i, v in enumerate(values):
        at += timedelta(seconds=gaps[i])
        ev = evaluate(
            rule, state, MetricChange(entity_key=ENTITY, metric="trust", before=before, after=v, at=at)
        )
        state, before = ev.state, v
        if ev.fired:
            assert v < 50
            fired_at.append((i, at))
    for (i, t1), (j, t2) in pairwise(fired_at):
        assert (t2 - t1).total_seconds() >= cooldown
        assert any(values[k] >= 55 for k in range(i + 1, j)), "re-fired without re-arming"


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(min_value=1, max_value=2, allow_nan=False), min_size=2, max_size=40))
def test_relative_change_never_fires_on_small_moves(values: list[float]) -> None:
    """Any series that never leaves a ±9 % band around its start can never trigger a 20 % rule."""
    base = values[0]
    series = [str(base * (1 + 0.09 * ((v - 1.5) / 0.5))) for v in values]
    rule = Rule(id="r", kind=RuleKind.RELATIVE_CHANGE, metric="floor", pct=0.2, cooldown_s=0)
    assert not any(run(rule, series))


# -- quiet hours, budget, routing ------------------------------------------------------------------


def test_quiet_hours_wrap_midnight_in_local_time() -> None:
    q = QuietHours(start=time(22, 0), end=time(7, 0), tz="Europe/Berlin")
    berlin = ZoneInfo("Europe/Berlin")
    assert q.is_quiet(datetime(2025, 1, 10, 23, 30, tzinfo=berlin))
    assert q.is_quiet(datetime(2025, 1, 11, 6, 59, tzinfo=berlin))
    assert not q.is_quiet(datetime(2025, 1, 11, 7, 0, tzinfo=berlin))
    assert q.ends_at(datetime(2025, 1, 10, 23, 30, tzinfo=berlin)) == datetime(
        2025, 1, 11, 7, 0, tzinfo=berlin
    )
    night = datetime(2025, 1, 10, 23, 30, tzinfo=berlin)
    assert q.blocks(AlertSeverity.CRITICAL, night)
    assert not q.model_copy(update={"allow_critical": True}).blocks(AlertSeverity.CRITICAL, night)
    assert q.model_copy(update={"allow_critical": True}).blocks(AlertSeverity.WARNING, night)


@settings(max_examples=200, deadline=None)
@given(
    now=st.datetimes(
        min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
    ),
    start=st.times(),
    end=st.times(),
    tz=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]),
)
def test_quiet_hours_end_is_first_non_quiet_instant(now: datetime, start: time, end: time, tz: str) -> None:
    q = QuietHours(start=start, end=end, tz=tz)
    until = q.ends_at(now)
    assert until >= now
    assert not q.is_quiet(until)
    if q.is_quiet(now):
        # Nothing earlier than a minute before the end is already outside the window.
        probe = until - timedelta(minutes=1)
        if probe > now:
            assert (
                q.is_quiet(probe)
                or probe.astimezone(ZoneInfo(tz)).utcoffset() != until.astimezone(ZoneInfo(tz)).utcoffset()
            )


def _cand(key: str, sev: AlertSeverity, exposure: str = "0", magnitude: float = 1.0) -> Candidate:
    return Candidate(
        idempotency_key=key,
        kind=NotificationKind.PRICE_MOVEMENT,
        severity=sev,
        entity_key=ENTITY,
        at=T0,
        exposure=Decimal(exposure),
        magnitude=magnitude,
    )


def test_budget_spans_kinds_and_ranks_by_exposure() -> None:
    prefs = DeliveryPreferences(hourly_budget=2)
    cands = [
        _cand("small", AlertSeverity.WARNING, "1"),
        _cand("big", AlertSeverity.WARNING, "50"),
        _cand("mid", AlertSeverity.INFO, "10"),
        _cand("crit", AlertSeverity.CRITICAL, "0"),
        _cand("big2", AlertSeverity.WARNING, "20"),
    ]
    decisions, budget = route_candidates(cands, prefs, None, T0)
    routes = {d.candidate.idempotency_key: d.route for d in decisions}
    # Critical first (never held back), then the largest exposure takes the last slot; the rest digest.
    assert routes == {
        "crit": DeliveryRoute.NOW,
        "big": DeliveryRoute.NOW,
        "big2": DeliveryRoute.DIGEST,
        "small": DeliveryRoute.DIGEST,
        "mid": DeliveryRoute.DIGEST,
    }
    assert len(budget.sent) == 2
    # Later within the hour the budget is still used up; after an hour it is free again.
    again, _ = route_candidates(
        [_cand("x", AlertSeverity.WARNING)], prefs, budget, T0 + timedelta(minutes=30)
    )
    assert again[0].route is DeliveryRoute.DIGEST and again[0].reason == "budget"
    later, _ = route_candidates(
        [_cand("x", AlertSeverity.WARNING)], prefs, budget, T0 + timedelta(minutes=61)
    )
    assert later[0].route is DeliveryRoute.NOW


def test_routing_in_quiet_hours() -> None:
    q = QuietHours(start=time(22, 0), end=time(7, 0), tz="UTC", allow_critical=False)
    night = datetime(2025, 3, 1, 23, 0, tzinfo=UTC)
    decisions, _ = route_candidates(
        [_cand("c", AlertSeverity.CRITICAL), _cand("w", AlertSeverity.WARNING)],
        DeliveryPreferences(quiet_hours=q),
        BudgetState(),
        night,
    )
    by = {d.candidate.idempotency_key: d for d in decisions}
    assert by["c"].route is DeliveryRoute.DEFER and by["c"].not_before == datetime(
        2025, 3, 2, 7, 0, tzinfo=UTC
    )
    assert by["w"].route is DeliveryRoute.DIGEST
    allowed = DeliveryPreferences(quiet_hours=q.model_copy(update={"allow_critical": True}), has_digest=False)
    decisions, _ = route_candidates(
        [_cand("c", AlertSeverity.CRITICAL), _cand("w", AlertSeverity.WARNING)], allowed, None, night
    )
    by = {d.candidate.idempotency_key: d for d in decisions}
    assert by["c"].route is DeliveryRoute.NOW and by["c"].reason == "critical_breakthrough"
    assert by["w"].route is DeliveryRoute.DEFER


def test_rank_order() -> None:
    ranked = rank_candidates(
        [
            _cand("a", AlertSeverity.INFO, "100"),
            _cand("b", AlertSeverity.WARNING, "1"),
            _cand("c", AlertSeverity.WARNING, "5", 0.5),
            _cand("d", AlertSeverity.WARNING, "5", 2),
        ]
    )
    # The user's exposure first: a small alert about a large position outranks a loud one about little.
    assert [c.idempotency_key for c in ranked] == ["a", "d", "c", "b"]
    # Without exposure (nothing held), severity decides, then magnitude.
    flat = rank_candidates(
        [
            _cand("info", AlertSeverity.INFO, "0", 9),
            _cand("warn-small", AlertSeverity.WARNING, "0", 1),
            _cand("crit", AlertSeverity.CRITICAL, "0", 1),
            _cand("warn-big", AlertSeverity.WARNING, "0", 3),
        ]
    )
    assert [c.idempotency_key for c in flat] == ["crit", "warn-big", "warn-small", "info"]


def test_budget_slots_go_to_criticals_then_exposure() -> None:
    """Criticals go out whatever the budget says, so they take slots first; the rest by exposure."""
    prefs = DeliveryPreferences(hourly_budget=2)
    cands = [
        _cand("big-info", AlertSeverity.INFO, "80"),
        _cand("crit", AlertSeverity.CRITICAL, "0"),
        _cand("mid-warn", AlertSeverity.WARNING, "30"),
        _cand("none-warn", AlertSeverity.WARNING, "0"),
    ]
    decisions, budget = route_candidates(cands, prefs, None, T0)
    assert [(d.candidate.idempotency_key, d.route) for d in decisions] == [
        ("big-info", DeliveryRoute.NOW),
        ("mid-warn", DeliveryRoute.DIGEST),
        ("crit", DeliveryRoute.NOW),
        ("none-warn", DeliveryRoute.DIGEST),
    ]
    assert len(budget.sent) == 2


@pytest.mark.parametrize(
    "rule",
    [
        Rule(id="r", kind=RuleKind.RELATIVE_CHANGE, metric="floor", pct=0.1, window_s=3600, cooldown_s=0),
        Rule(id="a", kind=RuleKind.ANOMALY, metric="volume", cooldown_s=0),
    ],
)
def test_evaluate_leaves_the_given_state_as_it_was(rule: Rule) -> None:
    """Detection shares one evaluation among watchers in the same state, so evaluate must not change the
    state it is given, windows and histories included (it copies them instead of deep-copying)."""
    state: RuleState | None = None
    for i, value in enumerate(["10", "9.5", "12", "8", "8.5", "30"]):
        change = MetricChange(
            entity_key=ENTITY, metric=rule.metric, before="10", after=value, at=T0 + timedelta(minutes=i)
        )
        snapshot = None if state is None else state.to_dict()
        first = evaluate(rule, state, change)
        again = evaluate(rule, state, change)
        assert (None if state is None else state.to_dict()) == snapshot
        assert first.state.to_dict() == again.state.to_dict() and first.fired == again.fired
        state = first.state
    assert state is not None and (state.window_min or state.history)
