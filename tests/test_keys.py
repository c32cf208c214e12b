"""API keys: stored as digests keyed with the server's pepper (older unkeyed digests still work once and
are replaced), and remembered by the API only briefly."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlmodel import col

from nftpulse.core.settings import Settings
from nftpulse.domain.events import utcnow
from nftpulse.services import key_pepper, open_database
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
        session.execute(
            update(ApiKey)
            .where(ApiKey.digest == keys.digest(key, keys.pepper_of(db)))
            .values(revoked_at=utcnow())
        )

    # Within its TTL the cache answers from memory; past it (here: at once) the revocation is seen.
    assert remembered.authenticate(key) == first
    assert cache.authenticate(key) is None


def test_only_the_digest_is_stored(db: Database) -> None:
    key = keys.create(db, "reader", ["read"])
    with db.read() as session:
        stored = session.query(ApiKey).filter(ApiKey.digest == keys.digest(key, keys.pepper_of(db))).one()
    assert stored.digest == keys.digest(key, keys.pepper_of(db)) and key not in (stored.digest, stored.prefix)


def test_the_stored_handle_reveals_nothing_of_the_key(db: Database) -> None:
    chosen = "pk_correct-horse-battery-staple"  # a bootstrap key a person chose
    keys.create(db, "bootstrap", ["admin"], key=chosen)
    with db.read() as session:
        stored = session.query(ApiKey).filter(ApiKey.digest == keys.digest(chosen, keys.pepper_of(db))).one()
    assert stored.prefix == keys.digest(chosen, keys.pepper_of(db))[:12]
    assert not any(chosen[i : i + 4] in stored.prefix for i in range(len(chosen) - 3))


def test_a_bootstrap_key_created_before_gets_a_handle_at_its_next_start(db: Database) -> None:
    chosen = "pk_correct-horse-battery-staple"
    keys.create(db, "bootstrap", ["admin"], key=chosen)
    with db.write() as session:
        session.execute(update(ApiKey).where(ApiKey.name == "bootstrap").values(prefix=chosen[:10]))
    keys.create(db, "bootstrap", ["admin"], key=chosen)  # what every start does with the bootstrap key
    with db.read() as session:
        stored = session.query(ApiKey).filter(ApiKey.name == "bootstrap").one()
    assert stored.prefix == keys.handle(chosen, keys.pepper_of(db))


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


def test_digests_are_keyed_with_the_servers_pepper(db: Database) -> None:
    """The stored digest is HMAC-SHA256 under the pepper: the database alone cannot test a guess, and a
    server with another pepper does not recognise the key."""
    ours = Database(db.url, key_pepper=b"p" * 32)
    theirs = Database(db.url, key_pepper=b"q" * 32)
    try:
        chosen = "pk_correct-horse-battery-staple"
        keys.create(ours, "bootstrap", ["admin"], key=chosen)
        with db.read() as session:
            stored = session.execute(select(ApiKey).where(col(ApiKey.name) == "bootstrap")).scalar_one()
        assert stored.digest == keys.digest(chosen, b"p" * 32) != hashlib.sha256(chosen.encode()).hexdigest()
        assert stored.prefix == keys.handle(chosen, b"p" * 32)
        assert keys.authenticate(ours, chosen) is not None
        assert keys.authenticate(theirs, chosen) is None
    finally:
        ours.dispose()
        theirs.dispose()


def _legacy_row(db: Database, key: str, name: str) -> int:
    """A key as an earlier version stored it: unkeyed SHA-256, the handle from it."""
    legacy = hashlib.sha256(key.encode()).hexdigest()
    with db.write() as session:
        row = ApiKey(name=name, prefix=legacy[:12], digest=legacy, scopes="read", created_at=utcnow())
        session.add(row)
        session.flush()
        assert row.id is not None
        return row.id


def test_a_digest_stored_before_the_pepper_works_and_is_rehashed_on_first_use(db: Database) -> None:
    key = "pk_" + "a" * 43
    key_id = _legacy_row(db, key, "old reader")
    assert keys.authenticate(db, "pk_" + "b" * 43) is None
    principal = keys.authenticate(db, key)
    assert principal is not None and principal.key_id == key_id and principal.scopes == {"read"}
    with db.read() as session:
        stored = session.get(ApiKey, key_id)
    assert stored is not None
    assert (stored.digest, stored.prefix) == (
        keys.digest(key, keys.pepper_of(db)),
        keys.handle(key, keys.pepper_of(db)),
    )
    assert keys.authenticate(db, key) == principal  # and on, by the keyed digest


def test_a_bootstrap_key_stored_before_the_pepper_keeps_its_row(db: Database) -> None:
    chosen = "pk_correct-horse-battery-staple"
    key_id = _legacy_row(db, chosen, "bootstrap-admin")
    keys.create(db, "bootstrap-admin", ["admin"], key=chosen)  # what every start does with it
    with db.read() as session:
        rows = session.execute(select(ApiKey).where(col(ApiKey.name) == "bootstrap-admin")).scalars().all()
    assert [(r.id, r.digest, r.scopes) for r in rows] == [
        (key_id, keys.digest(chosen, keys.pepper_of(db)), "admin")
    ]


def test_the_pepper_is_made_once_and_kept_in_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    got: list[bytes] = []
    # Processes starting together (api, worker, dispatcher) race to make it: all end with the same one.
    racers = [threading.Thread(target=lambda: got.append(key_pepper(settings))) for _ in range(8)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    assert len(set(got)) == 1 and len(got[0]) == 64
    assert stat.S_IMODE((data / "key.pepper").stat().st_mode) == 0o600
    assert sorted(p.name for p in data.iterdir()) == ["key.pepper"]
    assert key_pepper(settings) == got[0]

    # A key made through one process's database works through the next one's, not under another pepper.
    first = open_database(settings, upgrade=True)
    key = keys.create(first, "cli", ["read"])
    first.dispose()
    again = open_database(settings)
    other = open_database(Settings(data_dir=data, key_pepper="another-pepper-of-32-characters!"))
    try:
        assert keys.authenticate(again, key) is not None
        assert keys.authenticate(other, key) is None
    finally:
        again.dispose()
        other.dispose()


def test_a_configured_pepper_is_used_and_a_short_one_refused_without_showing_it(tmp_path: Path) -> None:
    assert key_pepper(Settings(data_dir=tmp_path, key_pepper="a-pepper-of-24-characters")) == (
        b"a-pepper-of-24-characters"
    )
    assert not (tmp_path / "key.pepper").exists()
    with pytest.raises(ValueError, match="at least 16 characters") as refused:
        key_pepper(Settings(data_dir=tmp_path, key_pepper="short-secret"))
    assert "short-secret" not in str(refused.value)
