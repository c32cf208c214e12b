"""One settings object for every Pulse process, read from ``PULSE_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

WorkerRole = Literal["all", "shards", "events"]
WORKER_ROLES: tuple[str, ...] = get_args(WorkerRole)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PULSE_", env_file=None, extra="ignore")

    data_dir: Path = Field(
        default=Path(".pulse"), description="where `pulse up` keeps SQLite and Temporal state"
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; default SQLite"
    )
    temporal_address: str | None = Field(
        default=None, description="host:port of a Temporal frontend; unset: `pulse up` starts a dev server"
    )
    temporal_namespace: str = "default"
    temporal_api_key: SecretStr | None = Field(
        default=None, description="API key for Temporal Cloud or a cluster that wants one (implies TLS)"
    )
    temporal_tls: bool = Field(
        default=False, description="connect to Temporal over TLS (implied by an API key or a TLS file)"
    )
    temporal_tls_ca_cert: Path | None = Field(
        default=None, description="PEM file of the CA that signed the Temporal server's certificate"
    )
    temporal_tls_client_cert: Path | None = Field(default=None, description="PEM client certificate (mTLS)")
    temporal_tls_client_key: Path | None = Field(default=None, description="PEM client private key (mTLS)")
    temporal_tls_server_name: str | None = Field(
        default=None, description="the name the Temporal server's certificate is checked against"
    )
    temporal_ui_url: str | None = Field(
        default=None,
        description="base URL of the Temporal Web UI that the failures list links to; default "
        "http://127.0.0.1:<temporal_ui_port> (`pulse up`'s own UI)",
    )
    task_queue: str = Field(
        default="pulse",
        description="the shards' and notifications' task queue; significant events run on "
        "`<task_queue>.events`",
    )
    worker_role: WorkerRole = Field(
        default="all",
        description="the task queues `pulse worker` serves: `shards` (routine events, poison events, "
        "notifications), `events` (significant events) or `all`. Apart, significant events do not share "
        "the shards' interpreter lock",
    )
    workflow_id_prefix: str = Field(
        default="", description="prepended to workflow ids, so that several Pulses can share a namespace"
    )
    redis_url: str | None = Field(
        default=None, description="entity read cache in Redis instead of in process"
    )
    cache_prefix: str = Field(default="pulse:entity:", description="Redis key prefix of the read cache")
    bootstrap_admin_key: SecretStr | None = Field(
        default=None, description="an admin API key that exists after start"
    )
    key_pepper: SecretStr | None = Field(
        default=None,
        description="server-side secret (16+ characters) API key digests are keyed with (HMAC-SHA256), the "
        "same for every process; unset: made on first start and kept in the data dir (`key.pepper`, 0600)",
    )

    host: str = "127.0.0.1"
    api_port: int = 8000
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    api_metrics_port: int = Field(
        default=9467,
        description="the API's Prometheus metrics, on a port of their own: the API's port is the public one",
    )
    worker_metrics_port: int = 9464
    dispatcher_metrics_port: int = 9465
    temporal_sdk_metrics_port: int = 9466

    dispatch_interval_s: float = Field(default=0.2, description="how often the dispatcher polls the log")
    wait_max_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="how long an event that needs something not yet there (a price in a currency with no "
        "rate yet) waits, status `waiting`, before it fails (replayable); 0: it fails at once",
    )
    dispatch_batch_max: int = Field(default=5000, description="events read from the log per dispatcher tick")
    partition_wake_interval_s: float = Field(
        default=0.5, description="a shard is signalled at most this often (critical events at once)"
    )
    shards: int = Field(
        default=2,
        ge=1,
        description="the fewest workflows that batch routine events; collections are spread over them by "
        "hash. Fewer make larger batches (less work per event: one worker with 2 instead of 4 used 7 % less "
        "CPU per event at 1,000 events/s, p95 0.86 instead of 1.29 s), more let more workers apply batches "
        "at once (they grow with the workers polling, see `shards_per_worker`)",
    )
    shards_per_worker: int = Field(
        default=2,
        ge=0,
        description="shard workflows the dispatcher runs per worker process polling the shards' queue, "
        "beyond `PULSE_SHARDS` (a power of two, up to 64 virtual shards); 0: `PULSE_SHARDS` only",
    )
    partition_batch_max: int = Field(default=1000, description="events one recalculation activity applies")
    worker_workflow_slots: int = Field(
        default=10, description="workflow tasks one worker runs at once (a partition's batch is one task)"
    )
    worker_local_activity_slots: int = Field(
        default=4, description="local activities (the pipeline's steps) one worker runs at once"
    )
    worker_event_local_activity_slots: int = Field(
        default=8,
        description="local activities of significant events' workflows (their own task queue), so they never "
        "queue behind the shards' batches. Their steps spend most of their time waiting for the partition "
        "a shard's batch holds, so fewer slots than significant events arriving in a batch's time queue "
        "them (2 slots: fraud findings' p95 6 s at market shape, 8: 1.4 s)",
    )
    worker_activity_slots: int = Field(default=16, description="regular activities one worker runs at once")
    worker_book_cache: int = Field(
        default=4096,
        ge=1,
        description="collection books a worker keeps in memory between batches; a book not kept is read "
        "and parsed from the database for its next batch, so this should cover the collections active "
        "within a few minutes",
    )
    gc_thresholds: tuple[int, int, int] = Field(
        default=(50_000, 50, 100),
        description="thresholds of Python's cycle collector (gc.set_threshold) in every Pulse process; "
        "Python's defaults (700, 10, 10) made the worker spend 30 % of its CPU scanning its collection "
        "books and cached events (bench/worker_batch.py)",
    )
    significant_priority: float = Field(
        default=80.0, description="priority (0-100) from which an event gets a workflow of its own"
    )
    large_move: float = Field(
        default=0.5, description="a price this far off the floor (relative) boosts an event's priority"
    )
    backlog_shed_threshold: int = Field(
        default=200_000, description="backlog past which low-priority events are refused with 429"
    )
    key_rate_per_s: float = Field(
        default=500.0,
        ge=0,
        description="requests per second one API key may make (a token bucket per key and API process); "
        "beyond it 429 with Retry-After. 0: no limit",
    )
    key_rate_burst: int = Field(default=1000, ge=1, description="requests one API key may make at once")
    cache_ttl_s: float = 300.0
    cache_max_entries: int = 100_000
    change_log_retention_s: float = Field(
        default=86_400.0,
        gt=0,
        description="how long the live change feed can be resumed from a cursor (the change log's retention)",
    )

    # Notification channels: a provider whose settings are unset is absent from the channel registry.
    public_base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="how providers and users reach this API (callbacks, links)",
    )
    email_from: str = "alerts@pulse.invalid"
    sendgrid_api_key: SecretStr | None = None
    sendgrid_webhook_public_key: str | None = Field(
        default=None, description="verifies SendGrid event webhooks; unset: the callback refuses requests"
    )
    callback_max_age_s: float = Field(
        default=600.0,
        gt=0,
        description="signed provider callbacks (SendGrid's event webhook) older than this, or this far "
        "ahead of the clock, are refused as replays",
    )
    send_time_default_hour: int = Field(
        default=9,
        ge=0,
        le=23,
        description="local hour at which a user with learned send times gets non-urgent items until "
        "enough of their reads are known (cold start)",
    )
    send_time_min_reads: int = Field(
        default=5, ge=1, description="reads needed before a user's own most-read hour replaces the default"
    )
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from_number: str | None = None
    twilio_messaging_service_sid: str | None = None
    vapid_private_key: SecretStr | None = Field(
        default=None, description="web push VAPID key (PEM or base64url)"
    )
    vapid_subject: str = "mailto:alerts@pulse.invalid"

    otlp_endpoint: str | None = Field(default=None, description="OTLP/gRPC endpoint for traces")
    log_level: str = "INFO"
    allow_private_webhooks: bool = Field(
        default=False, description="accept webhook URLs on private or loopback addresses (tests, intranets)"
    )

    # Sources (adapters/): providers' webhooks and the chain follower.
    alchemy_signing_key: str | None = Field(
        default=None,
        description="Alchemy Notify signing keys, comma-separated (one per webhook); unset: "
        "POST /v1/sources/alchemy refuses every delivery",
    )
    source_secrets: str | None = Field(
        default=None,
        description="Standard Webhooks secrets of other producers, `name=whsec_...` comma-separated",
    )
    metric_sources: str = Field(
        default="chain,alchemy,opensea",
        description="event sources that get a label value of their own in metrics, comma-separated (with "
        "the names in PULSE_SOURCE_SECRETS); other sources count as `other`, so producer-chosen names "
        "cannot multiply the series",
    )
    chain_rpc_url: str | None = Field(
        default=None, description="EVM JSON-RPC endpoint the follower reads; unset: no follower"
    )
    chain_contracts: str = Field(
        default="", description="NFT contracts to follow, comma-separated; empty: every contract's NFT logs"
    )
    chain_confirmations: int = Field(
        default=12, ge=0, description="blocks the follower stays behind the head"
    )
    chain_name: str = Field(
        default="ethereum", pattern=r"^[a-z0-9-]+$", description="the followed chain's name in events"
    )
    opensea_api_key: SecretStr | None = Field(
        default=None, description="OpenSea API key for the Stream API; unset: no OpenSea stream"
    )
    opensea_collections: str = Field(
        default="",
        description="collection slugs `pulse stream opensea` and `pulse up` follow, comma-separated; `*` for "
        "every collection",
    )
    opensea_stream_url: str = Field(
        default="wss://stream-api.opensea.io/socket/websocket",
        description="the Stream API's Phoenix WebSocket endpoint (the API key is added as `token`)",
    )
    opensea_chain_events: bool = Field(
        default=True,
        description="take item_sold and item_transferred from OpenSea; turn off when the chain follower or "
        "Alchemy already reports the same contracts (their ids differ, so both would count)",
    )
    metadata_fetch: bool = Field(
        default=True,
        description="the follower reads tokenURI/uri and the metadata JSON of mints without traits and of "
        "ERC-4906 updates",
    )
    ipfs_gateway: str = Field(
        default="https://ipfs.io/ipfs/",
        description="HTTP gateway that ipfs:// metadata URIs are read through",
    )
    metadata_fetch_concurrency: int = Field(default=8, ge=1, description="metadata fetches at once")
    metadata_fetch_attempts: int = Field(
        default=6, ge=1, description="tries per token (exponential backoff) before its fetch is marked failed"
    )
    metadata_fetch_timeout_s: float = Field(default=15.0, gt=0, description="one metadata request's timeout")
    metadata_fetch_max_range: int = Field(
        default=10_000,
        ge=1,
        description="tokens one BatchMetadataUpdate may ask for; a wider range becomes the tokens Pulse "
        "knows in it, at most this many (logged)",
    )
    metadata_allow_private: bool = Field(
        default=False,
        description="fetch metadata from private or loopback addresses, and over http (tests, intranets)",
    )

    @property
    def alchemy_signing_keys(self) -> list[str]:
        return [k.strip() for k in (self.alchemy_signing_key or "").split(",") if k.strip()]

    @property
    def source_secret_map(self) -> dict[str, str]:
        """``PULSE_SOURCE_SECRETS`` as source name -> secret (entries without ``=`` are ignored)."""
        pairs = (item.split("=", 1) for item in (self.source_secrets or "").split(",") if "=" in item)
        return {name.strip(): secret.strip() for name, secret in pairs if name.strip() and secret.strip()}

    @property
    def metric_source_names(self) -> frozenset[str]:
        """The sources metrics name; the rest are labelled ``other``."""
        listed = (name.strip() for name in self.metric_sources.split(","))
        return frozenset(name for name in listed if name) | self.source_secret_map.keys()

    @property
    def opensea_collection_list(self) -> list[str]:
        return [c.strip() for c in self.opensea_collections.split(",") if c.strip()]

    @property
    def chain_contract_list(self) -> list[str]:
        return [c.strip().lower() for c in self.chain_contracts.split(",") if c.strip()]

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pulse.db').resolve()}"

    @property
    def effective_temporal_address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def effective_temporal_ui_url(self) -> str:
        return (self.temporal_ui_url or f"http://127.0.0.1:{self.temporal_ui_port}").rstrip("/")

    @property
    def event_task_queue(self) -> str:
        return f"{self.task_queue}.events"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
