"""Detection's look for corrections not handed on yet: a partial index of just those rows
(``ix_notifications_pending_corrections``) instead of a scan of every notification after every batch.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30

Only adds an index, so processes of the previous version keep working against an upgraded database.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = sa.text("kind = 'correction' AND workflow_id IS NULL AND inbox_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_notifications_pending_corrections",
        "notifications",
        ["id"],
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_pending_corrections", table_name="notifications")
