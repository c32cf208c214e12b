"""Every Prometheus metric Pulse exports, as module constants with few label values.

Dashboards (``dashboards/``) and alert rules (``dashboards/rules``) are written against these names, so a
rename here is a rename there too.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

EVENTS_INGESTED = Counter(
    "pulse_events_ingested_total",
    "Events offered to the ingest API, by source, type and outcome (accepted, duplicate, rejected, shed).",
    ["source", "type", "outcome"],
)
INGEST_SECONDS = Histogram(
    "pulse_ingest_request_seconds",
    "Time to validate and durably append one ingest request, once per source and type it carried.",
    ["source", "type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BACKLOG = Gauge(
    "pulse_events_backlog",
    "Events accepted but not yet processed or failed, by priority class (critical, high, normal, low).",
    ["priority"],
)
TASK_QUEUE_BACKLOG = Gauge(
    "pulse_temporal_task_queue_backlog",
    "Approximate backlog of the Temporal task queue as reported by DescribeTaskQueue.",
    ["task_queue", "kind"],
)
EVENTS_DISPATCHED = Counter(
    "pulse_events_dispatched_total",
    "Events handed to Temporal by the dispatcher, by route (partition, own_workflow).",
    ["route"],
)
DISPATCH_BATCH = Histogram(
    "pulse_dispatch_batch_events",
    "Events read from the log per dispatcher tick.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
EVENTS_PROCESSED = Counter(
    "pulse_events_processed_total",
    "Events that reached a final state, by type and outcome (processed, failed).",
    ["type", "outcome"],
)
EVENTS_FAILED = Counter(
    "pulse_events_failed_total",
    "Events that ended failed, by error category.",
    ["category"],
)
RULES_FAILED = Counter(
    "pulse_rules_failed_total",
    "Subscription rules left out of a detection because they could not be parsed or evaluated.",
)
PROCESSING_SECONDS = Histogram(
    "pulse_event_processing_seconds",
    "From received_at to processed_at, by priority class.",
    ["priority"],
    buckets=LATENCY_BUCKETS,
)
RECALC_SECONDS = Histogram(
    "pulse_recalculation_seconds",
    "Time spent recalculating one batch, by engine.",
    ["engine"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CACHE_REQUESTS = Counter(
    "pulse_cache_requests_total",
    "Entity read cache lookups, by result (hit, miss, stale).",
    ["result"],
)
CACHE_INVALIDATIONS = Counter("pulse_cache_invalidations_total", "Entity cache keys invalidated.")
NOTIFICATIONS_CREATED = Counter(
    "pulse_notifications_created_total",
    "Notifications created by the significance detectors, by kind and severity.",
    ["kind", "severity"],
)
DELIVERIES = Counter(
    "pulse_notification_deliveries_total",
    "Delivery attempts' outcomes, by channel and status (sent, delivered, failed, read).",
    ["channel", "status"],
)
DELIVERY_SECONDS = Histogram(
    "pulse_notification_delivery_seconds",
    "From the event's processed_at to the notification delivered on the channel.",
    ["channel"],
    buckets=LATENCY_BUCKETS,
)
NOTIFICATIONS_READ = Counter("pulse_notifications_read_total", "Notifications marked read by their user.")
CONSUMER_DELIVERIES = Counter(
    "pulse_consumer_deliveries_total",
    "Attempts to deliver a change to a consumer (/v1/consumers), by consumer and outcome (delivered, "
    "retry, failed: the retry schedule is spent, gone: 410, the consumer disabled).",
    ["consumer", "outcome"],
)
CONSUMER_LAG = Gauge(
    "pulse_consumer_lag_changes",
    "Change log entries past a consumer's read cursor, as its runner last read.",
    ["consumer"],
)
NOTIFICATION_READS = Counter(
    "pulse_notification_reads_total",
    "Notifications their user acted on for the first time, by kind and where (in_app read, email open or "
    "click, push click, sms reply).",
    ["kind", "channel"],
)
NOTIFICATION_CLICKS = Counter(
    "pulse_notification_clicks_total",
    "Clicks on a notification's link, by kind and channel (email link, push notification).",
    ["kind", "channel"],
)
FEEDBACK = Counter(
    "pulse_notification_feedback_total",
    "Users' verdicts on notifications (useful, not_useful, too_many), by notification kind, the kind of the "
    "rule that produced it (watch: no rule) and the channel the verdict came from. A changed verdict counts "
    "again under its new value.",
    ["verdict", "kind", "rule_kind", "channel"],
)
RULES_ADAPTED = Counter(
    "pulse_rules_adapted_total",
    "Rules whose sensitivity feedback changed, by direction (less, more: a step back, reset) and mode "
    "(widen, digest, cooldown).",
    ["direction", "mode"],
)
SHED = Counter(
    "pulse_events_shed_total",
    "Events refused with 429 because the backlog passed its bound, by priority class.",
    ["priority"],
)
TEMPORAL_ACTIONS = Counter(
    "pulse_temporal_actions_total",
    "Temporal actions Pulse causes, by kind (signal_with_start, workflow_start, activity, local_activity).",
    ["kind"],
)
DEPENDENCY_UP = Gauge(
    "pulse_dependency_up",
    "1 when a dependency (database, temporal, redis) answered its last check, else 0.",
    ["dependency"],
)
