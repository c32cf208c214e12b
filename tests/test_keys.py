"""API keys: stored hashed, and remembered by the API only briefly."""

from __future__ import annotations

from sqlalchemy import update

from nftpulse.domain.events import utcnow
from nftpulse.store import keys
from nftpulse.store.db import Database
from nftpulse.store.models import ApiKey


def test_key_cache_remembers_hits_only_for_its_ttl(db: Database) -> None:
    key = keys.create(db, "ingest-bot", ["ingest"])
    cache = keys.KeyCache(db, ttl_s=0.0)
    remembered = keys.KeyCache(db, ttl_s=3600)
    assert cache.authenticate("pk_unknown") is None
    first = remembered.authenticate(key)
    assert first is not None and first.allows("ingest") and not first.allows("admin")

    with db.write() as session:
        session.execute(update(ApiKey).where(ApiKey.digest == keys.digest(key)).values(revoked_at=utcnow()))

    # Within its TTL the cache answers from memory; past it (here: at once) the revocation is seen.
    assert remembered.authenticate(key) == first
    assert cache.authenticate(key) is None


def test_only_the_digest_is_stored(db: Database) -> None:
    key = keys.create(db, "reader", ["read"])
    with db.read() as session:
        stored = session.query(ApiKey).filter(ApiKey.digest == keys.digest(key)).one()
    assert stored.digest == keys.digest(key) and key not in (stored.digest, stored.prefix)
