"""Per-user significance rules: pure detectors, hysteresis and cooldowns. Where a firing goes then (budget,
quiet hours, ranking) is ``domain/routing.py``.

Everything here is pure (stdlib + pydantic, no I/O, no clock reads): the caller passes the metric change,
the rule and the rule's previous state, and stores the returned state. That keeps the detectors
deterministic inside Temporal workflows and replayable from the event log.

The five rule kinds:

``threshold``
    An absolute level (``trust`` below 50). Fires when the value is past the level and the rule is armed;
    re-arms only once the value has moved back past ``rearm`` (hysteresis), so a value dithering around
    the level alerts once.
``relative_change``
    The value moved at least ``pct`` (e.g. 0.20) up or down within ``window_s``, measured against the
    window's extreme. After firing, that direction is disarmed until the value comes back by ``rearm_pct``
    from the alert level, or moves a further full ``pct`` beyond it (a second leg of a crash is news).
``trend_reversal``
    The direction of a trend flips (up to down or down to up). Direction comes from a ``trend`` metric
    (labels such as ``"up"`` or a signed slope) or, for level metrics such as ``floor``, from a fast/slow
    EWMA crossing. A dead band (``band``) is the hysteresis: small wiggles register no direction.
``anomaly``
    A modified z-score (0.6745·(x - median)/MAD) at or past ``z`` (3.5 by default). For the engine's
    ``anomaly`` metric the value already is a score (or a flag); for other metrics the rule keeps a short
    history. Re-arms once the score is back under ``rearm_z``.
``new_risk``
    Risk rises (``low`` < ``medium`` < ``high`` < ``critical``) above the last level alerted, or a count of
    open fraud findings grows. Re-arms once risk falls back to ``rearm_level``.

Every rule also has a cooldown: a firing inside ``cooldown_s`` of the previous one is suppressed (and
reported as such, so the caller can log it).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nftpulse.domain.changes import MetricChange

# -- vocabulary -------------------------------------------------------------------------------------


class AlertSeverity(StrEnum):
    """How loud a notification is. Distinct from the event schema's ``Severity`` (finding severity)."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for info, 1 for warning, 2 for critical: for ordering and comparisons."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {AlertSeverity.INFO: 0, AlertSeverity.WARNING: 1, AlertSeverity.CRITICAL: 2}


def max_severity(*severities: AlertSeverity) -> AlertSeverity:
    """The loudest of the given severities (info when none is given)."""
    return max(severities, key=lambda s: s.rank, default=AlertSeverity.INFO)


class RuleKind(StrEnum):
    """The five detectors."""

    THRESHOLD = "threshold"
    RELATIVE_CHANGE = "relative_change"
    TREND_REVERSAL = "trend_reversal"
    ANOMALY = "anomaly"
    NEW_RISK = "new_risk"


#: The channels a notification can go out on; ``channels/`` implements one provider for each.
ChannelName = Literal["in_app", "email", "sms", "push", "webhook"]


class NotificationKind(StrEnum):
    """What a notification is about; selects the template family."""

    TRUST_CHANGE = "trust_change"
    PRICE_MOVEMENT = "price_movement"
    RISK_CHANGE = "risk_change"
    FRAUD_FINDING = "fraud_finding"
    MARKET_UPDATE = "market_update"


#: Ordered risk labels as the collection engine emits them.
RISK_LEVELS: tuple[str, ...] = ("low", "medium", "high", "critical")

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


def to_decimal(value: Any) -> Decimal | None:
    """Parse an engine value (Decimal string, int, float, Decimal) into a Decimal; None when not numeric.

    Booleans are deliberately not numbers here: ``True`` is a flag, not 1.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except (InvalidOperation, ValueError):
            return None
        return parsed if parsed.is_finite() else None
    return None


def risk_rank(value: Any) -> int | None:
    """Rank of a risk label (``low`` = 0 … ``critical`` = 3); None for anything else."""
    if isinstance(value, str) and value.strip().lower() in RISK_LEVELS:
        return RISK_LEVELS.index(value.strip().lower())
    return None


# -- inputs -----------------------------------------------------------------------------------------


def change_time(change: MetricChange) -> datetime:
    """The change's data time in UTC: rules order, window and cool down by it, so a change without an
    aware time cannot be evaluated."""
    if change.at is None or change.at.tzinfo is None:
        raise ValueError(f"the change of {change.metric} on {change.entity_key} needs a timezone-aware time")
    return change.at.astimezone(UTC)


class Rule(BaseModel):
    """A user's rule on one metric. Parameters not used by the rule's kind are ignored.

    ``severity`` is the base severity; ``critical_*`` parameters upgrade a firing to critical.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    kind: RuleKind
    metric: str
    severity: AlertSeverity | None = Field(
        default=None, description="base severity; None: the kind's default"
    )
    cooldown_s: float = Field(default=3600.0, ge=0)
    # threshold
    level: Decimal | None = None
    direction: Literal["below", "above"] = "below"
    rearm: Decimal | None = Field(default=None, description="level to move back past; default level ± 5 %")
    critical_level: Decimal | None = None
    # relative_change
    pct: float = Field(default=0.20, gt=0)
    window_s: float = Field(default=3600.0, gt=0)
    rearm_pct: float | None = Field(default=None, gt=0, description="default pct / 2")
    critical_pct: float | None = Field(default=None, gt=0)
    # trend_reversal
    band: float = Field(default=0.0, ge=0, description="dead band: slope or relative EWMA gap to register")
    fast_alpha: float = Field(default=0.5, gt=0, le=1)
    slow_alpha: float = Field(default=0.1, gt=0, le=1)
    # anomaly
    z: float = Field(default=3.5, gt=0)
    rearm_z: float | None = Field(default=None, ge=0, description="default z - 1")
    critical_z: float | None = Field(default=None, gt=0)
    # new_risk
    min_level: str = "medium"
    rearm_level: str = "low"

    @field_validator("min_level", "rearm_level")
    @classmethod
    def _risk_label(cls, v: str) -> str:
        if risk_rank(v) is None:
            raise ValueError(f"must be one of {', '.join(RISK_LEVELS)}")
        return v.lower()

    def applies_to(self, change: MetricChange) -> bool:
        """Whether this rule watches the changed metric (entity matching is the subscription's job)."""
        return change.metric == self.metric


class RuleState(BaseModel):
    """A rule's memory between evaluations. Small and JSON-serialisable: ``model_dump(mode="json")``.

    One shape for all kinds keeps storage simple; each detector uses only its own fields.
    """

    armed: bool = True
    armed_up: bool = True
    armed_down: bool = True
    last_at: datetime | None = None
    last_fired_at: datetime | None = None
    fired_count: int = 0
    #: relative_change: value at the last firing, per direction (Decimal strings).
    anchor_up: str | None = None
    anchor_down: str | None = None
    #: relative_change: monotonic deques of ``[epoch_seconds, value]`` for the sliding min and max.
    window_min: list[tuple[float, float]] = Field(default_factory=list)
    window_max: list[tuple[float, float]] = Field(default_factory=list)
    #: trend_reversal: confirmed direction (-1, 0, +1) and EWMAs for level metrics.
    direction: int = 0
    ema_fast: float | None = None
    ema_slow: float | None = None
    #: anomaly: recent values for median/MAD on plain metrics.
    history: list[float] = Field(default_factory=list)
    #: new_risk: highest rank (or findings count) already alerted since the last re-arm.
    notified_rank: int = -1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for storage."""
        return self.model_dump(mode="json")

    def copy_for_update(self) -> RuleState:
        """A copy whose changes leave this state as it is: the lists copied, their items (tuples and
        numbers) shared. A deep copy was half of a rule evaluation's time."""
        return self.model_copy(
            update={
                "window_min": list(self.window_min),
                "window_max": list(self.window_max),
                "history": list(self.history),
            }
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> RuleState:
        """Inverse of :meth:`to_dict`; ``None`` gives a fresh state."""
        return cls() if raw is None else cls.model_validate(raw)


class Explanation(BaseModel):
    """Why a rule fired (or was suppressed): attached to the notification as its evidence."""

    model_config = ConfigDict(frozen=True)

    rule_id: str
    rule_kind: RuleKind
    entity_key: str
    metric: str
    before: Any
    after: Any
    at: datetime
    reason: str = Field(description="machine-readable reason, e.g. below_level, moved_down, cooldown")
    details: dict[str, str] = Field(default_factory=dict, description="figures behind the reason")


class Evaluation(BaseModel):
    """The result of one rule evaluation. ``state`` must be stored whether or not it fired."""

    model_config = ConfigDict(frozen=True)

    fired: bool
    severity: AlertSeverity | None = None
    kind: NotificationKind
    state: RuleState
    explanation: Explanation | None = None
    suppressed: Literal["cooldown", "stale", "disarmed", "no_value"] | None = None
    magnitude: float = Field(default=0.0, description="1.0 = just past the trigger; sums into digest flushes")


# -- kind mapping and idempotency --------------------------------------------------------------------

_METRIC_KIND = {
    "trust": NotificationKind.TRUST_CHANGE,
    "trust_score": NotificationKind.TRUST_CHANGE,
    "floor": NotificationKind.PRICE_MOVEMENT,
    "price_estimate": NotificationKind.PRICE_MOVEMENT,
    "twap": NotificationKind.PRICE_MOVEMENT,
    "risk": NotificationKind.RISK_CHANGE,
    "fraud_finding": NotificationKind.FRAUD_FINDING,
    "fraud_findings": NotificationKind.FRAUD_FINDING,
}


def notification_kind(rule: Rule, metric: str | None = None) -> NotificationKind:
    """The template family for a rule: by metric, falling back to a market update."""
    return _METRIC_KIND.get(metric or rule.metric, NotificationKind.MARKET_UPDATE)


def event_cause(change: MetricChange) -> str:
    """The cause that makes one firing distinct: the event id(s) if known, else metric, value and time."""
    if change.cause:
        return change.cause
    return f"{change.metric}:{change.after!s}:{change_time(change).isoformat()}"


def idempotency_key(user_id: str, rule_id: str, entity_key: str, cause: str) -> str:
    """Stable key for one notification: retries and replays of the same cause map to the same key.

    The parts are length-prefixed before hashing so that ``("a:b", "c")`` and ``("a", "b:c")`` differ.
    """
    h = hashlib.sha256()
    for part in (user_id, rule_id, entity_key, cause):
        raw = part.encode()
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return "ntf_" + h.hexdigest()[:40]


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
