"""Reorganisations and retractions: the follower's recent block headers (``chain_blocks``) and the
events retracted so far (``event_retractions``, also for retractions that arrive before their event).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

Only adds tables, so processes of the previous version keep working against an upgraded database.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chain_blocks",
        sa.Column("chain", sa.String(length=32), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=66), nullable=False),
        sa.Column("parent_hash", sa.String(length=66), nullable=False),
        sa.PrimaryKeyConstraint("chain", "number"),
    )
    op.create_table(
        "event_retractions",
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("partition", sa.String(length=120), nullable=False),
        sa.Column("retraction_seq", sa.BigInteger(), nullable=False),
        sa.Column("retracted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("partition", "source", "external_id"),
    )


def downgrade() -> None:
    op.drop_table("event_retractions")
    op.drop_table("chain_blocks")
