"""Pulse's clock: each live collection's next moment at which a figure moves with time alone
(``collection_clocks``), and the clock events appended when it comes.

A clock event is an ordinary event of the log (source ``pulse.clock``, type ``clock``, id
``<partition>@<instant>``): it is dispatched, applied, detected and notified like any other, a recompute
of the log replays it (so ``pulse verify`` holds at every instant), and its id makes appending it twice
for one collection and instant a duplicate, not a second event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, func
from sqlmodel import Session, col, select

from nftpulse.domain.book import CollectionBook
from nftpulse.domain.events import Event, EventType, utcnow
from nftpulse.store import events
from nftpulse.store.db import Database
from nftpulse.store.models import CollectionClock
from nftpulse.store.sql import table_of, upsert_insert

CLOCK_SOURCE = "pulse.clock"
#: A collection is live when its book's clock was within this of the wall clock when it was saved. Only
#: live collections get clock events: a history replayed from the past (a backfill, a synthetic stream)
#: keeps the time of its own events rather than being ticked through every day since.
LIVE_WITHIN = timedelta(days=1)
#: A moment reached later than this (Pulse was stopped) is ticked at the clock's current instant: one
#: event brings the collection up to date however many moments it missed.
LATE_AFTER = timedelta(minutes=5)
#: Routine, never significant: a clock event is applied in its collection's next batch.
CLOCK_PRIORITY = (30.0, "normal")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_us(moment: int) -> datetime:
    return _EPOCH + timedelta(microseconds=moment)


def set_due(session: Session, saved: Sequence[tuple[str, CollectionBook]]) -> None:
    """Record the next moment of each live book a batch just saved, in its transaction (the others are
    left out, and their next moment is not even computed)."""
    live_from = (utcnow() - LIVE_WITHIN - _EPOCH) // timedelta(microseconds=1)
    rows = []
    for partition, book in saved:
        clock = book.clock_us
        if clock is None or clock < live_from:
            continue
        due = book.next_moment()
        if due is not None:
            rows.append({"partition": partition, "due_at": from_us(due)})
    if not rows:
        return
    stmt = upsert_insert(session)(table_of(CollectionClock))
    stmt = stmt.on_conflict_do_update(index_elements=["partition"], set_={"due_at": stmt.excluded.due_at})
    session.connection().execute(stmt, rows)


def clock_event(partition: str, instant: datetime) -> Event:
    _kind, chain, contract = partition.split(":", 2)
    return Event(
        id=f"{partition}@{instant.isoformat()}",
        source=CLOCK_SOURCE,
        type=EventType.CLOCK,
        occurred_at=instant,
        chain=chain,
        contract=contract,
    )


def tick(db: Database, now: datetime, limit: int) -> tuple[int, datetime | None, bool]:
    """Append a clock event for every collection whose moment is due at ``now`` (at most ``limit``), then
    forget those moments (applying the events records the next ones). Returns how many were appended,
    the next moment after ``now`` and whether more were due than ``limit``."""
    with db.read() as session:
        due = session.exec(
            select(CollectionClock)
            .where(col(CollectionClock.due_at) <= now)
            .order_by(col(CollectionClock.due_at))
            .limit(limit + 1)
        ).all()
    more = len(due) > limit
    due = due[:limit]
    if due:
        ticks = [clock_event(c.partition, c.due_at if c.due_at >= now - LATE_AFTER else now) for c in due]
        events.append(db, ticks, [CLOCK_PRIORITY] * len(ticks))
    with db.write() as session:
        for c in due:
            # Only the moment read: a batch applied meanwhile may have recorded a newer one.
            session.execute(
                delete(CollectionClock).where(
                    and_(
                        col(CollectionClock.partition) == c.partition, col(CollectionClock.due_at) == c.due_at
                    )
                )
            )
        following = session.exec(
            select(func.min(CollectionClock.due_at)).where(col(CollectionClock.due_at) > now)
        ).one()
    return len(due), following, more
