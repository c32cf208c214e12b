"""The FastAPI application: routers, error handling, the API docs and the backlog monitor behind load
shedding (``api/backlog.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from temporalio.client import Client

from nftpulse.api import (
    callbacks,
    consumers,
    docs,
    entities,
    errors,
    events,
    feedback,
    health,
    inbox,
    ops,
    sources,
    stream,
    subscriptions,
    users,
)
from nftpulse.api.backlog import BacklogMonitor
from nftpulse.api.deps import Services
from nftpulse.api.limits import BodyLimit
from nftpulse.core.settings import Settings
from nftpulse.store.cache import EntityCache
from nftpulse.store.db import Database
from nftpulse.store.keys import KeyCache


def create_app(settings: Settings, db: Database, cache: EntityCache, temporal: Client | None) -> FastAPI:
    backlog = BacklogMonitor(db, settings.backlog_shed_threshold)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(backlog.run())
        pruning = asyncio.create_task(stream.prune_forever(app.state.services))
        try:
            yield
        finally:
            for running in (task, pruning):
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
            await stream.feeds_of(app, app.state.services).close()

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
    app.add_middleware(BodyLimit)

    for module in (
        health,
        events,
        sources,
        entities,
        ops,
        users,
        subscriptions,
        inbox,
        feedback,
        callbacks,
        stream,
        consumers,
    ):
        app.include_router(module.router)
    return app
