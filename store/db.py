"""Engines and transactions for SQLite (embedded default) and Postgres (production, psycopg 3)."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session

from nftpulse.store import models, notify  # noqa: F401  (registers the tables on SQLModel.metadata)
from nftpulse.store.sql import json_dumps


def _lock_key(partition: str) -> int:
    return int.from_bytes(hashlib.blake2b(partition.encode(), digest_size=8).digest(), "big", signed=True)


class TransientStoreError(RuntimeError):
    """The database could not be reached or was busy: the caller should retry."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(getattr(exc, "connection_invalidated", False))


class Database:
    """One place that knows the dialect: sessions for reading and for writing, and partition locks.

    SQLite allows one writer at a time; a write transaction that starts as a reader and later writes can
    fail at once with "database is locked". Write sessions therefore begin ``IMMEDIATE`` and wait on
    ``busy_timeout``. Postgres takes a transaction-scoped advisory lock per partition instead, so that
    two workers never apply events of one collection at the same time.
    """

    def __init__(
        self, url: str, *, echo: bool = False, pool_size: int = 10, key_pepper: bytes | None = None
    ) -> None:
        self.url = url
        #: The server-side secret API key digests are keyed with (``store.keys``). Pulse's processes open
        #: their database through ``services.open_database``, which sets it; without one (tests,
        #: benchmarks) keys use a fixed development pepper.
        self.key_pepper = key_pepper
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.read_engine = self._sqlite_engine(url, echo, immediate=False)
            self.write_engine = self._sqlite_engine(url, echo, immediate=True)
        else:
            # No pre-ping: it costs a round trip per checkout on the hot path. A dead connection raises
            # OperationalError instead, which callers treat as transient and retry.
            engine = create_engine(
                url,
                echo=echo,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_recycle=1800,
                json_serializer=json_dumps,
                json_deserializer=orjson.loads,
            )
            self.read_engine = self.write_engine = engine

    @staticmethod
    def _sqlite_engine(url: str, echo: bool, *, immediate: bool) -> Engine:
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 60},
            json_serializer=json_dumps,
            json_deserializer=orjson.loads,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event decide how a transaction starts.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=60000")
            _write_ahead_log(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.read_engine, expire_on_commit=False) as session:
            try:
                yield session
            except Exception as exc:
                if is_transient(exc):
                    raise TransientStoreError(str(exc)) from exc
                raise

    @contextmanager
    def write(self) -> Iterator[Session]:
        with Session(self.write_engine, expire_on_commit=False) as session:
            try:
                with session.begin():
                    yield session
            except Exception as exc:
                if is_transient(exc):
                    raise TransientStoreError(str(exc)) from exc
                raise

    def lock_partitions(self, session: Session, partitions: Iterable[str]) -> None:
        """Serialise writers of these partitions until the transaction ends.

        One statement for all of them, taking the locks in key order so that two transactions wanting
        overlapping sets never deadlock.
        """
        if self.is_sqlite:
            return  # BEGIN IMMEDIATE already holds the database's single write lock.
        keys = sorted({_lock_key(p) for p in partitions})
        if keys:
            session.execute(
                text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k ORDER BY k"),
                {"keys": keys},
            )

    def ping(self) -> bool:
        try:
            with self.read_engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()


def _write_ahead_log(cur: sqlite3.Cursor, wait_s: float = 60.0) -> None:
    """Put the database in WAL mode, which the file keeps. Switching needs the database to itself, and
    SQLite answers "database is locked" at once, without its busy handler, while another connection holds
    it: as when several processes open a new database together and one is creating the schema. So the
    switch is asked for again until it holds; a database already in WAL mode needs no lock."""
    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
