"""SQLModel tables: the event log, API keys, collection books and the entity read models."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    TypeDecorator,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

# SQLite only autoincrements an INTEGER PRIMARY KEY; Postgres wants a 64-bit sequence.
BigId = BigInteger().with_variant(Integer, "sqlite")


class EventStatus(StrEnum):
    RECEIVED = "received"
    DISPATCHED = "dispatched"
    #: Internal: state committed, cache not yet invalidated. Reported as ``dispatched``.
    APPLIED = "applied"
    PROCESSED = "processed"
    FAILED = "failed"
    #: Taken back by a retraction (``store.retractions``): not part of the state, for good.
    RETRACTED = "retracted"
    #: Parked until what it needs arrives (``waiting_for``); fails after ``PULSE_WAIT_MAX_SECONDS``.
    WAITING = "waiting"

    @property
    def public(self) -> str:
        return EventStatus.DISPATCHED.value if self is EventStatus.APPLIED else self.value


class Route(StrEnum):
    PARTITION = "partition"
    OWN = "own"


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect (SQLite hands back naive ones otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _tz() -> Any:
    return UtcDateTime()


class EventRecord(SQLModel, table=True):
    """The event log: the source of truth for processing, replay, status and audit."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("source", "external_id", name="uq_events_source_id"),
        Index("ix_events_pending", "status", "seq"),
        Index("ix_events_partition_pending", "partition", "status", "seq"),
        Index("ix_events_received_at", "received_at"),
        Index("ix_events_waiting", "status", "waiting_for"),
    )

    seq: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    source: str = Field(max_length=100)
    external_id: str = Field(max_length=200)
    type: str = Field(max_length=32)
    schema_version: int = 1
    occurred_at: datetime = Field(sa_type=_tz())
    received_at: datetime = Field(sa_type=_tz())
    chain: str = Field(max_length=32)
    contract: str = Field(max_length=42)
    token_id: str | None = Field(default=None, max_length=80)
    block_number: int | None = Field(default=None, sa_type=BigInteger)
    #: 64-bit on Postgres like ``block_number`` (the API accepts any int64); SQLite's INTEGER is 64-bit.
    log_index: int | None = Field(default=None, sa_type=BigId)
    tx_hash: str | None = Field(default=None, max_length=80)
    #: W3C traceparent of the request that brought the event, when tracing is on.
    traceparent: str | None = Field(default=None, max_length=64)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    partition: str = Field(max_length=120)
    priority: float = 0.0
    priority_class: str = Field(default="normal", max_length=16)
    status: str = Field(default=EventStatus.RECEIVED.value, max_length=16)
    route: str | None = Field(default=None, max_length=16)
    workflow_id: str | None = Field(default=None, max_length=300)
    dispatched_at: datetime | None = Field(default=None, sa_type=_tz())
    processed_at: datetime | None = Field(default=None, sa_type=_tz())
    attempts: int = 0
    #: Set once the event's effect entered the stored state; a replay of such an event rebuilds its
    #: partition from the log instead of applying it a second time.
    ever_applied: bool = False
    error: str | None = None
    error_category: str | None = Field(default=None, max_length=64)
    #: What a ``waiting`` event waits for (``rate:USDC/ETH``); the reason is in ``error``.
    waiting_for: str | None = Field(default=None, max_length=64)
    #: When it first started waiting: it fails once it has waited ``PULSE_WAIT_MAX_SECONDS``.
    waiting_since: datetime | None = Field(default=None, sa_type=_tz())


class ApiKey(SQLModel, table=True):
    """API keys are stored as HMAC-SHA256 digests under the server's pepper (``store.keys``); keys are 32
    random bytes, so no slow hash is needed."""

    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    prefix: str = Field(max_length=16, index=True)
    digest: str = Field(max_length=64, unique=True)
    scopes: str = Field(max_length=1000, description="space-separated: ingest read admin user:<id>")
    created_at: datetime = Field(sa_type=_tz())
    revoked_at: datetime | None = Field(default=None, sa_type=_tz())


class CollectionBookRecord(SQLModel, table=True):
    """The engine state of one collection but its history (``BookHistoryRecord``), saved once per
    applied batch."""

    __tablename__ = "collection_books"

    key: str = Field(primary_key=True, max_length=120)
    chain: str = Field(max_length=32)
    contract: str = Field(max_length=42)
    version: int = 0
    book: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    updated_at: datetime = Field(sa_type=_tz())


class CollectionClock(SQLModel, table=True):
    """A live collection's next moment at which a figure moves with time alone (a listing's expiry, the
    time-weighted floor's window, a new day): Pulse's clock workflow appends a clock event for it then.
    Written with the book; a collection whose events are far older than their arrival (a replayed
    history) has none."""

    __tablename__ = "collection_clocks"

    partition: str = Field(primary_key=True, max_length=120)
    due_at: datetime = Field(sa_type=_tz(), index=True)


class BookHistoryRecord(SQLModel, table=True):
    """History entries (sales, listing entries) one save of a collection book added. The book is its row
    in ``collection_books`` plus all of these, oldest first (``domain.book.CollectionBook.from_stored``);
    a save that rewrites the history replaces them."""

    __tablename__ = "collection_book_history"

    id: int | None = Field(default=None, primary_key=True)
    book_key: str = Field(max_length=120, index=True)
    #: The book version whose save wrote it.
    version: int
    entries: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class EntityView(SQLModel, table=True):
    """Read model of one NFT or collection, as the API serves it, with a monotonic version."""

    __tablename__ = "entity_views"
    __table_args__ = (
        Index("ix_entity_views_collection", "collection_key"),
        # Every batch rewrites its views in place; free room on each page lets Postgres do that as a
        # heap-only update, without a new entry in every index per row.
        {"postgresql_with": {"fillfactor": 60}},
    )

    key: str = Field(primary_key=True, max_length=200)
    kind: str = Field(max_length=16)
    collection_key: str = Field(max_length=120)
    version: int = 0
    view: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(sa_type=_tz())


class ChangeBatchRecord(SQLModel, table=True):
    """The metric changes of one applied batch, waiting for detection.

    Written in the recalculation's transaction and deleted in the detection's, so no change is lost between
    the two steps (a crash, a lost activity result) and none is detected twice. They travel through the
    database rather than through workflow history, where hundreds of changes per batch cost the Temporal
    server more than the batch costs Pulse.
    """

    __tablename__ = "change_batches"
    __table_args__ = (Index("ix_change_batches_owner", "owner", "id"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    #: The workflow that runs detection for them.
    owner: str = Field(max_length=300)
    #: Names the batch (``<workflow id>@<first seq>-<last seq>``); detection is idempotent by it.
    cause: str = Field(max_length=300)
    #: orjson of the change columns (``activities.contracts.ChangeSet``).
    changes: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(sa_type=_tz())


class Rate(SQLModel, table=True):
    """Exchange rates from price ticks, kept as a history so a price converts as of its event's time."""

    __tablename__ = "rates"
    __table_args__ = (Index("ix_rates_pair_at", "base", "quote", "at"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    base: str = Field(max_length=12)
    quote: str = Field(max_length=12)
    at: datetime = Field(sa_type=_tz())
    rate: str = Field(max_length=80)
    event_seq: int = Field(sa_type=BigInteger, unique=True)


class ChainCursor(SQLModel, table=True):
    """How far the chain follower (``pulse follow``) has read one chain: the last block whose logs are in the
    event log, and that block's hash (a different hash at that height later means the chain reorganised)."""

    __tablename__ = "chain_cursors"

    chain: str = Field(primary_key=True, max_length=32)
    block_number: int = Field(sa_type=BigInteger)
    block_hash: str = Field(max_length=66)
    updated_at: datetime = Field(sa_type=_tz())


class ChainBlock(SQLModel, table=True):
    """A recent block header the follower read: enough of them (confirmations + 64) to find, when a height's
    hash changes, the common ancestor of the old and the new branch."""

    __tablename__ = "chain_blocks"

    chain: str = Field(primary_key=True, max_length=32)
    number: int = Field(primary_key=True, sa_type=BigInteger)
    hash: str = Field(max_length=66)
    parent_hash: str = Field(max_length=66)


class EventRetraction(SQLModel, table=True):
    """An event a retraction took back, by its (source, id); the event may not have arrived yet, and then
    it is a no-op when it does. The first retraction of an event is the one recorded. A retraction names an
    event of its own collection (partition): one naming it under another collection takes nothing back."""

    __tablename__ = "event_retractions"

    partition: str = Field(primary_key=True, max_length=120)
    source: str = Field(primary_key=True, max_length=100)
    external_id: str = Field(primary_key=True, max_length=200)
    retraction_seq: int = Field(sa_type=BigInteger)
    retracted_at: datetime = Field(sa_type=_tz())


class ChangeLogRecord(SQLModel, table=True):
    """One entity's changed fields in one applied batch: the live change feed's durable log (``/v1/stream``,
    ``/v1/ws``). Written in the recalculation's transaction; its id is the feed's cursor. Rows older than
    the retention (``PULSE_CHANGE_LOG_RETENTION_S``) are pruned (``store.changes.prune``)."""

    __tablename__ = "change_log"
    __table_args__ = (
        Index("ix_change_log_entity", "entity_key", "id"),
        Index("ix_change_log_created", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    entity_key: str = Field(max_length=200)
    #: The read model's version after the batch (NFTs, collections); null for entities without one.
    version: int | None = Field(default=None, sa_type=BigInteger)
    #: ``{metric: [before, after]}``
    changes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: The events that caused it (``source/id``).
    causes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_type=_tz())


class ChangeLogState(SQLModel, table=True):
    """The change log's pruning watermark (one row): a cursor at or below it asks for pruned changes."""

    __tablename__ = "change_log_state"

    id: int = Field(primary_key=True)
    pruned_through: int = Field(default=0, sa_type=BigInteger)


class StreamToken(SQLModel, table=True):
    """A short-lived token for the change feed and inbox streams (``POST /v1/stream/tokens``), usable as
    a query parameter where a browser cannot send a header. Stored as a digest, with the API key it was
    minted from (revoking the key ends its tokens) and the read scopes it carries."""

    __tablename__ = "stream_tokens"
    __table_args__ = (Index("ix_stream_tokens_expires", "expires_at"),)

    digest: str = Field(primary_key=True, max_length=64)
    key_id: int = Field(sa_type=BigInteger)
    scopes: str = Field(max_length=2000)
    expires_at: datetime = Field(sa_type=_tz())
    created_at: datetime = Field(sa_type=_tz())


class SourceSecret(SQLModel, table=True):
    """A Standard Webhooks secret of a signed source (``POST /v1/sources/{name}/secrets``), kept as it is
    given out: verifying an HMAC needs the key itself, as a user's webhook secrets do. Several may be valid
    at once (rotation); a revoked one stays for the record."""

    __tablename__ = "source_secrets"

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=100, index=True)
    secret: str = Field(max_length=200)
    created_at: datetime = Field(sa_type=_tz())
    revoked_at: datetime | None = Field(default=None, sa_type=_tz())


class MetadataFetch(SQLModel, table=True):
    """A token whose metadata the fetcher is to read (a mint without traits, an ERC-4906 update), by the
    chain position that asked for it: the follower writes these with the range's events, so a crash loses
    none, and reading a block twice asks once."""

    __tablename__ = "metadata_fetches"
    __table_args__ = (
        UniqueConstraint(
            "chain", "contract", "token_id", "block_number", "log_index", name="uq_metadata_fetches_cause"
        ),
        Index("ix_metadata_fetches_due", "status", "next_attempt_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    chain: str = Field(max_length=32)
    contract: str = Field(max_length=42)
    token_id: str = Field(max_length=80)
    block_number: int = Field(sa_type=BigInteger)
    log_index: int
    occurred_at: datetime = Field(sa_type=_tz())
    #: ``mint`` (a mint without traits) or ``update`` (ERC-4906): an update never takes a cached answer.
    reason: str = Field(max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_type=_tz())
    #: ``pending`` until fetched (then deleted) or ``failed`` after the last attempt.
    status: str = Field(default="pending", max_length=16)
    error: str | None = Field(default=None, max_length=500)


class ConsumerRecord(SQLModel, table=True):
    """Another service's webhook endpoint, fed the change log's changes that match its filters
    (``/v1/consumers``). The secret is kept as given out: signing needs the key itself."""

    __tablename__ = "consumers"

    id: str = Field(primary_key=True, max_length=40)
    url: str = Field(max_length=2000)
    secret: str = Field(max_length=200)
    keys: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    prefixes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    metrics: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    event_types: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: ``active``, or ``disabled`` (the endpoint answered 410 Gone; ``disabled_reason`` says so).
    status: str = Field(default="active", max_length=16)
    disabled_reason: str | None = Field(default=None, max_length=500)
    #: The change log cursor the runner has read through (its filters applied).
    cursor: int = Field(default=0, sa_type=BigInteger)
    #: Replays asked for so far: a replay's deliveries are its generation (``ConsumerDelivery``).
    replays: int = 0
    created_at: datetime = Field(sa_type=_tz())
    updated_at: datetime = Field(sa_type=_tz())


class ConsumerDelivery(SQLModel, table=True):
    """One change (``cursor``) for one consumer: the runner's outbox and the delivery log. ``generation`` 0
    is the live delivery, a replay's are 1, 2, …; ``message_id`` (``webhook-id``) stays the same."""

    __tablename__ = "consumer_deliveries"
    __table_args__ = (
        UniqueConstraint("consumer_id", "cursor", "generation", name="uq_consumer_deliveries_item"),
        Index("ix_consumer_deliveries_consumer", "consumer_id", "id"),
        Index("ix_consumer_deliveries_created", "consumer_id", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    consumer_id: str = Field(max_length=40)
    cursor: int = Field(sa_type=BigInteger)
    generation: int = 0
    entity_key: str = Field(max_length=200)
    message_id: str = Field(max_length=100)
    #: The ``data`` of the signed envelope, fixed when the change was read (the log may be pruned before
    #: the last retry).
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: ``pending``, ``delivered``, ``failed`` (gave up after the retry schedule) or ``gone`` (410).
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    response_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(sa_type=_tz())
    updated_at: datetime = Field(sa_type=_tz())
