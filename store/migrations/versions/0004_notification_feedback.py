"""Usefulness: users' verdicts on notifications (``notification_feedback``), the adaptive state of their
rules (``notify_subscriptions.original_rules`` and ``.adaptation``), when each user reads
(``notify_read_hours``) and whether their non-urgent items wait for that hour (``notify_users.send_time``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Adds tables and nullable columns only, so processes of the previous version keep working against an
upgraded database.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notification_feedback",
        sa.Column("notification_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.String(length=120), nullable=False),
        sa.Column("subscription_id", sa.String(length=40), nullable=True),
        sa.Column("rule_id", sa.String(length=80), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("rule_kind", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("notification_id"),
    )
    op.create_index(
        "ix_notification_feedback_rule",
        "notification_feedback",
        ["subscription_id", "rule_id", "updated_at"],
    )
    op.create_table(
        "notify_read_hours",
        sa.Column("user_id", sa.String(length=120), nullable=False),
        sa.Column("hours", sa.JSON(), nullable=False),
        sa.Column("reads", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.add_column("notify_subscriptions", sa.Column("original_rules", sa.JSON(), nullable=True))
    op.add_column("notify_subscriptions", sa.Column("adaptation", sa.JSON(), nullable=True))
    op.add_column("notify_users", sa.Column("send_time", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notify_users") as batch:
        batch.drop_column("send_time")
    with op.batch_alter_table("notify_subscriptions") as batch:
        batch.drop_column("adaptation")
        batch.drop_column("original_rules")
    op.drop_table("notify_read_hours")
    op.drop_index("ix_notification_feedback_rule", table_name="notification_feedback")
    op.drop_table("notification_feedback")
