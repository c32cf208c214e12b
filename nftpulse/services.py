"""Builds the long-lived parts every entry point shares: the database, the cache, the Temporal client."""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import OperationalError

from nftpulse.core.settings import Settings
from nftpulse.store import keys, schema
from nftpulse.store.cache import EntityCache, MemoryCache, NoCache, RedisCache
from nftpulse.store.db import Database, TransientStoreError, is_transient
from nftpulse.store.schema import SchemaError

log = logging.getLogger("pulse.services")


def open_database(settings: Settings, *, upgrade: bool = False) -> Database:
    """The database, at the schema revision this code needs.

    With ``upgrade`` (the embedded ``pulse up``) it is migrated there first. Otherwise a database that is
    missing, empty or behind raises ``SchemaError``, whose message names ``pulse db upgrade``: production
    processes never change the schema behind the operator's back, and never run against one they do not
    know.
    """
    url = settings.effective_database_url
    if not upgrade and (missing := schema.missing_database(url)):
        raise SchemaError(missing)
    if not settings.database_url:
        private_data_dir(settings.data_dir)
    db = Database(url, key_pepper=key_pepper(settings))
    try:
        if upgrade:
            result = schema.upgrade(db)
            if result.changed:
                log.info("database schema upgraded from %s to %s", result.before.current, result.after)
        else:
            _once_reachable(lambda: schema.require_current(db))
        if settings.bootstrap_admin_key:
            secret = settings.bootstrap_admin_key.get_secret_value()
            _once_reachable(lambda: keys.create(db, "bootstrap-admin", ["admin"], key=secret))
    except BaseException:
        db.dispose()
        raise
    return db


#: How long a starting process waits for a database it cannot reach before giving up.
REACH_TIMEOUT_S = 60.0


def _unreachable(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, SchemaError | TransientStoreError) else exc
    return isinstance(cause, OperationalError) or (cause is not None and is_transient(cause))


def _once_reachable(step: Callable[[], object]) -> None:
    """Run a start-up step, again while the database cannot be reached: a connection dropped under a
    starting process (a failover, a restart, ``pg_terminate_backend``) or a database still starting
    delays the process, as a Temporal outage does, instead of ending it."""
    deadline = time.monotonic() + REACH_TIMEOUT_S
    pause = 0.1
    while True:
        try:
            step()
            return
        except (SchemaError, TransientStoreError, OperationalError) as exc:
            if not _unreachable(exc) or time.monotonic() > deadline:
                raise
            log.warning("database not reachable at start, trying again: %s", str(exc).splitlines()[0])
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def private_data_dir(data_dir: Path) -> None:
    """The embedded data dir and the SQLite files in it readable by their owner only: they hold webhook
    secrets, e-mail addresses, phone numbers and push keys (and ``pulse up``'s admin key and Temporal
    state). SQLite gives its ``-wal`` and ``-shm`` files the database file's mode."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, stat.S_IRWXU)
    database = data_dir / "pulse.db"
    if not database.exists():
        # Created here, not by SQLite, which would use the umask (0644 as a rule).
        database.touch(mode=stat.S_IRUSR | stat.S_IWUSR)
    for path in data_dir.glob("pulse.db*"):
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


#: The file in the data dir that keeps a generated pepper (``key_pepper``).
PEPPER_FILE = "key.pepper"
MIN_PEPPER_LENGTH = 16


def key_pepper(settings: Settings) -> bytes:
    """The secret API key digests are keyed with: ``PULSE_KEY_PEPPER``, or one made on first start and
    kept in the data dir (0600), like ``pulse up``'s admin key. Every process that authenticates or creates
    keys must have the same one: on several hosts, set ``PULSE_KEY_PEPPER``."""
    if settings.key_pepper is not None:
        value = settings.key_pepper.get_secret_value()
        if len(value) < MIN_PEPPER_LENGTH:
            # Not a settings constraint: pydantic would print the value in its error.
            raise ValueError(f"PULSE_KEY_PEPPER must be at least {MIN_PEPPER_LENGTH} characters")
        return value.encode()
    if settings.database_url:
        log.warning(
            "PULSE_KEY_PEPPER is not set: API key digests use the pepper in %s; every process that "
            "checks keys must share it",
            Path(settings.data_dir) / PEPPER_FILE,
        )
    return _data_dir_pepper(Path(settings.data_dir) / PEPPER_FILE)


def _data_dir_pepper(path: Path) -> bytes:
    """The pepper kept at ``path``, made there first if there is none. Processes starting together (api,
    worker, dispatcher) race to make it: each writes its own candidate to a file of its own and links it
    into place, which succeeds for one of them, and all read that one."""
    if not path.exists():
        if not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path.parent, stat.S_IRWXU)
        candidate = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            candidate.unlink()
    # Linked into place only once written: a reader never sees a partial one.
    value = path.read_text().strip()
    if len(value) < MIN_PEPPER_LENGTH:
        raise ValueError(f"{path} holds no usable pepper ({MIN_PEPPER_LENGTH}+ characters)")
    return value.encode()


def open_cache(settings: Settings, *, shares_process_with_worker: bool) -> EntityCache:
    """Redis when configured; in process only where the worker that invalidates it runs in the same
    process (``pulse up``); otherwise no cache, since nothing could tell this process a value went stale."""
    if settings.redis_url:
        return RedisCache(settings.redis_url, ttl_s=settings.cache_ttl_s, prefix=settings.cache_prefix)
    if shares_process_with_worker:
        return MemoryCache(settings.cache_max_entries, settings.cache_ttl_s)
    return NoCache()


def bootstrap_admin_key(settings: Settings, db: Database) -> str:
    """The admin key ``pulse up`` prints: the configured one, or one made on first start and kept in the
    data directory (only its digest is in the database)."""
    if settings.bootstrap_admin_key:
        return settings.bootstrap_admin_key.get_secret_value()
    path = Path(settings.data_dir) / "admin.key"
    if path.exists():
        key = path.read_text().strip()
        keys.create(db, "bootstrap-admin", ["admin"], key=key)
        return key
    key = keys.create(db, "bootstrap-admin", ["admin"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return key
