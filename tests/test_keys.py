"""API keys: stored hashed, and remembered by the API only briefly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_the_stored_handle_reveals_nothing_of_the_key(db: Database) -> None:
    chosen = "pk_correct-horse-battery-staple"  # a bootstrap key a person chose
    keys.create(db, "bootstrap", ["admin"], key=chosen)
    with db.read() as session:
        stored = session.query(ApiKey).filter(ApiKey.digest == keys.digest(chosen)).one()
    assert stored.prefix == keys.digest(chosen)[:12]
    assert not any(chosen[i : i + 4] in stored.prefix for i in range(len(chosen) - 3))


def test_a_bootstrap_key_created_before_gets_a_handle_at_its_next_start(db: Database) -> None:
    chosen = "pk_correct-horse-battery-staple"
    keys.create(db, "bootstrap", ["admin"], key=chosen)
    with db.write() as session:
        session.execute(update(ApiKey).where(ApiKey.name == "bootstrap").values(prefix=chosen[:10]))
    keys.create(db, "bootstrap", ["admin"], key=chosen)  # what every start does with the bootstrap key
    with db.read() as session:
        stored = session.query(ApiKey).filter(ApiKey.name == "bootstrap").one()
    assert stored.prefix == keys.handle(chosen)


@pytest.mark.parametrize("scopes", [["user:eve admin"], ["user:eve", "admin "], ["root"], ["user:"], []])
def test_scopes_are_parsed_strictly(scopes: list[str]) -> None:
    with pytest.raises(keys.InvalidScope):
        keys.check_scopes(scopes)


def test_keys_are_created_with_valid_scopes_only(db: Database) -> None:
    with pytest.raises(keys.InvalidScope):
        keys.create(db, "eve", ["user:eve admin"])
    assert keys.authenticate(db, keys.create(db, "eve", ["user:eve"])).scopes == {"user:eve"}  # type: ignore[union-attr]


def test_cli_refuses_a_scope_with_whitespace(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env["PULSE_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "nftpulse.cli", "keys", "create", "--scope", "user:eve admin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unknown scope 'user:eve admin'" in " ".join(result.stderr.split())
    assert "pk_" not in result.stdout
