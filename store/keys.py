"""API keys: created once, shown once, stored as digests keyed with a server-side pepper.

A key's digest is HMAC-SHA256 of the key under the pepper (``Database.key_pepper``, from
``PULSE_KEY_PEPPER`` or the data dir): the database alone, a dump or a backup, does not let anyone test
guesses of a key, which matters for a bootstrap key a person chose. Digests stored by earlier versions
(plain SHA-256) still authenticate, and are replaced by the keyed digest on their first use (or when the
bootstrap key is ensured at start).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlmodel import Session, col

from nftpulse.domain.events import utcnow
from nftpulse.store.db import Database
from nftpulse.store.models import ApiKey
from nftpulse.store.sql import upsert_insert

KEY_PREFIX = "pk_"


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def user_ids(self) -> frozenset[str]:
        return frozenset(s.removeprefix("user:") for s in self.scopes if s.startswith("user:"))


#: A key's scopes: ``ingest``, ``read``, ``admin`` or ``user:<id>`` (a user id as the API accepts it).
#: Nothing else, whitespace least of all: scopes are stored space-separated, so ``"user:eve admin"``
#: would come back as two scopes, one of them admin.
SCOPE = re.compile(r"^(ingest|read|admin|user:[A-Za-z0-9_.@:-]{1,120})$")


class InvalidScope(ValueError):
    """A scope outside :data:`SCOPE`."""


def check_scopes(scopes: list[str]) -> list[str]:
    """``scopes`` unchanged, or :class:`InvalidScope` naming the first that is not one."""
    if not scopes:
        raise InvalidScope("a key needs at least one scope")
    for scope in scopes:
        if not SCOPE.fullmatch(scope):
            raise InvalidScope(
                f"unknown scope {scope!r}: use ingest, read, admin or user:<id>, one per --scope"
            )
    return scopes


#: The pepper of a database opened without one (tests, benchmarks): public, so no protection; Pulse's
#: processes always have a secret one (``services.key_pepper``).
DEVELOPMENT_PEPPER = b"pulse development pepper: not a secret"


def pepper_of(db: Database) -> bytes:
    return db.key_pepper if db.key_pepper is not None else DEVELOPMENT_PEPPER


def digest(key: str, pepper: bytes) -> str:
    """The stored form of a key: HMAC-SHA256 under the server's pepper. Keys are 256 random bits (a
    bootstrap key may be chosen, hence the pepper), so no slow hash is needed."""
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def legacy_digest(key: str) -> str:
    """The unkeyed SHA-256 digest earlier versions stored; recognised once, then replaced."""
    return hashlib.sha256(key.encode()).hexdigest()


def handle(key: str, pepper: bytes) -> str:
    """What identifies a key in listings and logs without revealing any of it: the start of its digest."""
    return digest(key, pepper)[:HANDLE_LENGTH]


#: Characters of the digest kept as a key's handle (``api_keys.prefix``). A bootstrap key stored with its
#: first characters by an earlier version gets its handle when it is ensured again at start.
HANDLE_LENGTH = 12


def create(db: Database, name: str, scopes: list[str], key: str | None = None) -> str:
    """Create a key (random unless given) and return it; only its digest is kept."""
    check_scopes(scopes)
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    pepper = pepper_of(db)
    row = {
        "name": name,
        # A handle to tell keys apart, taken from the digest: the key's own first characters were
        # a piece of the secret (all of a short bootstrap key's start).
        "prefix": handle(key, pepper),
        "digest": digest(key, pepper),
        "scopes": " ".join(sorted(set(scopes))),
        "created_at": utcnow(),
        "revoked_at": None,
    }
    with db.write() as session:
        # A bootstrap key stored by an earlier version: its row takes the keyed digest, then the upsert.
        _rehash(session, key, pepper)
        # An upsert: processes starting together (api, worker, dispatcher) all ensure the bootstrap key.
        stmt = upsert_insert(session)(ApiKey).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["digest"],
            set_={"scopes": stmt.excluded.scopes, "revoked_at": None, "prefix": stmt.excluded.prefix},
        )
        session.execute(stmt)
    return key


def _rehash(session: Session, key: str, pepper: bytes) -> int:
    """Give the row stored with ``key``'s legacy digest the keyed digest and its handle; how many rows
    changed (0 or 1: a concurrent rehash of the same row finds it done)."""
    result = session.execute(
        update(ApiKey)
        .where(col(ApiKey.digest) == legacy_digest(key))
        .values(digest=digest(key, pepper), prefix=handle(key, pepper))
    )
    return int(getattr(result, "rowcount", 0) or 0)


def authenticate(db: Database, key: str) -> Principal | None:
    pepper = pepper_of(db)
    keyed, legacy = digest(key, pepper), legacy_digest(key)
    with db.read() as session:
        rows: list[ApiKey] = list(
            session.execute(
                select(ApiKey).where(
                    col(ApiKey.digest).in_([keyed, legacy]), col(ApiKey.revoked_at).is_(None)
                )
            ).scalars()
        )
    row = next((r for r in rows if r.digest == keyed), rows[0] if rows else None)
    if row is None or row.id is None:
        return None
    if row.digest == legacy:
        # Stored by an earlier version: right once more, and from now on keyed.
        with db.write() as session:
            _rehash(session, key, pepper)
    return Principal(row.id, row.name, frozenset(row.scopes.split()))


def is_active(db: Database, key_id: int) -> bool:
    """Whether the key is still there and not revoked (long-lived streams ask again every few seconds)."""
    with db.read() as session:
        revoked = session.execute(
            select(col(ApiKey.revoked_at)).where(col(ApiKey.id) == key_id)
        ).one_or_none()
    return revoked is not None and revoked[0] is None


def revoke(db: Database, handle_or_name: str) -> int:
    """Revoke the keys with this handle (``api_keys.prefix``) or name; returns how many were active."""
    with db.write() as session:
        result = session.exec(
            update(ApiKey)
            .where(
                (col(ApiKey.prefix) == handle_or_name) | (col(ApiKey.name) == handle_or_name),
                col(ApiKey.revoked_at).is_(None),
            )
            .values(revoked_at=utcnow())
        )
    return int(result.rowcount or 0)


class KeyCache:
    """Authenticates with a short memory of recent answers.

    Every request carries a key, and one database lookup per request cost the ingest path as much as the
    insert it guards. A key revoked in the database stops working within ``ttl_s``; unknown keys are
    never remembered, so a key created a moment ago works at once.
    """

    def __init__(self, db: Database, ttl_s: float = 2.0, max_keys: int = 4096) -> None:
        self._db = db
        self._ttl = ttl_s
        self._max = max_keys
        self._known: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def authenticate(self, key: str) -> Principal | None:
        now = time.monotonic()
        with self._lock:
            hit = self._known.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        principal = authenticate(self._db, key)
        with self._lock:
            if principal is None:
                self._known.pop(key, None)
            else:
                if len(self._known) >= self._max:
                    self._known.clear()
                self._known[key] = (now, principal)
        return principal
