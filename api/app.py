"""The FastAPI application: routers, error handling and the backlog monitor behind load shedding."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client

from nftpulse.api import docs, entities, errors, events, health, ops, users
from nftpulse.api.deps import Services
from nftpulse.core.settings import Settings
from nftpulse.store import events as event_store
from nftpulse.store.cache import EntityCache
from nftpulse.store.db import Database
from nftpulse.store.keys import KeyCache

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


def create_app(settings: Settings, db: Database, cache: EntityCache, temporal: Client | None) -> FastAPI:
    backlog = BacklogMonitor(db, settings.backlog_shed_threshold)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(backlog.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="Pulse",
        version="1",
        summary="Real-time updates and alerts for NFT trust and market data",
        lifespan=lifespan,
        docs_url=None,  # served by api/docs.py from local assets
        redoc_url=None,
    )
    app.state.services = Services(
        settings=settings, db=db, cache=cache, temporal=temporal, backlog=backlog, keys=KeyCache(db)
    )
    errors.install(app)
    docs.install(app)

    for module in (health, events, entities, ops, users):
        app.include_router(module.router)
    return app
