"""Per-user significance rules: the notification vocabulary (severities, rule and notification kinds,
channels), the rules and the state they keep, and the idempotency key of a firing. Evaluating a rule on
a change is ``domain/evaluation.py``; where a firing goes then (budget, quiet hours, ranking) is
``domain/routing.py``. Pure: stdlib and pydantic, no I/O, no clock reads.

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

A rule watches one metric by name: a collection's headline metrics (``floor``, ``twap_floor``, ``volume``,
``sales_count``, ``holders_count``, ``best_offer``, ``attention``, ``trust``, ``risk``, ...) or an NFT's
(``owner``, ``trust``, ``risk``, ``price_estimate``, ``rarity_rank``, ``rarity_score``).

Every rule also has a cooldown: a firing inside ``cooldown_s`` of the previous one is suppressed (and
reported as such, so the caller can log it).
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

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
    WALLET_ACTIVITY = "wallet_activity"
    #: An earlier notification's cause was retracted (``activities.notify.corrections``).
    CORRECTION = "correction"


#: Ordered risk labels as the collection engine emits them.
RISK_LEVELS: tuple[str, ...] = ("low", "medium", "high", "critical")


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


#: Bounds of rule parameters: durations up to a year, relative moves up to 1,000 times (100,000 %), z-scores
#: up to 1,000, levels of at most 30 digits (18 after the point).
MAX_SECONDS = 366 * 86400.0
MAX_RATIO = 1000.0
MAX_Z = 1000.0
Level = Annotated[Decimal, Field(allow_inf_nan=False, max_digits=30, decimal_places=18)]


class Rule(BaseModel):
    """A user's rule on one metric. Parameters not used by the rule's kind are ignored.

    ``severity`` is the base severity; ``critical_*`` parameters upgrade a firing to critical.
    """

    # Every number finite (no Infinity or NaN, which Python's JSON parser reads) and bounded: the
    # detectors do arithmetic on them for every change of the metric.
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    id: str = Field(min_length=1, max_length=64)
    kind: RuleKind
    metric: str = Field(min_length=1, max_length=64)
    severity: AlertSeverity | None = Field(
        default=None, description="base severity; None: the kind's default"
    )
    cooldown_s: float = Field(default=3600.0, ge=0, le=MAX_SECONDS)
    # threshold
    level: Level | None = None
    direction: Literal["below", "above"] = "below"
    rearm: Level | None = Field(default=None, description="level to move back past; default level ± 5 %")
    critical_level: Level | None = None
    # relative_change
    pct: float = Field(default=0.20, gt=0, le=MAX_RATIO)
    window_s: float = Field(default=3600.0, gt=0, le=MAX_SECONDS)
    rearm_pct: float | None = Field(default=None, gt=0, le=MAX_RATIO, description="default pct / 2")
    critical_pct: float | None = Field(default=None, gt=0, le=MAX_RATIO)
    # trend_reversal
    band: float = Field(
        default=0.0, ge=0, le=MAX_RATIO, description="dead band: slope or relative EWMA gap to register"
    )
    fast_alpha: float = Field(default=0.5, gt=0, le=1)
    slow_alpha: float = Field(default=0.1, gt=0, le=1)
    # anomaly
    z: float = Field(default=3.5, gt=0, le=MAX_Z)
    rearm_z: float | None = Field(default=None, ge=0, le=MAX_Z, description="default z - 1")
    critical_z: float | None = Field(default=None, gt=0, le=MAX_Z)
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


# -- alerts without a rule ----------------------------------------------------------------------------

#: The metric of a fraud finding's change (opened, updated or resolved): every subscription watching the
#: finding's subject (its NFT or collection, the collection's creator, a wallet it names or the wallet
#: holding the NFT) is notified of it without a rule of its own.
FINDING_METRIC = "finding"
#: The metric of a wallet's trade, listing or transfer: notified to the wallet's watchers without a rule.
ACTIVITY_METRIC = "activity"
#: Metrics no rule evaluates: detection notifies them to the watchers directly.
WATCH_METRICS = frozenset({FINDING_METRIC, ACTIVITY_METRIC})

_FINDING_SEVERITY = {
    "critical": AlertSeverity.CRITICAL,
    "high": AlertSeverity.WARNING,
    "medium": AlertSeverity.WARNING,
    "low": AlertSeverity.INFO,
}


def finding_alert_severity(severity: str, status: str) -> AlertSeverity:
    """How loud a finding's notification is: by the finding's severity while open; a resolution is news
    but never urgent."""
    if status == "resolved":
        return AlertSeverity.INFO
    return _FINDING_SEVERITY.get(severity, AlertSeverity.WARNING)


def watch_rule(metric: str) -> Rule:
    """The rule a watch-wide alert (a finding, a wallet's activity) is recorded under."""
    return Rule(id=f"watch:{metric}", kind=RuleKind.NEW_RISK, metric=metric, cooldown_s=0)


# -- kind mapping and idempotency --------------------------------------------------------------------

_METRIC_KIND = {
    "trust": NotificationKind.TRUST_CHANGE,
    "trust_score": NotificationKind.TRUST_CHANGE,
    "floor": NotificationKind.PRICE_MOVEMENT,
    "price_estimate": NotificationKind.PRICE_MOVEMENT,
    "twap": NotificationKind.PRICE_MOVEMENT,
    "best_offer": NotificationKind.PRICE_MOVEMENT,
    # A collection's social attention (``domain.attention``): news about the market, not a price.
    "attention": NotificationKind.MARKET_UPDATE,
    "risk": NotificationKind.RISK_CHANGE,
    "fraud_finding": NotificationKind.FRAUD_FINDING,
    "fraud_findings": NotificationKind.FRAUD_FINDING,
    FINDING_METRIC: NotificationKind.FRAUD_FINDING,
    ACTIVITY_METRIC: NotificationKind.WALLET_ACTIVITY,
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
