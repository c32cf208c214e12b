"""Appending events from a process that is not the API (the OpenSea stream, the metadata fetcher) as
``POST /v1/events`` and the chain follower do: classified against the collections' floors, then appended to
the event log, where ``(source, id)`` makes an event read twice a duplicate."""

from __future__ import annotations

from collections.abc import Sequence

from nftpulse.core.settings import Settings
from nftpulse.domain.classify import ClassifyContext, Thresholds, classify
from nftpulse.domain.events import Event
from nftpulse.store import events
from nftpulse.store.db import Database
from nftpulse.store.entities import FloorCache


class Ingestor:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.db = db
        self.thresholds = Thresholds(settings.significant_priority, settings.large_move)
        self.floors = FloorCache(db)

    def append(self, batch: Sequence[Event]) -> tuple[int, int]:
        """Append ``batch`` (blocking: call it from a thread); returns (accepted, duplicates)."""
        if not batch:
            return 0, 0
        if self.floors.stale():
            self.floors.refresh()
        floor, limits = self.floors.get, self.thresholds
        verdicts = [classify(e, ClassifyContext(limits, floor=floor(e.collection_key))) for e in batch]
        outcomes = events.append(self.db, batch, [(v.priority, v.priority_class) for v in verdicts])
        duplicates = sum(o.duplicate for o in outcomes)
        return len(outcomes) - duplicates, duplicates
