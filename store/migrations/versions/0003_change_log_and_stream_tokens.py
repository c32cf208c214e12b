"""The live change feed: its durable log (``change_log``), the log's pruning watermark
(``change_log_state``) and short-lived stream tokens (``stream_tokens``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Only adds tables, so processes of the previous version keep working against an upgraded database.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "change_log",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("entity_key", sa.String(length=200), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("causes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_change_log_created", "change_log", ["created_at"])
    op.create_index("ix_change_log_entity", "change_log", ["entity_key", "id"])
    op.create_table(
        "change_log_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pruned_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "stream_tokens",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.BigInteger(), nullable=False),
        sa.Column("scopes", sa.String(length=2000), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_index("ix_stream_tokens_expires", "stream_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_stream_tokens_expires", table_name="stream_tokens")
    op.drop_table("stream_tokens")
    op.drop_table("change_log_state")
    op.drop_index("ix_change_log_entity", table_name="change_log")
    op.drop_index("ix_change_log_created", table_name="change_log")
    op.drop_table("change_log")
