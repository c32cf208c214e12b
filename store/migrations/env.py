"""Alembic's environment for Pulse's schema.

Migrations run only through ``nftpulse.store.schema`` (``pulse db upgrade``, ``pulse up``, ``pulse db
revision``), which hands over a connection already inside its transaction and holding the schema lock, so
that processes upgrading at once take turns. There is no ``alembic.ini`` and no offline (``--sql``) mode:
the baseline revision inspects the database it upgrades.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import DateTime, String
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from nftpulse.store import models, notify  # noqa: F401  (registers the tables on SQLModel.metadata)
from nftpulse.store.models import UtcDateTime


def render_item(kind: str, obj: Any, autogen: AutogenContext) -> str | Literal[False]:
    """Revisions spell column types in plain SQLAlchemy, so that they never import the models they
    outlive: ``AutoString`` is a ``String``, ``UtcDateTime`` stores a ``DateTime(timezone=True)``."""
    if kind != "type":
        return False
    if isinstance(obj, AutoString):
        return repr(String(obj.length)).replace("String(", "sa.String(")
    if isinstance(obj, UtcDateTime):
        return repr(DateTime(timezone=True)).replace("DateTime(", "sa.DateTime(")
    return False


def run() -> None:
    connection = context.config.attributes.get("connection")
    if context.is_offline_mode() or connection is None:
        raise RuntimeError(
            "Pulse's migrations run against a live database: use `pulse db upgrade` (nftpulse.store.schema)"
        )
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite alters a table by copying it: autogenerate writes such changes as batch operations.
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=render_item,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
