"""Time without events: each live collection's next moment at which a figure moves with time alone
(``collection_clocks``), read by Pulse's clock workflow.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

Only adds a table, so processes of the previous version keep working against an upgraded database.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "collection_clocks",
        sa.Column("partition", sa.String(length=120), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("partition"),
    )
    op.create_index("ix_collection_clocks_due_at", "collection_clocks", ["due_at"])


def downgrade() -> None:
    op.drop_index("ix_collection_clocks_due_at", table_name="collection_clocks")
    op.drop_table("collection_clocks")
