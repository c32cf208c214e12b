"""Send-time learning: deliver non-urgent notifications at the hour each user reads most.

Every read (an in-app read, an e-mail open or click, a push click, an SMS reply) counts one in the user's
histogram of local hours. Once it holds at least ``min_reads`` reads, the user's hour is the one with the
most (the earliest of equals); before that, the cold-start default hour. An informational notification
of a user who chose learned send times waits until the next start of that hour, moved out of quiet hours
when it falls inside them; a daily or weekly digest goes out at that hour (its frequency and weekday
stay the user's).

Pure: stdlib and pydantic, no I/O and no clock reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from nftpulse.domain.routing import QuietHours, local_instant

HOURS = 24


def empty_histogram() -> list[int]:
    """24 zero counts."""
    return [0] * HOURS


def add_read(hours: Sequence[int], at: datetime, tz: str) -> list[int]:
    """The histogram with one more read at ``at`` (aware), counted in the user's local hour."""
    out = list(hours) if len(hours) == HOURS else empty_histogram()
    out[at.astimezone(ZoneInfo(tz)).hour] += 1
    return out


def best_hour(hours: Sequence[int], default_hour: int, min_reads: int) -> int:
    """The local hour the user reads most; ``default_hour`` until ``min_reads`` reads are known."""
    if len(hours) != HOURS or sum(hours) < max(min_reads, 1):
        return default_hour
    top = max(hours)
    return next(h for h in range(HOURS) if hours[h] == top)


def next_send_at(now: datetime, hour: int, tz: str, quiet: QuietHours | None = None) -> datetime:
    """When a non-urgent item created at ``now`` goes out: ``now`` inside the user's hour, else the next
    start of it; moved to the end of quiet hours if it falls inside them."""
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    if local.hour == hour:
        at = now.astimezone(UTC)
    else:
        at = local_instant(local.date(), time(hour), zone)
        if at <= now:
            at = local_instant(local.date() + timedelta(days=1), time(hour), zone)
    if quiet is not None and quiet.is_quiet(at):
        at = quiet.ends_at(at)
    return at


def digest_schedule(schedule: dict[str, Any], hour: int) -> dict[str, Any]:
    """A daily or weekly digest schedule moved to the learned hour; hourly ones stay as they are."""
    if schedule.get("frequency", "daily") == "hourly":
        return schedule
    return {**schedule, "at": time(hour).isoformat()}
