"""Rule evaluation: the five detectors (one per ``RuleKind``; what each watches for is described in
``domain/rules.py``), hysteresis and cooldowns.

Pure (stdlib + pydantic, no I/O, no clock reads): the caller passes the metric change, the rule and the
rule's previous state, and stores the returned state, so evaluation is deterministic and replayable from
the event log. Changes older than the last one seen are ignored (``suppressed="stale"``); a firing inside
``cooldown_s`` of the previous one is suppressed and reported as such.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal

from nftpulse.domain.changes import MetricChange
from nftpulse.domain.rules import (
    RISK_LEVELS,
    AlertSeverity,
    Evaluation,
    Explanation,
    Rule,
    RuleKind,
    RuleState,
    change_time,
    max_severity,
    notification_kind,
    risk_rank,
    to_decimal,
)

_TREND_WORDS = {
    "up": 1,
    "rising": 1,
    "bullish": 1,
    "increasing": 1,
    "down": -1,
    "falling": -1,
    "bearish": -1,
    "decreasing": -1,
    "flat": 0,
    "sideways": 0,
    "neutral": 0,
    "stable": 0,
}
_TRUE_WORDS = {"true", "yes", "anomaly", "anomalous", "outlier", "1"}
_FALSE_WORDS = {"false", "no", "normal", "none", "0", ""}

#: Bounded state: a rule's window never grows past this many samples, whatever the event rate.
MAX_WINDOW_SAMPLES = 256
#: History kept by anomaly rules on plain metrics (median/MAD need a few dozen points, not more).
ANOMALY_HISTORY = 48
ANOMALY_MIN_HISTORY = 8


# -- evaluation -------------------------------------------------------------------------------------


def evaluate(rule: Rule, state: RuleState | None, change: MetricChange) -> Evaluation:
    """Run ``rule`` on ``change`` given the rule's previous ``state``; never mutates its inputs.

    Changes older than the last one seen are ignored (``suppressed="stale"``): replays and out-of-order
    deliveries must not re-trigger an alert.
    """
    if not rule.applies_to(change):
        raise ValueError(f"rule {rule.id} watches {rule.metric!r}, not {change.metric!r}")
    at = change_time(change)
    prev = state.copy_for_update() if state is not None else RuleState()
    kind = notification_kind(rule, change.metric)
    if prev.last_at is not None and at < prev.last_at:
        return Evaluation(fired=False, kind=kind, state=prev, suppressed="stale")
    detector = _DETECTORS[rule.kind]
    hit = detector(rule, prev, change)
    prev.last_at = at
    if hit is None:
        return Evaluation(fired=False, kind=kind, state=prev, suppressed=_quiet_reason(prev, change))
    reason, severity, details, magnitude, commit = hit
    explanation = Explanation(
        rule_id=rule.id,
        rule_kind=rule.kind,
        entity_key=change.entity_key,
        metric=change.metric,
        before=change.before,
        after=change.after,
        at=at,
        reason=reason,
        details=details,
    )
    if prev.last_fired_at is not None and at - prev.last_fired_at < timedelta(seconds=rule.cooldown_s):
        # The condition holds but the user heard about this rule moments ago. The detector's
        # disarming is not applied, so the rule fires once the cooldown is over if the condition holds.
        return Evaluation(
            fired=False,
            kind=kind,
            state=prev,
            explanation=explanation,
            suppressed="cooldown",
            magnitude=magnitude,
        )
    commit(prev)
    prev.last_fired_at = at
    prev.fired_count += 1
    return Evaluation(
        fired=True, severity=severity, kind=kind, state=prev, explanation=explanation, magnitude=magnitude
    )


def _quiet_reason(state: RuleState, change: MetricChange) -> Literal["no_value", "disarmed"] | None:
    if change.after is None:
        return "no_value"
    if not (state.armed and state.armed_up and state.armed_down):
        return "disarmed"
    return None


# A detector returns None (nothing to say) or (reason, severity, details, magnitude, commit) where
# ``commit`` applies the firing's own state changes (disarm, reset window); it runs only if the firing
# survives the cooldown check.
_Hit = tuple[str, AlertSeverity, dict[str, str], float, Any]


def _base(rule: Rule, default: AlertSeverity) -> AlertSeverity:
    return rule.severity or default


def _noop(_: RuleState) -> None:
    return None


def _threshold(rule: Rule, st: RuleState, ch: MetricChange) -> _Hit | None:
    if rule.level is None:
        raise ValueError(f"threshold rule {rule.id} needs a level")
    value = to_decimal(ch.after)
    if value is None:
        return None
    level = rule.level
    below = rule.direction == "below"
    rearm = (
        rule.rearm
        if rule.rearm is not None
        else level + (abs(level) * Decimal("0.05") or Decimal("0.05")) * (1 if below else -1)
    )
    past = value < level if below else value > level
    if not st.armed:
        back = value >= rearm if below else value <= rearm
        if back:
            st.armed = True
        return None
    if not past:
        return None
    severity = _base(rule, AlertSeverity.WARNING)
    if rule.critical_level is not None and (
        value <= rule.critical_level if below else value >= rule.critical_level
    ):
        severity = AlertSeverity.CRITICAL
    width = abs(rearm - level) or abs(level) or Decimal(1)
    magnitude = 1.0 + float(abs(value - level) / width)

    def commit(s: RuleState) -> None:
        s.armed = False

    details = {"level": str(level), "rearm": str(rearm), "direction": rule.direction, "value": str(value)}
    return ("below_level" if below else "above_level", severity, details, magnitude, commit)


def _window_push(st: RuleState, ts: float, value: float, window_s: float) -> None:
    """Sliding-window min/max with two monotonic deques: O(1) amortised, bounded by the window."""
    while st.window_min and st.window_min[-1][1] >= value:
        st.window_min.pop()
    st.window_min.append((ts, value))
    while st.window_max and st.window_max[-1][1] <= value:
        st.window_max.pop()
    st.window_max.append((ts, value))
    horizon = ts - window_s
    for dq in (st.window_min, st.window_max):
        while len(dq) > 1 and (dq[0][0] < horizon or len(dq) > MAX_WINDOW_SAMPLES):
            dq.pop(0)


def _relative_change(rule: Rule, st: RuleState, ch: MetricChange) -> _Hit | None:
    value_d = to_decimal(ch.after)
    if value_d is None:
        return None
    value = float(value_d)
    ts = change_time(ch).timestamp()
    before = to_decimal(ch.before)
    if not st.window_min and before is not None:
        # First sight of this metric: the before value is the reference for this very move.
        _window_push(st, ts, float(before), rule.window_s)
    _window_push(st, ts, value, rule.window_s)
    rearm_pct = rule.rearm_pct if rule.rearm_pct is not None else rule.pct / 2
    # Hysteresis: a disarmed direction re-arms when the value comes back from the alert level.
    if not st.armed_down and st.anchor_down is not None and value >= float(st.anchor_down) * (1 + rearm_pct):
        st.armed_down, st.anchor_down = True, None
    if not st.armed_up and st.anchor_up is not None and value <= float(st.anchor_up) * (1 - rearm_pct):
        st.armed_up, st.anchor_up = True, None
    low, high = st.window_min[0][1], st.window_max[0][1]
    down = (value - high) / high if high > 0 else 0.0
    up = (value - low) / low if low > 0 else 0.0
    candidates: list[tuple[str, float, float]] = []
    if down <= -rule.pct:
        extended = st.anchor_down is not None and value <= float(st.anchor_down) * (1 - rule.pct)
        if st.armed_down or extended:
            candidates.append(("moved_down", down, high))
    if up >= rule.pct:
        extended = st.anchor_up is not None and value >= float(st.anchor_up) * (1 + rule.pct)
        if st.armed_up or extended:
            candidates.append(("moved_up", up, low))
    if not candidates:
        return None
    reason, move, reference = max(candidates, key=lambda c: abs(c[1]))
    severity = _base(rule, AlertSeverity.WARNING)
    if rule.critical_pct is not None and abs(move) >= rule.critical_pct:
        severity = AlertSeverity.CRITICAL

    def commit(s: RuleState) -> None:
        # Restart the window at the alert level: the next alert needs a fresh move of the full size.
        s.window_min, s.window_max = [(ts, value)], [(ts, value)]
        if reason == "moved_down":
            s.armed_down, s.anchor_down = False, str(value_d)
        else:
            s.armed_up, s.anchor_up = False, str(value_d)

    details = {
        "change_pct": f"{move:.4f}",
        "reference": _fmt(reference),
        "value": str(value_d),
        "window_s": _fmt(rule.window_s),
        "pct": _fmt(rule.pct),
    }
    return (reason, severity, details, abs(move) / rule.pct, commit)


def _direction_of(value: Any, band: float) -> int | None:
    if isinstance(value, str) and value.strip().lower() in _TREND_WORDS:
        return _TREND_WORDS[value.strip().lower()]
    num = to_decimal(value)
    if num is None:
        return None
    f = float(num)
    return 1 if f > band else -1 if f < -band else 0


def _trend_reversal(rule: Rule, st: RuleState, ch: MetricChange) -> _Hit | None:
    if ch.metric == "trend":
        direction = _direction_of(ch.after, rule.band)
        if direction is None:
            return None
        detail = {"signal": str(ch.after)}
    else:
        num = to_decimal(ch.after)
        if num is None:
            return None
        x = float(num)
        if st.ema_fast is None or st.ema_slow is None:
            seed = to_decimal(ch.before)
            st.ema_fast = st.ema_slow = float(seed) if seed is not None else x
        st.ema_fast += rule.fast_alpha * (x - st.ema_fast)
        st.ema_slow += rule.slow_alpha * (x - st.ema_slow)
        gap = (st.ema_fast - st.ema_slow) / abs(st.ema_slow) if st.ema_slow else 0.0
        direction = 1 if gap > rule.band else -1 if gap < -rule.band else 0
        detail = {"ema_fast": _fmt(st.ema_fast), "ema_slow": _fmt(st.ema_slow), "gap": f"{gap:.4f}"}
    previous = st.direction
    if direction == 0:
        # Inside the dead band: keep the last confirmed direction (that is the hysteresis).
        return None
    if previous == 0 or direction == previous:
        st.direction = direction
        return None
    reason = "turned_up" if direction > 0 else "turned_down"

    def commit(s: RuleState) -> None:
        s.direction = direction

    detail["from"] = "up" if previous > 0 else "down"
    detail["to"] = "up" if direction > 0 else "down"
    return (reason, _base(rule, AlertSeverity.INFO), detail, 1.0, commit)


def modified_z(value: float, history: Sequence[float]) -> float:
    """Iglewicz-Hoaglin modified z-score of ``value`` against ``history``.

    When the MAD is zero (more than half the history equal) the mean absolute deviation scaled by
    1.253314 stands in, as is usual; if that is zero too, any different value is infinitely far.
    """
    med = statistics.median(history)
    mad = statistics.median(abs(x - med) for x in history)
    if mad > 0:
        return 0.6745 * (value - med) / mad
    mean_ad = statistics.fmean(abs(x - med) for x in history)
    if mean_ad > 0:
        return (value - med) / (1.253314 * mean_ad)
    return 0.0 if value == med else math.copysign(math.inf, value - med)


def _anomaly(rule: Rule, st: RuleState, ch: MetricChange) -> _Hit | None:
    rearm_z = rule.rearm_z if rule.rearm_z is not None else max(rule.z - 1.0, 0.0)
    score: float | None
    if ch.metric == "anomaly":
        raw = ch.after
        if isinstance(raw, bool):
            score = math.inf if raw else 0.0
        elif isinstance(raw, str) and raw.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            score = math.inf if raw.strip().lower() in _TRUE_WORDS else 0.0
        else:
            num = to_decimal(raw)
            score = None if num is None else float(num)
    else:
        num = to_decimal(ch.after)
        if num is None:
            return None
        x = float(num)
        score = modified_z(x, st.history) if len(st.history) >= ANOMALY_MIN_HISTORY else None
        st.history = [*st.history, x][-ANOMALY_HISTORY:]
    if score is None:
        return None
    if not st.armed:
        if abs(score) < rearm_z:
            st.armed = True
        return None
    if abs(score) < rule.z:
        return None
    severity = _base(rule, AlertSeverity.WARNING)
    if rule.critical_z is not None and abs(score) >= rule.critical_z:
        severity = AlertSeverity.CRITICAL

    def commit(s: RuleState) -> None:
        s.armed = False

    magnitude = min(abs(score) / rule.z, 10.0)
    details = {"score": _fmt(score), "z": _fmt(rule.z), "rearm_z": _fmt(rearm_z)}
    return ("spike" if score > 0 else "drop", severity, details, magnitude, commit)


_RISK_SEVERITY = {
    3: AlertSeverity.CRITICAL,
    2: AlertSeverity.WARNING,
    1: AlertSeverity.INFO,
    0: AlertSeverity.INFO,
}


def _new_risk(rule: Rule, st: RuleState, ch: MetricChange) -> _Hit | None:
    after_rank = risk_rank(ch.after)
    if after_rank is not None:
        before_rank = risk_rank(ch.before)
        min_rank = risk_rank(rule.min_level) or 0
        rearm_rank = risk_rank(rule.rearm_level) or 0
        if after_rank <= rearm_rank:
            st.notified_rank = -1
        rose = before_rank is None or after_rank > before_rank
        if not (rose and after_rank >= min_rank and after_rank > st.notified_rank):
            return None
        severity = max_severity(_RISK_SEVERITY[after_rank], rule.severity or AlertSeverity.INFO)
        magnitude = float(after_rank - (before_rank if before_rank is not None else 0)) or 1.0

        def commit_rank(s: RuleState) -> None:
            s.notified_rank = after_rank

        details = {"from": str(ch.before), "to": RISK_LEVELS[after_rank]}
        return ("risk_rose", severity, details, magnitude, commit_rank)
    # A count of open fraud findings: any growth past what was alerted is a new finding.
    count = to_decimal(ch.after)
    if count is None:
        return None
    n = int(count)
    if n <= 0:
        st.notified_rank = -1
        return None
    before_n = to_decimal(ch.before)
    prev_n = int(before_n) if before_n is not None else 0
    if n <= prev_n or n <= st.notified_rank:
        return None

    def commit_count(s: RuleState) -> None:
        s.notified_rank = n

    details = {"findings_before": str(prev_n), "findings_after": str(n)}
    return ("new_finding", _base(rule, AlertSeverity.CRITICAL), details, float(n - prev_n), commit_count)


_DETECTORS = {
    RuleKind.THRESHOLD: _threshold,
    RuleKind.RELATIVE_CHANGE: _relative_change,
    RuleKind.TREND_REVERSAL: _trend_reversal,
    RuleKind.ANOMALY: _anomaly,
    RuleKind.NEW_RISK: _new_risk,
}


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.6g}"
