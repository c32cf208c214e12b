"""Schema migrations, on SQLite and Postgres: upgrades keep every row, the models and the migrations agree,
a database created before migrations is completed, and nothing runs on a database behind the code."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

from nftpulse.core.settings import Settings
from nftpulse.services import open_database
from nftpulse.store import keys, schema
from nftpulse.store.db import Database
from nftpulse.store.schema import SchemaError

REPO = Path(__file__).resolve().parents[1]
MIGRATIONS = REPO / "store" / "migrations"
#: Tables the baseline has that an earlier Pulse's create_all may not have made (added to the models later).
LATER_TABLES = ("change_batches", "collection_book_history", "notify_watch_generation")


def _baseline_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "baseline_0001", MIGRATIONS / "versions" / "0001_baseline.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BASELINE = _baseline_module()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """An empty database (no schema at all)."""
    db = Database(database_url)
    yield db
    db.dispose()


# -- representative rows ------------------------------------------------------------------------------


def _value(table: sa.Table, column: sa.Column[Any], i: int) -> Any:
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return i % 2 == 0
    if isinstance(kind, sa.Integer):
        return 2**40 + i if isinstance(kind, sa.BigInteger) else 7 + i
    if isinstance(kind, sa.Float):
        return 1.25 + i
    if isinstance(kind, sa.String):
        text = f"{table.name[:4]}-{column.name}-{i}-é"
        return text[-kind.length :] if kind.length else text + " " + "long text " * 20
    if isinstance(kind, sa.DateTime):
        return datetime(2026, 11, 30, 12, i, 30, 123456, tzinfo=UTC)
    if isinstance(kind, sa.JSON):
        return {"column": column.name, "row": i, "items": [1, "two", None, {"x": 1.5}]}
    if isinstance(kind, sa.LargeBinary):
        return bytes([i, 0, 255]) * 4
    raise AssertionError(f"no sample value for {table.name}.{column.name}: {kind!r}")


def insert_rows(conn: sa.Connection, meta: sa.MetaData, per_table: int = 3) -> int:
    """Rows in every table of ``meta`` that exists, in every column that exists; foreign keys point at
    rows inserted before, ids the database assigns stay its own. Returns how many rows."""
    inspector = sa.inspect(conn)
    present = set(inspector.get_table_names())
    inserted: dict[str, list[dict[str, Any]]] = {}
    count = 0
    for table in meta.sorted_tables:
        if table.name not in present:
            continue
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        inserted[table.name] = []
        for i in range(per_table):
            row: dict[str, Any] = {}
            for column in table.columns:
                if column.name not in columns or column is table.autoincrement_column:
                    continue
                fks = list(column.foreign_keys)
                if fks:
                    target = fks[0].column
                    row[column.name] = inserted[target.table.name][i][target.name]
                else:
                    row[column.name] = _value(table, column, i)
            result = conn.execute(sa.insert(table).values(row))
            if table.autoincrement_column is not None:
                row[table.autoincrement_column.name] = result.inserted_primary_key[0]
            inserted[table.name].append(row)
            count += 1
    return count


def _normal(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def snapshot(conn: sa.Connection, meta: sa.MetaData) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of ``meta`` that exists, in the columns that exist, by primary key."""
    inspector = sa.inspect(conn)
    out: dict[str, list[dict[str, Any]]] = {}
    for table in meta.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        names = {c["name"] for c in inspector.get_columns(table.name)}
        cols = [c for c in table.columns if c.name in names]
        rows = conn.execute(sa.select(*cols).order_by(*table.primary_key.columns)).mappings()
        out[table.name] = [{k: _normal(v) for k, v in row.items()} for row in rows]
    return out


# -- databases as an earlier Pulse left them ----------------------------------------------------------


def make_pre_migration(db: Database, *, old: bool) -> None:
    """The schema ``create_all`` made: today's tables (``old=False``), or those of a Pulse from before
    ``events.traceparent``, the later tables, ``ix_events_received_at`` and entity_views' fillfactor."""
    with db.write_engine.begin() as conn:
        BASELINE.baseline_tables().create_all(conn)
        if old:
            for name in LATER_TABLES:
                conn.execute(sa.text(f"DROP TABLE {name}"))
            conn.execute(sa.text("DROP INDEX ix_events_received_at"))
            conn.execute(sa.text("ALTER TABLE events DROP COLUMN traceparent"))
            if not db.is_sqlite:
                conn.execute(sa.text("ALTER TABLE entity_views RESET (fillfactor)"))


# -- (a) upgrades keep every row ----------------------------------------------------------------------


def test_upgrade_from_the_baseline_keeps_every_row(database: Database) -> None:
    result = schema.upgrade(database, "0001")
    assert (result.before.current, result.after) == (None, "0001")
    meta = BASELINE.baseline_tables()
    with database.write_engine.begin() as conn:
        rows = insert_rows(conn, meta)
    with database.read_engine.connect() as conn:
        before = snapshot(conn, meta)
    assert rows == 3 * len(meta.tables) == sum(len(v) for v in before.values())

    schema.upgrade(database)

    with database.read_engine.connect() as conn:
        assert snapshot(conn, meta) == before
    assert schema.status(database).up_to_date


def _with_one_revision_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the code at a copy of the migrations with one revision more (``9999``, after the code's head,
    which it returns): a code version newer than the database."""
    head = ScriptDirectory.from_config(schema.alembic_config()).get_current_head()
    assert head is not None
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_event_note.py").write_text(
        '"""Add events.note."""\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        'revision = "9999"\n'
        f'down_revision = "{head}"\n'
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    op.add_column("events", sa.Column("note", sa.String(40), nullable=True))\n'
        '    op.create_index("ix_events_note", "events", ["note"])\n\n\n'
        "def downgrade() -> None:\n"
        '    op.drop_index("ix_events_note", "events")\n'
        '    op.drop_column("events", "note")\n'
    )
    monkeypatch.setattr(schema, "SCRIPT_LOCATION", str(scripts))
    return head


def test_a_database_behind_the_code_is_refused_then_upgraded_with_its_rows(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema.upgrade(database)
    meta = BASELINE.baseline_tables()
    with database.write_engine.begin() as conn:
        insert_rows(conn, meta)
        before = snapshot(conn, meta)

    head = _with_one_revision_more(tmp_path, monkeypatch)
    state = schema.status(database)
    assert (state.current, state.head, state.up_to_date, state.ahead) == (head, "9999", False, False)
    with pytest.raises(SchemaError, match=rf"revision {head}, behind .*\(9999\)\. Run `pulse db upgrade`"):
        schema.require_current(database)

    result = schema.upgrade(database)
    assert (result.before.current, result.after) == (head, "9999")
    schema.require_current(database)
    with database.read_engine.connect() as conn:
        assert snapshot(conn, meta) == before
        notes = conn.execute(sa.text("SELECT count(*) FROM events WHERE note IS NULL")).scalar()
        assert notes == len(before["events"])

    # The older code, back on the newer database: refuses it rather than guess.
    monkeypatch.undo()
    state = schema.status(database)
    assert state.ahead
    with pytest.raises(SchemaError, match=r"does not know .* a newer Pulse upgraded it"):
        schema.require_current(database)
    with pytest.raises(SchemaError, match="newer Pulse"):
        schema.upgrade(database)


@pytest.mark.parametrize("old", [False, True], ids=["as-created-today", "from-before-traceparent"])
async def test_a_pre_migration_database_is_completed_and_keeps_its_rows(
    database: Database, old: bool, tmp_path: Path
) -> None:
    make_pre_migration(database, old=old)
    meta = BASELINE.baseline_tables()
    with database.write_engine.begin() as conn:
        insert_rows(conn, meta)
    with database.read_engine.connect() as conn:
        before = snapshot(conn, meta)
    state = schema.status(database)
    assert state.pre_migration and state.tables == len(meta.tables) - (len(LATER_TABLES) if old else 0)
    with pytest.raises(SchemaError, match=r"created before Pulse had schema migrations.*`pulse db upgrade`"):
        schema.require_current(database)

    result = schema.upgrade(database)

    assert result.before.pre_migration and result.after == schema.head_revision()
    with database.read_engine.connect() as conn:
        assert schema.differences(conn) == []
        after = snapshot(conn, meta)
    for name, rows in before.items():
        if old and name == "events":
            rows = [{**r, "traceparent": None} for r in rows]
        assert after[name] == rows, name
    assert schema.upgrade(database).changed is False

    # What failed before (every ingest, an undefined-column error as a 500) now works, through the API.
    from nftpulse.api.app import create_app
    from nftpulse.store.cache import NoCache
    from nftpulse.synth import Stream

    key = keys.create(database, "ingest", ["ingest"])
    app = create_app(Settings(database_url=database.url, data_dir=tmp_path), database, NoCache(), None)
    event = next(iter(Stream(collections=1, tokens_per_collection=2, seed=3).mints()))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://pulse.test"
    ) as http:
        resp = await http.post(
            "/v1/events", json={"events": [event]}, headers={"Authorization": f"Bearer {key}"}
        )
    assert resp.status_code == 202, resp.text


@pytest.mark.parametrize("change", ["altered-by-hand", "not-null-column-missing"])
def test_a_pre_migration_database_that_differs_is_left_as_it_was(database: Database, change: str) -> None:
    """A difference no revision accounts for stops the upgrade before it commits: a column changed by hand
    (found by the comparison after the baseline), or a NOT NULL column missing (the baseline cannot invent
    its values)."""
    make_pre_migration(database, old=True)
    with database.write_engine.begin() as conn:
        if change == "not-null-column-missing":
            conn.execute(sa.text("ALTER TABLE events DROP COLUMN ever_applied"))
            expected = r"changed nothing: events\.ever_applied is missing and NOT NULL"
        elif database.is_sqlite:
            conn.execute(sa.text("ALTER TABLE api_keys ADD COLUMN owner VARCHAR(40) NOT NULL DEFAULT 'x'"))
            expected = r"differs from Pulse's schema.*changed nothing"
        else:
            conn.execute(sa.text("ALTER TABLE api_keys ALTER COLUMN scopes TYPE VARCHAR(20)"))
            expected = r"differs from Pulse's schema.*changed nothing"
    with pytest.raises(SchemaError, match=expected):
        schema.upgrade(database)
    state = schema.status(database)
    assert state.pre_migration
    with database.read_engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
        events = {c["name"] for c in sa.inspect(conn).get_columns("events")}
    assert not names & {*LATER_TABLES, "alembic_version"} and "traceparent" not in events


def test_concurrent_upgrades_take_turns(database_url: str) -> None:
    """Processes started together (compose's migrate beside a `pulse up`, several of them) all succeed and
    the schema is created once."""
    results: list[schema.UpgradeResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        db = Database(database_url)
        try:
            start.wait()
            results.append(schema.upgrade(db))
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sum(r.changed for r in results) == 1 and {r.after for r in results} == {schema.head_revision()}
    db = Database(database_url)
    with db.read_engine.connect() as conn:
        assert schema.differences(conn) == []
    db.dispose()


# -- (b) the models and the migrations agree ----------------------------------------------------------


def test_the_models_match_the_migrations(database: Database) -> None:
    """Fails when a model changes without a revision: write one with
    `pulse db revision -m "..." --rev-id <next>` against a database at head, then read and test it."""
    schema.upgrade(database)
    with database.read_engine.connect() as conn:
        assert schema.differences(conn) == []


def test_the_comparison_sees_a_model_change(database: Database) -> None:
    """The guard above can fail: a column, an index and a storage parameter no revision made are found."""
    schema.upgrade(database)
    changed = sa.MetaData()
    for table in SQLModel.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["events"].append_column(sa.Column("added_without_a_revision", sa.Integer()))
    sa.Index("ix_rates_added", changed.tables["rates"].c.quote)
    changed.tables["entity_views"].dialect_options["postgresql"]["with"] = {"fillfactor": 70}
    with database.read_engine.connect() as conn:
        found = schema.differences(conn, changed)
    kinds = {(d[0], d[2] if d[0] == "add_column" else None) for d in found if isinstance(d, tuple)}
    assert ("add_column", "events") in kinds
    assert any(d[0] == "add_index" and d[1].name == "ix_rates_added" for d in found if isinstance(d, tuple))
    if not database.is_sqlite:
        assert ("storage_parameter", "entity_views", "fillfactor", "60", "70") in found


def test_the_baseline_is_the_only_head_and_ships_with_the_package() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(schema.alembic_config())
    assert len(scripts.get_heads()) == 1
    assert Path(scripts.dir).resolve() == MIGRATIONS.resolve()
    assert (MIGRATIONS / "script.py.mako").is_file()


# -- (c) processes refuse a database behind the code; `pulse up` upgrades ------------------------------


def test_processes_refuse_an_empty_database_and_pulse_up_upgrades_it(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(database_url=database_url, data_dir=tmp_path)
    with pytest.raises(SchemaError, match="`pulse db upgrade`"):
        open_database(settings)
    db = open_database(settings, upgrade=True)  # what the embedded `pulse up` does
    try:
        assert schema.status(db).up_to_date
    finally:
        db.dispose()
    open_database(settings).dispose()


def _pulse(*args: str, database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(PULSE_DATABASE_URL=database_url, PULSE_DATA_DIR=str(data_dir), PULSE_LOG_LEVEL="WARNING")
    return subprocess.run(
        [sys.executable, "-m", "nftpulse.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pulse_api_refuses_until_pulse_db_upgrade(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        sqlite3.connect(database_url.removeprefix("sqlite:///")).close()  # exists, but empty
    api = _pulse("api", database_url=database_url, data_dir=tmp_path)
    assert api.returncode == 2, api.stderr
    assert "has no Pulse schema. Create it with `pulse db upgrade`" in api.stderr

    current = _pulse("db", "current", database_url=database_url, data_dir=tmp_path)
    assert current.returncode == 1 and "revision: none (no Pulse schema)" in current.stdout

    upgrade = _pulse("db", "upgrade", database_url=database_url, data_dir=tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"schema created at revision {schema.head_revision()}" in upgrade.stdout

    current = _pulse("db", "current", database_url=database_url, data_dir=tmp_path)
    assert current.returncode == 0, current.stderr
    assert f"revision: {schema.head_revision()}" in current.stdout and "up to date" in current.stdout


# -- (d) `pulse verify` on a missing or empty database -------------------------------------------------


def test_verify_on_a_missing_or_empty_database_says_so_and_fails(database_url: str, tmp_path: Path) -> None:
    verify = _pulse("verify", database_url=database_url, data_dir=tmp_path)
    assert verify.returncode == 2, verify.stdout + verify.stderr
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        assert f"There is no database at {path}" in verify.stderr
        assert not path.exists(), "verify created the database it was asked to check"
        sqlite3.connect(path).close()
        verify = _pulse("verify", database_url=database_url, data_dir=tmp_path)
        assert verify.returncode == 2
    assert "has no Pulse schema" in verify.stderr
    db = Database(database_url)
    try:
        assert schema.status(db).empty, "verify created a schema"
    finally:
        db.dispose()


def test_verify_refuses_a_database_without_the_schema(database: Database) -> None:
    from nftpulse.verify import verify

    with pytest.raises(SchemaError, match="has no Pulse schema"):
        verify(database)
    schema.upgrade(database)
    report = verify(database)
    assert report.ok and report.collections == 0


def _compression(db: Database, table: str, column: str) -> str:
    with db.read_engine.connect() as conn:
        return str(
            conn.execute(
                sa.text(
                    "SELECT attcompression FROM pg_attribute "
                    "WHERE attrelid = CAST(:table AS regclass) AND attname = :column"
                ),
                {"table": table, "column": column},
            ).scalar()
        )


def test_books_are_compressed_with_lz4_on_postgres_and_read_back_whole(database: Database) -> None:
    """Revision 0012: on Postgres the book columns compress with LZ4 (``l``; ``p`` is pglz), a large book
    written before and after the change reads back byte for byte, and the downgrade sets pglz again. On
    SQLite the revision changes nothing."""
    schema.upgrade(database, "0011")
    # A large, compressible book: what a 10,000-token collection's core looks like to the column.
    large = (
        b'{"rarity_published":{' + b",".join(b'"%d":[0.91%d,%d]' % (i, i, i) for i in range(20_000)) + b"}}"
    )
    row = {"key": "collection:ethereum:0xold", "chain": "ethereum", "contract": "0xold", "book": large}
    insert = sa.text(
        "INSERT INTO collection_books (key, chain, contract, version, book, updated_at) "
        "VALUES (:key, :chain, :contract, 1, :book, CURRENT_TIMESTAMP)"
    )
    with database.write_engine.begin() as conn:
        conn.execute(insert, row)
    schema.upgrade(database)
    with database.write_engine.begin() as conn:
        conn.execute(insert, {**row, "key": "collection:ethereum:0xnew", "contract": "0xnew"})
    with database.read_engine.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT key, book FROM collection_books")).all())
    assert {bytes(v) for v in stored.values()} == {large} and len(stored) == 2
    if database.is_sqlite:
        return
    with database.read_engine.connect() as conn:
        offered = conn.execute(
            sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        ).scalar()
    if not offered or "lz4" not in offered:
        # A Postgres built without LZ4 keeps its default, which the revision leaves alone.
        assert _compression(database, "collection_books", "book") == ""
        return
    assert _compression(database, "collection_books", "book") == "l"
    assert _compression(database, "collection_book_history", "entries") == "l"
    with database.read_engine.connect() as conn:
        methods = conn.execute(
            sa.text("SELECT key, pg_column_compression(book) FROM collection_books ORDER BY key")
        ).all()
    assert methods == [("collection:ethereum:0xnew", "lz4"), ("collection:ethereum:0xold", "pglz")]
    with database.write_engine.begin() as conn:
        cfg = schema.alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0011")
    assert _compression(database, "collection_books", "book") == "p"
