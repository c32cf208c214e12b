"""How many accepted events are unfinished, known to within a second: ingest sheds load past a bound."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.concurrency import run_in_threadpool

from nftpulse.store import events as event_store
from nftpulse.store.db import Database

log = logging.getLogger("pulse.api")


class BacklogMonitor:
    """Knows, to within a second, how many accepted events are unfinished: reading it is free."""

    def __init__(self, db: Database, bound: int, every_s: float = 1.0) -> None:
        self._db = db
        self.bound = bound
        self._every = every_s
        self.count = 0
        self._refreshed = 0.0
        self.retry_after_s = 5

    def over_bound(self) -> bool:
        return self.count > self.bound

    def add(self, n: int) -> None:
        self.count += n

    async def refresh(self) -> None:
        counts = await run_in_threadpool(event_store.backlog_by_class, self._db)
        self.count = sum(counts.values())
        self._refreshed = time.monotonic()

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.warning("api.backlog_refresh_failed", exc_info=True)
            await asyncio.sleep(self._every)
