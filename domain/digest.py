"""Digest scheduling and assembly: pure functions for the per-user digest workflow.

The workflow keeps the pending items and asks this module three questions: when is the next scheduled
send (:func:`next_send_at`), should it flush now (:func:`flush_reason`), and what goes out
(:func:`build_digest`, ``None`` for an empty digest, which sends nothing).

Newer state replaces older: two pending items for the same rule and entity collapse into one that
keeps the first ``before`` and the last ``after``. Items whose cause was reverted (a chain
reorganisation) are withdrawn with :func:`retract`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nftpulse.domain.routing import local_instant
from nftpulse.domain.rules import AlertSeverity, NotificationKind, max_severity

#: Why a digest goes out: on schedule, early on magnitude, or asked for.
DigestReason = Literal["schedule", "magnitude", "manual"]


class DigestSchedule(BaseModel):
    """When a user's digest goes out: ``hourly`` (at minute ``at.minute``), ``daily`` or ``weekly``
    (``weekday`` 0 = Monday) at local wall time ``at`` in time zone ``tz``."""

    model_config = ConfigDict(frozen=True)

    frequency: Literal["hourly", "daily", "weekly"] = "daily"
    at: time = time(8, 0)
    weekday: int | None = Field(default=None, ge=0, le=6)
    tz: str = "UTC"
    flush_magnitude: float = Field(
        default=5.0, gt=0, description="send early once the pending items' combined magnitude reaches this"
    )

    @field_validator("tz")
    @classmethod
    def _zone(cls, v: str) -> str:
        ZoneInfo(v)
        return v


def next_send_at(schedule: DigestSchedule, after: datetime) -> datetime:
    """The first scheduled send strictly after ``after`` (aware), in UTC.

    Computed on local dates so that "daily at 08:00" stays at 08:00 local across DST changes (a day is
    then 23 or 25 hours long). A skipped wall time moves forward by the gap; an ambiguous one takes its
    first occurrence.
    """
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    zone = ZoneInfo(schedule.tz)
    if schedule.frequency == "hourly":
        # Hourly sends are defined on the UTC-offset-free timeline: every hour at minute ``at.minute``.
        base = after.astimezone(UTC).replace(minute=schedule.at.minute, second=0, microsecond=0)
        return base if base > after else base + timedelta(hours=1)
    local_day = after.astimezone(zone).date()
    for offset in range(-1, 9):
        day = local_day + timedelta(days=offset)
        if schedule.frequency == "weekly" and day.weekday() != (schedule.weekday or 0):
            continue
        candidate = local_instant(day, schedule.at, zone)
        if candidate > after:
            return candidate
    raise AssertionError("no send time within nine days")  # pragma: no cover - a week always has one


class DigestItem(BaseModel):
    """One pending notification waiting for the digest."""

    model_config = ConfigDict(frozen=True)

    idempotency_key: str
    kind: NotificationKind
    severity: AlertSeverity = AlertSeverity.INFO
    entity_key: str
    rule_id: str | None = None
    title: str = ""
    before: Any = None
    after: Any = None
    at: datetime
    magnitude: float = 1.0
    cause: str | None = Field(default=None, description="event id(s); lets a chain reorganisation retract it")


class DigestGroup(BaseModel):
    """The items of one kind for one entity, oldest first."""

    model_config = ConfigDict(frozen=True)

    kind: NotificationKind
    entity_key: str
    items: list[DigestItem]
    severity: AlertSeverity
    magnitude: float
    first_at: datetime
    last_at: datetime


class Digest(BaseModel):
    """What one digest send carries; its ``idempotency_key`` makes a retried send a no-op."""

    model_config = ConfigDict(frozen=True)

    idempotency_key: str
    groups: list[DigestGroup]
    item_keys: list[str]
    severity: AlertSeverity
    magnitude: float
    reason: DigestReason


def merge_pending(items: Iterable[DigestItem]) -> list[DigestItem]:
    """Deduplicate by idempotency key and collapse items of the same rule and entity into the newest state.

    The collapsed item keeps the first ``before`` (so the digest shows the whole move), the newest
    ``after`` and time, the loudest severity and the largest magnitude.
    """
    by_key: dict[str, DigestItem] = {}
    for item in items:
        by_key.setdefault(item.idempotency_key, item)
    merged: dict[tuple[str, str, str], DigestItem] = {}
    for item in sorted(by_key.values(), key=lambda i: (i.at, i.idempotency_key)):
        if item.rule_id is None:
            merged[(item.kind, item.entity_key, item.idempotency_key)] = item
            continue
        slot = (item.kind, item.entity_key, item.rule_id)
        old = merged.get(slot)
        if old is None:
            merged[slot] = item
        else:
            merged[slot] = item.model_copy(
                update={
                    "before": old.before,
                    "severity": max_severity(old.severity, item.severity),
                    "magnitude": max(old.magnitude, item.magnitude),
                }
            )
    return sorted(merged.values(), key=lambda i: (i.at, i.idempotency_key))


def retract(items: Iterable[DigestItem], cause: str) -> list[DigestItem]:
    """Drop pending items caused by ``cause`` (e.g. an event removed by a chain reorganisation)."""
    return [i for i in items if i.cause != cause]


def combined_magnitude(items: Iterable[DigestItem]) -> float:
    """Sum of the pending items' magnitudes after merging: the figure compared with the flush threshold."""
    return sum(i.magnitude for i in merge_pending(items))


def flush_reason(
    items: Iterable[DigestItem], schedule: DigestSchedule, now: datetime, due_at: datetime
) -> Literal["schedule", "magnitude"] | None:
    """Whether to send the digest at ``now``: on schedule (``now >= due_at``) or early on magnitude.

    Nothing pending means no send, whatever the clock says.
    """
    pending = list(items)
    if not pending:
        return None
    if now >= due_at:
        return "schedule"
    if combined_magnitude(pending) >= schedule.flush_magnitude:
        return "magnitude"
    return None


def group_items(items: Iterable[DigestItem]) -> list[DigestGroup]:
    """Group merged items by kind, then entity; the loudest and largest groups first."""
    buckets: dict[tuple[str, str], list[DigestItem]] = {}
    for item in merge_pending(items):
        buckets.setdefault((item.kind, item.entity_key), []).append(item)
    groups = [
        DigestGroup(
            kind=NotificationKind(kind),
            entity_key=entity,
            items=group,
            severity=max_severity(*(i.severity for i in group)),
            magnitude=sum(i.magnitude for i in group),
            first_at=group[0].at,
            last_at=group[-1].at,
        )
        for (kind, entity), group in buckets.items()
    ]
    return sorted(groups, key=lambda g: (-g.severity.rank, -g.magnitude, g.kind, g.entity_key))


def build_digest(user_id: str, items: Iterable[DigestItem], reason: DigestReason) -> Digest | None:
    """Assemble the digest; ``None`` when nothing is pending (an empty digest sends nothing)."""
    groups = group_items(items)
    if not groups:
        return None
    keys = sorted(i.idempotency_key for g in groups for i in g.items)
    digest_key = "dgst_" + hashlib.sha256("\x1f".join([user_id, *keys]).encode()).hexdigest()[:40]
    return Digest(
        idempotency_key=digest_key,
        groups=groups,
        item_keys=keys,
        severity=max_severity(*(g.severity for g in groups)),
        magnitude=sum(g.magnitude for g in groups),
        reason=reason,
    )
