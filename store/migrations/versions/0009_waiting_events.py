"""Events that wait for what they need: ``events.waiting_for`` (what a parked event waits for, e.g.
``rate:USDC/ETH``) and ``events.waiting_since`` (when it started waiting: it fails after
``PULSE_WAIT_MAX_SECONDS``), with an index to release and expire them.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("waiting_for", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_events_waiting", "events", ["status", "waiting_for"])


def downgrade() -> None:
    op.drop_index("ix_events_waiting", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("waiting_since")
        batch.drop_column("waiting_for")
