"""Signed sources' secrets created through the API (``source_secrets``) and the metadata fetcher's durable
queue (``metadata_fetches``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

Only adds tables, so processes of the previous version keep working against an upgraded database.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "source_secrets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_source_secrets_source", "source_secrets", ["source"])
    op.create_table(
        "metadata_fetches",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("chain", sa.String(length=32), nullable=False),
        sa.Column("contract", sa.String(length=42), nullable=False),
        sa.Column("token_id", sa.String(length=80), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "chain", "contract", "token_id", "block_number", "log_index", name="uq_metadata_fetches_cause"
        ),
    )
    op.create_index("ix_metadata_fetches_due", "metadata_fetches", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_metadata_fetches_due", table_name="metadata_fetches")
    op.drop_table("metadata_fetches")
    op.drop_index("ix_source_secrets_source", table_name="source_secrets")
    op.drop_table("source_secrets")
