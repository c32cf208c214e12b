"""Events' ``log_index`` as a 64-bit integer (the API accepts any int64, as for ``block_number``), and a
subscription disabled by a rule that failed in detection (``disabled_at``, ``disabled_reason``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

SQLite's INTEGER already holds 64 bits, so only Postgres changes the column's type (a rewrite of the
events table under an exclusive lock: plan the upgrade of a large log for a quiet moment). The new
subscription columns are nullable, so processes of the previous version keep working against an upgraded
database.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column(
            "events", "log_index", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=True
        )
    op.add_column("notify_subscriptions", sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("notify_subscriptions", sa.Column("disabled_reason", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notify_subscriptions") as batch:
        batch.drop_column("disabled_reason")
        batch.drop_column("disabled_at")
    if op.get_bind().dialect.name != "sqlite":
        # Values beyond int32 cannot go back: the downgrade fails on them rather than truncating.
        op.alter_column(
            "events", "log_index", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=True
        )
