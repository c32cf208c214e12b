"""Baseline: the schema Pulse had when it took up migrations.

Revision ID: 0001
Revises:
Create Date: 2026-11-30

Upgrades an empty database, and equally one that Pulse's earlier ``create_all`` made: such a database has
every table that existed when it was created, but none added later (``change_batches``,
``collection_book_history``, ``notify_watch_generation``…), no column added later (``events.traceparent``)
and no storage parameter set later (``entity_views``' fillfactor). This revision creates what is missing
and leaves the rest, with its rows, as it is. ``nftpulse.store.schema.upgrade`` then checks that the result
equals what the models describe, and rolls everything back if it does not.

The tables are written out here, not imported from the models: this revision must create the same schema
after the models have moved on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def baseline_tables() -> sa.MetaData:
    meta = sa.MetaData()
    sa.Table(
        "api_keys",
        meta,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=1000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
        sa.Index("ix_api_keys_prefix", "prefix"),
    )
    sa.Table(
        "change_batches",
        meta,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("owner", sa.String(length=300), nullable=False),
        sa.Column("cause", sa.String(length=300), nullable=False),
        sa.Column("changes", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.Index("ix_change_batches_owner", "owner", "id"),
    )
    sa.Table(
        "collection_book_history",
        meta,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("book_key", sa.String(length=120), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("entries", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.Index("ix_collection_book_history_book_key", "book_key"),
    )
    sa.Table(
        "collection_books",
        meta,
        sa.Column("key", sa.String(length=120), nullable=False),
        sa.Column("chain", sa.String(length=32), nullable=False),
        sa.Column("contract", sa.String(length=42), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("book", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    sa.Table(
        "entity_views",
        meta,
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("collection_key", sa.String(length=120), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("view", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
        sa.Index("ix_entity_views_collection", "collection_key"),
        # Room on each page for in-place (heap-only) rewrites of the views.
        postgresql_with={"fillfactor": 60},
    )
    sa.Table(
        "events",
        meta,
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("chain", sa.String(length=32), nullable=False),
        sa.Column("contract", sa.String(length=42), nullable=False),
        sa.Column("token_id", sa.String(length=80), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("log_index", sa.Integer(), nullable=True),
        sa.Column("tx_hash", sa.String(length=80), nullable=True),
        sa.Column("traceparent", sa.String(length=64), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("partition", sa.String(length=120), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("priority_class", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("route", sa.String(length=16), nullable=True),
        sa.Column("workflow_id", sa.String(length=300), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("ever_applied", sa.Boolean(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("error_category", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("source", "external_id", name="uq_events_source_id"),
        sa.Index("ix_events_partition_pending", "partition", "status", "seq"),
        sa.Index("ix_events_pending", "status", "seq"),
        sa.Index("ix_events_received_at", "received_at"),
    )
    sa.Table(
        "notifications",
        meta,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("idempotency_key", sa.String(length=80), nullable=False),
        sa.Column("user_id", sa.String(length=120), nullable=False),
        sa.Column("subscription_id", sa.String(length=40), nullable=True),
        sa.Column("rule_id", sa.String(length=80), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("entity_key", sa.String(length=200), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("body", sa.String(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("route", sa.String(length=16), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("magnitude", sa.Float(), nullable=False),
        sa.Column("cause", sa.String(length=200), nullable=True),
        sa.Column("workflow_id", sa.String(length=300), nullable=True),
        sa.Column("inbox_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key", name="uq_notifications_idempotency_key"),
        sa.Index("ix_notifications_user_seq", "user_id", "id"),
        sa.Index("ix_notifications_user_unread", "user_id", "read_at", "id"),
    )
    sa.Table(
        "notify_detections",
        meta,
        sa.Column("cause", sa.String(length=200), nullable=False),
        sa.Column("notification_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("cause"),
    )
    sa.Table(
        "notify_rule_states",
        meta,
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.Column("rule_id", sa.String(length=80), nullable=False),
        sa.Column("entity_key", sa.String(length=200), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subscription_id", "rule_id", "entity_key"),
    )
    sa.Table(
        "notify_sends",
        meta,
        sa.Column("notification_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("provider_message_id", sa.String(length=200), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("notification_id", "channel", "step"),
    )
    sa.Table(
        "notify_users",
        meta,
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("locale", sa.String(length=20), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("phone", sa.String(length=20), nullable=True),
        sa.Column("push_subscriptions", sa.JSON(), nullable=False),
        sa.Column("webhooks", sa.JSON(), nullable=False),
        sa.Column("quiet_hours", sa.JSON(), nullable=True),
        sa.Column("digest", sa.JSON(), nullable=True),
        sa.Column("preferences", sa.JSON(), nullable=False),
        sa.Column("escalation", sa.JSON(), nullable=False),
        sa.Column("critical_breakthrough", sa.Boolean(), nullable=False),
        sa.Column("hourly_budget", sa.Integer(), nullable=False),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    sa.Table(
        "notify_watch_generation",
        meta,
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    sa.Table(
        "rates",
        meta,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("base", sa.String(length=12), nullable=False),
        sa.Column("quote", sa.String(length=12), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rate", sa.String(length=80), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_seq"),
        sa.Index("ix_rates_pair_at", "base", "quote", "at"),
    )
    sa.Table(
        "notification_deliveries",
        meta,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("notification_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("provider_message_id", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("notification_id", "channel", name="uq_deliveries_notification_channel"),
        sa.ForeignKeyConstraint(["notification_id"], ["notifications.id"]),
        sa.Index("ix_deliveries_provider_id", "provider_message_id"),
    )
    sa.Table(
        "notify_subscriptions",
        meta,
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=120), nullable=False),
        sa.Column("target", sa.String(length=16), nullable=False),
        sa.Column("entity_key", sa.String(length=200), nullable=True),
        sa.Column("wallets", sa.JSON(), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["notify_users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.Index("ix_notify_subscriptions_user", "user_id", "created_at"),
    )
    sa.Table(
        "notify_subscription_keys",
        meta,
        sa.Column("entity_key", sa.String(length=200), nullable=False),
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(["subscription_id"], ["notify_subscriptions.id"]),
        sa.PrimaryKeyConstraint("entity_key", "subscription_id"),
        sa.Index("ix_notify_subscription_keys_entity", "entity_key"),
    )
    return meta


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    for table in baseline_tables().sorted_tables:
        if table.name not in existing:
            table.create(bind)
        else:
            _complete(bind, inspector, table)


def _complete(bind: sa.Connection, inspector: sa.Inspector, table: sa.Table) -> None:
    """Add to a table an earlier Pulse created what it lacks: columns (all of them nullable: no
    NOT NULL column was ever added to an existing table), indexes, storage parameters."""
    columns = {c["name"] for c in inspector.get_columns(table.name)}
    for column in table.columns:
        if column.name in columns:
            continue
        if not column.nullable:
            raise RuntimeError(
                f"{table.name}.{column.name} is missing and NOT NULL: no Pulse made this table"
            )
        op.add_column(table.name, column._copy())
    indexes = {i["name"] for i in inspector.get_indexes(table.name)}
    for index in table.indexes:
        if index.name not in indexes:
            index.create(bind)
    options = table.dialect_options["postgresql"]["with"]
    if bind.dialect.name == "postgresql" and options:
        settings = ", ".join(f"{k} = {v}" for k, v in options.items())
        op.execute(sa.text(f"ALTER TABLE {table.name} SET ({settings})"))


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(baseline_tables().sorted_tables):
        table.drop(bind)
