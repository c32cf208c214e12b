"""Where a rule's firing goes: out now, into the user's digest, or held until quiet hours end. One hourly
budget across all kinds, ranked by the user's exposure (``domain.exposure``), quiet hours in the user's
time zone, critical alerts first.

Pure (stdlib + pydantic, no I/O, no clock reads): detection routes each user's firings with the user's
stored budget and stores the budget that comes back; workflows use :class:`QuietHours` to move
escalation steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nftpulse.domain.exposure import exposure_order
from nftpulse.domain.rules import AlertSeverity, NotificationKind


def local_instant(day: Any, wall: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock ``wall`` on local date ``day`` in ``tz``.

    A wall time skipped by a DST jump (02:30 on a spring-forward night) is moved forward by the gap, as
    cron and calendar apps do; an ambiguous one (autumn) takes its first occurrence.
    """
    naive = datetime.combine(day, wall.replace(tzinfo=None))
    return naive.replace(tzinfo=tz, fold=0).astimezone(UTC)


class QuietHours(BaseModel):
    """A daily window of local time during which non-critical notifications wait. May wrap midnight."""

    model_config = ConfigDict(frozen=True)

    start: time
    end: time
    tz: str = "UTC"
    allow_critical: bool = Field(default=False, description="critical alerts break through")

    @field_validator("tz")
    @classmethod
    def _zone(cls, v: str) -> str:
        ZoneInfo(v)  # raises for unknown zones
        return v

    @property
    def zone(self) -> ZoneInfo:
        """The user's time zone."""
        return ZoneInfo(self.tz)

    def is_quiet(self, now: datetime) -> bool:
        """Whether ``now`` (aware) falls inside the quiet window in the user's local time."""
        if self.start == self.end:
            return False
        local = now.astimezone(self.zone).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def blocks(self, severity: AlertSeverity, now: datetime) -> bool:
        """Whether a notification of ``severity`` must wait at ``now``."""
        if severity is AlertSeverity.CRITICAL and self.allow_critical:
            return False
        return self.is_quiet(now)

    def ends_at(self, now: datetime) -> datetime:
        """The first instant at or after ``now`` that is outside the window (``now`` itself if not quiet)."""
        if not self.is_quiet(now):
            return now.astimezone(UTC)
        zone = self.zone
        local_day = now.astimezone(zone).date()
        # The end lies today or tomorrow (local); take the first candidate after now that is not quiet.
        for offset in range(3):
            candidate = local_instant(local_day + timedelta(days=offset), self.end, zone)
            if candidate > now and not self.is_quiet(candidate):
                return candidate
        raise AssertionError("quiet hours never end")  # pragma: no cover - start != end excludes it


class BudgetState(BaseModel):
    """Send times (epoch seconds) of the user's notifications within the last hour."""

    sent: list[float] = Field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for storage."""
        return self.model_dump(mode="json")


class DeliveryPreferences(BaseModel):
    """What routing needs to know about the user."""

    model_config = ConfigDict(frozen=True)

    hourly_budget: int = Field(default=10, ge=0, description="notifications per rolling hour, all kinds")
    quiet_hours: QuietHours | None = None
    has_digest: bool = Field(default=True, description="the user has a digest schedule to fall back to")


class Candidate(BaseModel):
    """A notification that a rule produced and that waits for routing."""

    model_config = ConfigDict(frozen=True)

    idempotency_key: str
    kind: NotificationKind
    severity: AlertSeverity
    entity_key: str
    at: datetime
    exposure: Decimal = Field(
        default=Decimal(0), description="value of the user's holding concerned (quote ccy)"
    )
    magnitude: float = 1.0


class DeliveryRoute(StrEnum):
    """Where a candidate goes: out now, into the user's digest, or held until quiet hours end. (Not the
    dispatcher's ``store.models.Route``, which says which workflow applies an event.)"""

    NOW = "now"
    DIGEST = "digest"
    DEFER = "defer"


class RoutingDecision(BaseModel):
    """The route for one candidate; ``not_before`` is set for deferred ones (end of quiet hours)."""

    model_config = ConfigDict(frozen=True)

    candidate: Candidate
    route: DeliveryRoute
    reason: Literal["ok", "quiet_hours", "budget", "critical_breakthrough"]
    not_before: datetime | None = None


def rank_candidates(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Most important first: the user's exposure (``domain.exposure``), falling back to severity, then
    magnitude, then the older one."""
    return sorted(
        candidates,
        key=lambda c: (*exposure_order(c.exposure, c.severity.rank, c.magnitude), c.at, c.idempotency_key),
    )


def route_candidates(
    candidates: Iterable[Candidate], prefs: DeliveryPreferences, budget: BudgetState | None, now: datetime
) -> tuple[list[RoutingDecision], BudgetState]:
    """Route a user's candidates: ranked by exposure, one hourly budget across all kinds, quiet hours.

    - Critical ones go now (counted against the budget but never held back by it), unless quiet hours
      apply and the user did not let critical alerts through: then they wait for the window's end.
    - Non-critical ones in quiet hours go to the digest (or wait for the window's end without a digest).
    - Past the budget, non-critical ones go to the digest; ranking decides who gets the slots.

    Critical ones take their slots first (they go out whatever the budget says), so a large position's
    warning never pushes the budget past what criticals already used; decisions come back in rank order.
    """
    ts = now.timestamp()
    sent = [t for t in (budget.sent if budget else []) if t > ts - 3600.0]
    decided: dict[str, RoutingDecision] = {}
    quiet = prefs.quiet_hours
    ranked = rank_candidates(candidates)
    criticals_first = sorted(ranked, key=lambda c: c.severity is not AlertSeverity.CRITICAL)
    for c in criticals_first:
        critical = c.severity is AlertSeverity.CRITICAL
        if quiet is not None and quiet.is_quiet(now):
            if critical and quiet.allow_critical:
                decided[c.idempotency_key] = RoutingDecision(
                    candidate=c, route=DeliveryRoute.NOW, reason="critical_breakthrough"
                )
                sent.append(ts)
            elif critical or not prefs.has_digest:
                decided[c.idempotency_key] = RoutingDecision(
                    candidate=c,
                    route=DeliveryRoute.DEFER,
                    reason="quiet_hours",
                    not_before=quiet.ends_at(now),
                )
            else:
                decided[c.idempotency_key] = RoutingDecision(
                    candidate=c, route=DeliveryRoute.DIGEST, reason="quiet_hours"
                )
            continue
        if critical or len(sent) < prefs.hourly_budget:
            decided[c.idempotency_key] = RoutingDecision(candidate=c, route=DeliveryRoute.NOW, reason="ok")
            sent.append(ts)
        else:
            decided[c.idempotency_key] = RoutingDecision(
                candidate=c, route=DeliveryRoute.DIGEST, reason="budget"
            )
    return [decided[c.idempotency_key] for c in ranked], BudgetState(sent=sent)
