"""API keys: created once, shown once, stored as digests."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import col

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


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(db: Database, name: str, scopes: list[str], key: str | None = None) -> str:
    """Create a key (random unless given) and return it; only its digest is kept."""
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    row = {
        "name": name,
        "prefix": key[:10],
        "digest": digest(key),
        "scopes": " ".join(sorted(set(scopes))),
        "created_at": utcnow(),
        "revoked_at": None,
    }
    with db.write() as session:
        # An upsert: processes starting together (api, worker, dispatcher) all ensure the bootstrap key.
        stmt = upsert_insert(session)(ApiKey).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["digest"], set_={"scopes": stmt.excluded.scopes, "revoked_at": None}
        )
        session.execute(stmt)
    return key


def authenticate(db: Database, key: str) -> Principal | None:
    with db.read() as session:
        row = session.execute(
            select(ApiKey).where(col(ApiKey.digest) == digest(key), col(ApiKey.revoked_at).is_(None))
        ).scalar_one_or_none()
    if row is None or row.id is None:
        return None
    return Principal(row.id, row.name, frozenset(row.scopes.split()))


class KeyCache:
    """Authenticates with a short memory of recent answers.

    Every request carries a key, and one database lookup per request cost the ingest path as much as the
    insert it guards. A key revoked in the database stops working within ``ttl_s``; unknown keys are
    never remembered, so a key created a moment ago works at once.
    """

    def __init__(self, db: Database, ttl_s: float = 10.0, max_keys: int = 4096) -> None:
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
