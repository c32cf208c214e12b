"""The embedded data dir holds secrets (webhook secrets, contacts, push keys, the admin key): its owner
alone may read it, and the SQLite files in it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nftpulse.core.settings import Settings
from nftpulse.services import bootstrap_admin_key, open_database


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_and_database_are_the_owners_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = os.umask(0o022)  # the usual umask, under which SQLite made the file 0644
    try:
        settings = Settings(data_dir=data)
        db = open_database(settings, upgrade=True)
        try:
            key = bootstrap_admin_key(settings, db)
            assert key
        finally:
            db.dispose()
    finally:
        os.umask(before)
    assert _mode(data) == 0o700
    files = sorted(data.glob("pulse.db*"))
    assert files and all(_mode(f) == 0o600 for f in files), {f.name: oct(_mode(f)) for f in files}
    assert _mode(data / "admin.key") == 0o600

    # A data dir an earlier version left open is closed at the next start.
    os.chmod(data, 0o755)
    os.chmod(data / "pulse.db", 0o644)
    open_database(Settings(data_dir=data)).dispose()
    assert _mode(data) == 0o700 and _mode(data / "pulse.db") == 0o600
