"""The database schema's version: Alembic migrations (``store/migrations``), run under a lock.

Every process checks the database's revision on start and refuses one behind the code's head
(``require_current``); ``pulse db upgrade`` and the embedded ``pulse up`` bring it there (``upgrade``).
A database created before Pulse had migrations (its tables but no ``alembic_version``) upgrades like an
empty one: the baseline revision creates only what such a database lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, MetaData, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel

from nftpulse.store.db import Database

# Alembic logs its plugins' set-up at INFO when first imported, and narrates every context it opens: a
# dozen lines per process start. Quieted before the import; what changed is reported by `pulse db
# upgrade` and logged by the processes that upgrade.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.autogenerate import compare_metadata  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from alembic.util import CommandError  # noqa: E402

SCRIPT_LOCATION = "nftpulse.store:migrations"
UPGRADE_COMMAND = "pulse db upgrade"
#: Postgres advisory lock key under which schema changes run (any constant unlikely to collide).
SCHEMA_LOCK = 0x50554C5345


class SchemaError(RuntimeError):
    """The database cannot serve this version of Pulse as it is; the message says what to do."""


def alembic_config() -> Config:
    """Alembic's configuration, built in code: the migrations ship inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    # New revisions are numbered by hand (``--rev-id 0002``) and named after their message.
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    return cfg


def _scripts() -> tuple[str, set[str]]:
    """The code's head revision and every revision it knows."""
    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    if head is None:
        raise SchemaError("no migrations found in nftpulse/store/migrations")
    return head, {s.revision for s in scripts.walk_revisions()}


def head_revision() -> str:
    return _scripts()[0]


def display_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class SchemaStatus:
    url: str
    #: The revision recorded in the database; None when it has no ``alembic_version``.
    current: str | None
    head: str
    #: How many of Pulse's tables exist: tables without a revision mean a pre-migration database.
    tables: int
    #: Whether this code knows ``current`` (a newer Pulse may have upgraded the database past it).
    known: bool

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def empty(self) -> bool:
        return self.current is None and self.tables == 0

    @property
    def pre_migration(self) -> bool:
        return self.current is None and self.tables > 0

    @property
    def ahead(self) -> bool:
        return self.current is not None and not self.known

    def problem(self) -> str | None:
        """Why processes must not start on this database, naming the command that fixes it; None if they
        may."""
        where = f"The database at {display_url(self.url)}"
        if self.up_to_date:
            return None
        if self.empty:
            return f"{where} has no Pulse schema. Create it with `{UPGRADE_COMMAND}`."
        if self.pre_migration:
            return (
                f"{where} was created before Pulse had schema migrations. "
                f"Bring it to revision {self.head} with `{UPGRADE_COMMAND}`."
            )
        if self.ahead:
            return (
                f"{where} is at schema revision {self.current}, which this version of Pulse does not "
                f"know (its newest is {self.head}): a newer Pulse upgraded it. Run that version."
            )
        return (
            f"{where} is at schema revision {self.current}, behind this version of Pulse "
            f"({self.head}). Run `{UPGRADE_COMMAND}`."
        )


def _status(conn: Connection, url: str) -> SchemaStatus:
    current = MigrationContext.configure(conn).get_current_revision()
    names = set(inspect(conn).get_table_names())
    tables = len(names & set(SQLModel.metadata.tables))
    head, known = _scripts()
    return SchemaStatus(url, current, head, tables, current is None or current in known)


def missing_database(url: str) -> str | None:
    """Why ``url`` names no database, for a SQLite file that does not exist (connecting would create
    it); None otherwise."""
    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:" or Path(path).exists():
        return None
    return f"There is no database at {path}. Create it with `{UPGRADE_COMMAND}`."


def status(db: Database) -> SchemaStatus:
    try:
        with db.read_engine.connect() as conn:
            return _status(conn, db.url)
    except OperationalError as exc:
        raise SchemaError(f"Cannot reach the database at {display_url(db.url)}: {exc.orig}") from exc


def require_current(db: Database) -> None:
    """Raise ``SchemaError`` unless the database is at the code's head revision."""
    problem = status(db).problem()
    if problem is not None:
        raise SchemaError(problem)


def differences(conn: Connection, metadata: MetaData | None = None) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the models (``metadata``, by default
    Pulse's): empty when the revisions account for every model change. Plus, on Postgres, what autogenerate
    does not compare: storage parameters and which columns draw from a sequence."""
    metadata = SQLModel.metadata if metadata is None else metadata
    context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
    found: list[Any] = list(compare_metadata(context, metadata))
    if conn.dialect.name == "postgresql":
        found += _sequence_differences(conn, metadata)
        for table in metadata.sorted_tables:
            wanted = table.dialect_options["postgresql"]["with"] or {}
            row = conn.execute(
                text("SELECT reloptions FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table.name}
            ).first()
            have = dict(o.split("=", 1) for o in (row[0] or [])) if row else {}
            for key, value in wanted.items():
                if have.get(key) != str(value):
                    found.append(("storage_parameter", table.name, key, have.get(key), str(value)))
    return found


def _sequence_differences(conn: Connection, metadata: MetaData) -> list[Any]:
    """Columns that draw from a sequence (serial) where the models say otherwise, or the reverse: Alembic
    does not compare them."""
    rows = conn.execute(
        text(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'"
        )
    ).all()
    have = {(t, c) for t, c in rows}
    wanted = {
        (t.name, t.autoincrement_column.name)
        for t in metadata.sorted_tables
        if t.autoincrement_column is not None
    }
    known = set(metadata.tables)
    return [("serial", t, c, (t, c) in have) for t, c in sorted(have ^ wanted) if t in known]


@dataclass(frozen=True)
class UpgradeResult:
    before: SchemaStatus
    after: str

    @property
    def changed(self) -> bool:
        return self.before.current != self.after


@contextmanager
def _locked(db: Database) -> Iterator[Connection]:
    """A connection in a transaction that holds the schema lock: processes upgrading together take turns,
    and each sees the revision the previous one committed. SQLite's write engine begins ``IMMEDIATE``,
    which holds the database's single write lock; Postgres takes an advisory lock. Both dialects change
    their schema transactionally, so a failed upgrade leaves the database as it was."""
    with db.write_engine.begin() as conn:
        if not db.is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
        yield conn


def upgrade(db: Database, revision: str = "head") -> UpgradeResult:
    """Bring the database to ``revision`` (the code's head by default)."""
    try:
        with _locked(db) as conn:
            before = _status(conn, db.url)
            if before.ahead:
                raise SchemaError(before.problem() or "")
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            after = MigrationContext.configure(conn).get_current_revision()
            if before.pre_migration and after == before.head:
                # The baseline completed what an earlier Pulse created; anything still different (a
                # column changed by hand, say) needs a person, not a guess. Tables Pulse does not know
                # may belong to someone else and stay.
                left = [d for d in differences(conn) if not (isinstance(d, tuple) and d[0] == "remove_table")]
                if left:
                    listed = "\n  ".join(repr(d) for d in left)
                    raise SchemaError(
                        f"The database at {display_url(db.url)} predates migrations and differs from "
                        f"Pulse's schema in ways the upgrade does not repair, so it changed nothing:"
                        f"\n  {listed}"
                    )
    except SchemaError:
        raise
    except Exception as exc:
        # One transaction: whatever failed (a revision, the connection, the lock's wait) changed nothing.
        reason = exc.orig if isinstance(exc, OperationalError) else exc
        raise SchemaError(
            f"Upgrading the database at {display_url(db.url)} failed and changed nothing: {reason}"
        ) from exc
    assert after is not None
    return UpgradeResult(before, after)


def new_revision(db: Database, message: str, rev_id: str, *, autogenerate: bool = True) -> str:
    """Write a new revision file into ``store/migrations/versions`` (for developers, in a checkout): with
    ``autogenerate``, the operations that take the database (at head) to the models. Returns its path."""
    try:
        with _locked(db) as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            script = command.revision(cfg, message=message, autogenerate=autogenerate, rev_id=rev_id)
    except CommandError as exc:  # e.g. the database is not at head, or the id is taken
        raise SchemaError(f"{str(exc).rstrip('.')}: run `{UPGRADE_COMMAND}` first") from exc
    if script is None or isinstance(script, list):
        raise SchemaError("alembic wrote no single revision")
    return str(script.path)
