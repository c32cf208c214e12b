"""Shared test fixtures: a real Temporal dev server for the session, real SQLite and Postgres databases,
and a running Pulse (API in process over ASGI, worker and dispatcher as tasks) on a fresh task queue."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from nftpulse.api.app import create_app
from nftpulse.core.settings import Settings
from nftpulse.dispatcher import Dispatcher
from nftpulse.store import keys, schema
from nftpulse.store.cache import MemoryCache
from nftpulse.store.db import Database
from nftpulse.temporal import temporal_cli
from nftpulse.worker import WORKFLOWS, build_worker
from nftpulse.workflows.pipeline import SEARCH_ATTRIBUTES

POSTGRES_URL = os.environ.get("PULSE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


_PG = postgres_available()
if os.environ.get("CI") and not _PG and not os.environ.get("PULSE_TEST_SQLITE_ONLY"):
    raise RuntimeError(f"CI expects Postgres at {POSTGRES_URL}")


@pytest.fixture(scope="session")
def temporal_path() -> str:
    return temporal_cli()


@pytest_asyncio.fixture(scope="session")
async def temporal_env(temporal_path: str) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_path,
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pulse.db'}"


@contextlib.contextmanager
def local_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on a free 127.0.0.1 port for the duration of the block; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield _sqlite_url(tmp_path)
        return
    if not _PG:
        pytest.skip(f"no Postgres at {POSTGRES_URL} (CI has one; set PULSE_TEST_POSTGRES_URL elsewhere)")
    with postgres_schema() as url:
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A database migrated to the code's head (``database_url`` alone is empty)."""
    database = Database(database_url)
    schema.upgrade(database)
    yield database
    database.dispose()


@dataclass
class Keys:
    admin: str
    ingest: str
    read: str

    def auth(self, which: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, which)}"}


@dataclass
class RunningPulse:
    settings: Settings
    db: Database
    client: Client
    http: httpx.AsyncClient
    keys: Keys
    dispatcher: Dispatcher
    task_queue: str
    app: FastAPI

    async def post(
        self, events: list[dict[str, Any]] | dict[str, Any], key: str = "ingest"
    ) -> httpx.Response:
        body = {"events": events} if isinstance(events, list) else events
        return await self.http.post("/v1/events", json=body, headers=self.keys.auth(key))

    async def status(self, source: str, event_id: str) -> dict[str, Any]:
        resp = await self.http.get(f"/v1/events/{source}/{event_id}", headers=self.keys.auth("read"))
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]

    async def wait_final(
        self, refs: list[tuple[str, str]], limit_s: float = 60
    ) -> dict[tuple[str, str], str]:
        """Wait until every event is processed or failed; returns each one's status."""
        deadline = asyncio.get_running_loop().time() + limit_s
        final: dict[tuple[str, str], str] = {}
        while True:
            for ref in refs:
                if ref not in final:
                    st = (await self.status(*ref))["status"]
                    if st in ("processed", "failed"):
                        final[ref] = st
            if len(final) == len(refs):
                return final
            if asyncio.get_running_loop().time() > deadline:
                missing = [r for r in refs if r not in final][:5]
                raise AssertionError(
                    f"{len(refs) - len(final)} events not final after {limit_s}s, e.g. {missing}"
                )
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def run_pulse(
    database_url: str, client: Client, *, worker: bool = True, dispatcher: bool = True, **overrides: Any
) -> AsyncIterator[RunningPulse]:
    task_queue = f"pulse-test-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        **{
            "database_url": database_url,
            "task_queue": task_queue,
            "workflow_id_prefix": f"{task_queue}/",
            "dispatch_interval_s": 0.05,
            "partition_wake_interval_s": 0.1,
            # An event lacking a rate fails at once unless a test is about waiting (tests/test_waiting.py).
            "wait_max_seconds": 0,
            **overrides,
        }
    )
    db = Database(database_url)
    schema.upgrade(db)
    test_keys = Keys(
        admin=keys.create(db, "admin", ["admin"]),
        ingest=keys.create(db, "ingest", ["ingest"]),
        read=keys.create(db, "read", ["read"]),
    )
    cache = MemoryCache()
    app = create_app(settings, db, cache, client)
    stop = asyncio.Event()
    disp = Dispatcher(settings, db, client)
    tasks: list[asyncio.Task[Any]] = []
    running_worker, registry = build_worker(client, settings, db, cache) if worker else (None, None)
    if running_worker is not None:
        tasks.append(asyncio.create_task(running_worker.run()))
    if dispatcher:
        tasks.append(asyncio.create_task(disp.run(stop)))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://pulse.test") as http,
    ):
        try:
            yield RunningPulse(settings, db, client, http, test_keys, disp, task_queue, app)
        finally:
            stop.set()
            if running_worker is not None:
                await asyncio.wait_for(running_worker.shutdown(), timeout=30)
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
            if registry is not None:
                await registry.aclose()
            db.dispose()


async def replay_under_sandbox(client: Client, task_queue: str) -> set[str]:
    """Replay the history of every workflow that ran on ``task_queue`` with the sandboxed runner: the worker
    runs workflows without the sandbox, so this is where a non-deterministic call (the clock, randomness,
    I/O) or a change that no longer replays its own history is caught. Returns the ids replayed."""
    replayer = Replayer(workflows=WORKFLOWS)
    replayed: set[str] = set()
    # Significant events' workflows run on the events queue (pulse/worker.py).
    query = f"TaskQueue = '{task_queue}' OR TaskQueue = '{task_queue}.events'"
    async for execution in client.list_workflows(query):
        history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{execution.id}: {result.replay_failure!r}"
        replayed.add(execution.id)
    return replayed


@pytest_asyncio.fixture
async def pulse(database_url: str, temporal_client: Client) -> AsyncIterator[RunningPulse]:
    async with run_pulse(database_url, temporal_client) as running:
        yield running


def which(name: str) -> str | None:
    return shutil.which(name)
