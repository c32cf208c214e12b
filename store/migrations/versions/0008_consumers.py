"""Consumers: other services' webhook endpoints fed from the change log (``consumers``), and each change's
delivery to one of them (``consumer_deliveries``: the outbox the runner sends from and the delivery log).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

Only adds tables, so processes of the previous version keep working against an upgraded database.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consumers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("keys", sa.JSON(), nullable=False),
        sa.Column("prefixes", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("disabled_reason", sa.String(length=500), nullable=True),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("replays", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "consumer_deliveries",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("consumer_id", sa.String(length=40), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("entity_key", sa.String(length=200), nullable=False),
        sa.Column("message_id", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("response_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("consumer_id", "cursor", "generation", name="uq_consumer_deliveries_item"),
    )
    op.create_index("ix_consumer_deliveries_consumer", "consumer_deliveries", ["consumer_id", "id"])
    op.create_index("ix_consumer_deliveries_created", "consumer_deliveries", ["consumer_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_consumer_deliveries_created", table_name="consumer_deliveries")
    op.drop_index("ix_consumer_deliveries_consumer", table_name="consumer_deliveries")
    op.drop_table("consumer_deliveries")
    op.drop_table("consumers")
