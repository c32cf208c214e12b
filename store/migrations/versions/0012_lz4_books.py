"""Books and their history segments compressed with LZ4 on Postgres, not pglz.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

A collection's book is rewritten by every batch that touches it, and a 10,000-token collection's is about
430 KB of JSON: Postgres compressed it with pglz in about 10 ms per save, with LZ4 in about 1 ms
(``docs/performance.md``). Rows a few kilobytes long, most collections', are stored uncompressed either
way. Only the column's setting changes: values already stored stay as they are until their next write,
and Postgres reads both. A no-op on SQLite, and on a Postgres built without LZ4 (or before 14).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMPRESSED = (("collection_books", "book"), ("collection_book_history", "entries"))


def _lz4_available(bind: sa.Connection) -> bool:
    if bind.dialect.name != "postgresql":
        return False
    offered = bind.execute(
        sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    return offered is not None and "lz4" in offered


def _compress_with(method: str) -> None:
    if not _lz4_available(op.get_bind()):
        return
    for table, column in COMPRESSED:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}")


def upgrade() -> None:
    _compress_with("lz4")


def downgrade() -> None:
    _compress_with("pglz")
