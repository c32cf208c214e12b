"""The service's dashboards: the overview (targets and availability) and the event pipeline."""

from __future__ import annotations

from nftpulse.dashboards.kit import (
    AMBER,
    DELIVERY_P95_OBJECTIVE_S,
    GREEN,
    JOB_API,
    PROCESSING_P95_OBJECTIVE_S,
    PULSE_JOBS_RE,
    RATE,
    RED,
    USEFUL_TARGET,
    Board,
    p,
    q,
)


def overview() -> dict[str, object]:
    """The seed's success figures at a glance: latency objectives, availability, accuracy, usefulness."""
    b = Board(
        "pulse-overview",
        "Pulse / Overview",
        "Seed success figures: p95 processing within 30 s, processed→delivered within 60 s, availability, "
        "processing accuracy and notification usefulness.",
        ["overview"],
    )
    processing_p95 = p(0.95, "pulse_event_processing_seconds")
    delivery_p95 = p(0.95, "pulse_notification_delivery_seconds")
    b.stat(
        "Processing p95 (objective 30 s)",
        "95th percentile of received_at → processed_at over all priorities. Red past the 30 s objective.",
        [q(processing_p95, "p95")],
        unit="s",
        steps=[(None, GREEN), (PROCESSING_P95_OBJECTIVE_S * 0.8, AMBER), (PROCESSING_P95_OBJECTIVE_S, RED)],
        decimals=2,
    )
    b.stat(
        "Processed → delivered p95 (objective 60 s)",
        "95th percentile from an event's processed_at to its notification delivered, all channels.",
        [q(delivery_p95, "p95")],
        unit="s",
        steps=[(None, GREEN), (DELIVERY_P95_OBJECTIVE_S * 0.8, AMBER), (DELIVERY_P95_OBJECTIVE_S, RED)],
        decimals=2,
    )
    b.stat(
        "Availability (time range)",
        "Share of the time range in which the API was scraped up and every dependency its /readyz checks "
        "(database, Temporal, Redis) answered.",
        [
            q(
                # [$__range:] samples at the datasource's evaluation interval: no fixed step to align to.
                f'avg_over_time((min(up{{job="{JOB_API}"}}) * min(pulse_dependency_up))[$__range:])',
                "availability",
            )
        ],
        unit="percentunit",
        steps=[(None, RED), (0.99, AMBER), (0.999, GREEN)],
        decimals=3,
    )
    b.stat(
        "Processing accuracy (time range)",
        "Share of events that reached a final state as processed rather than failed.",
        [
            q(
                'sum(increase(pulse_events_processed_total{outcome="processed"}[$__range])) '
                "/ sum(increase(pulse_events_processed_total[$__range]))",
                "accuracy",
            )
        ],
        unit="percentunit",
        steps=[(None, RED), (0.99, AMBER), (0.999, GREEN)],
        decimals=3,
    )

    b.graph(
        "Processing latency p95 by priority",
        "received_at → processed_at, 95th percentile per priority class; dashed line: the 30 s objective.",
        [q(p(0.95, "pulse_event_processing_seconds", "priority"), "{{priority}}")],
        unit="s",
        objective=PROCESSING_P95_OBJECTIVE_S,
    )
    b.graph(
        "Processed → delivered p95 by channel",
        "processed_at → delivered, 95th percentile per channel; dashed line: the 60 s objective.",
        [q(p(0.95, "pulse_notification_delivery_seconds", "channel"), "{{channel}}")],
        unit="s",
        objective=DELIVERY_P95_OBJECTIVE_S,
    )

    b.graph(
        "Processes and dependencies up",
        "Scrape health of each Pulse process (count of up targets per job) and each dependency the API's "
        "/readyz checks (1 = answered).",
        [
            q(f'sum by (job) (up{{job=~"{PULSE_JOBS_RE}"}})', "{{job}} up"),
            q("min by (dependency) (pulse_dependency_up)", "{{dependency}}"),
        ],
        unit="short",
        width=8,
    )
    b.graph(
        "Failed / processed ratio",
        "Failed events as a share of events reaching a final state; the inverse of processing accuracy.",
        [
            q(
                f'sum(rate(pulse_events_processed_total{{outcome="failed"}}[{RATE}])) '
                f"/ sum(rate(pulse_events_processed_total[{RATE}]))",
                "failed ratio",
            )
        ],
        unit="percentunit",
        width=8,
    )
    b.graph(
        "Throughput",
        "Events accepted by the API, handed to Temporal by the dispatcher, and reaching a final state.",
        [
            q(f'sum(rate(pulse_events_ingested_total{{outcome="accepted"}}[{RATE}]))', "accepted"),
            q(f"sum(rate(pulse_events_dispatched_total[{RATE}]))", "dispatched"),
            q(f"sum(rate(pulse_events_processed_total[{RATE}]))", "final"),
        ],
        unit="ops",
        width=8,
    )

    b.stat(
        "Read rate (time range)",
        "Notifications read by their user per notification delivered: the plainest usefulness signal.",
        [
            q(
                "sum(increase(pulse_notifications_read_total[$__range])) "
                '/ sum(increase(pulse_notification_deliveries_total{status="delivered"}[$__range]))',
                "read rate",
            )
        ],
        unit="percentunit",
        steps=[(None, AMBER), (0.2, GREEN)],
        decimals=1,
    )
    useful = 'pulse_notification_feedback_total{verdict="useful"}'
    b.stat(
        f"Useful rate (target {USEFUL_TARGET:.0%})",
        "Verdicts 'useful' per verdict given (useful, not_useful, too_many) over the time range: the seed's "
        "usefulness target is 80 %. A changed verdict counts under its new value.",
        [
            q(
                f"sum(increase({useful}[$__range])) "
                "/ sum(increase(pulse_notification_feedback_total[$__range]))",
                "useful rate",
            )
        ],
        unit="percentunit",
        steps=[(None, RED), (USEFUL_TARGET * 0.75, AMBER), (USEFUL_TARGET, GREEN)],
        decimals=1,
    )
    b.graph(
        "Usefulness next to the 80 % target, with read and click rates",
        "Useful verdicts per verdict; notifications read (in-app read, e-mail open or click, push click, SMS "
        "reply) and clicked (e-mail link, push) per notification created. Dashed line: the 80 % target.",
        [
            q(
                f"sum(rate({useful}[{RATE}])) / sum(rate(pulse_notification_feedback_total[{RATE}]))",
                "useful rate",
            ),
            q(
                f"sum(rate(pulse_notification_reads_total[{RATE}])) "
                f"/ sum(rate(pulse_notifications_created_total[{RATE}]))",
                "read rate",
            ),
            q(
                # "or … * 0": no click yet is a rate of 0, not a missing line.
                f"(sum(rate(pulse_notification_clicks_total[{RATE}])) "
                f"or sum(rate(pulse_notifications_created_total[{RATE}])) * 0) "
                f"/ sum(rate(pulse_notifications_created_total[{RATE}]))",
                "click rate",
            ),
        ],
        unit="percentunit",
        objective=USEFUL_TARGET,
    )
    b.graph(
        "Useful rate by rule kind, notification kind and channel",
        "Useful verdicts per verdict, per kind of the rule that fired (watch: fraud findings and wallet "
        "activity), per notification kind and per channel the verdict came from.",
        [
            q(
                f"sum by ({label}) (rate({useful}[{RATE}])) "
                f"/ sum by ({label}) (rate(pulse_notification_feedback_total[{RATE}]))",
                f"{{{{{label}}}}}",
            )
            for label in ("rule_kind", "kind", "channel")
        ],
        unit="percentunit",
        objective=USEFUL_TARGET,
    )
    b.stat(
        "Backlog",
        "Events accepted but not yet processed or failed, all priorities.",
        [q("sum(max by (priority) (pulse_events_backlog))", "backlog")],
        unit="short",
        steps=[(None, GREEN), (50_000, AMBER), (200_000, RED)],
    )
    b.stat(
        "Notifications sent (time range)",
        "Notifications created by the significance detectors over the time range.",
        [q("sum(increase(pulse_notifications_created_total[$__range]))", "created")],
        unit="short",
        steps=[(None, GREEN)],
        decimals=0,
    )
    b.stat(
        "Delivery failure ratio (time range)",
        "Failed delivery attempts per attempt, all channels.",
        [
            q(
                # "or … * 0": no failure yet is a ratio of 0, not an empty panel.
                '(sum(increase(pulse_notification_deliveries_total{status="failed"}[$__range])) or sum('
                'increase(pulse_notification_deliveries_total{status=~"delivered|failed"}[$__range])) * 0) '
                '/ sum(increase(pulse_notification_deliveries_total{status=~"delivered|failed"}[$__range]))',
                "failed",
            )
        ],
        unit="percentunit",
        steps=[(None, GREEN), (0.01, AMBER), (0.05, RED)],
        decimals=2,
    )
    return b.build()


# --------------------------------------------------------------------------------------------- pipeline


def pipeline() -> dict[str, object]:
    """The event path: ingest, backlog, dispatch, recalculation, failures, shedding and the cache."""
    b = Board(
        "pulse-pipeline",
        "Pulse / Pipeline",
        "From the ingest API through the event log and the dispatcher to recalculation and invalidation.",
        ["pipeline"],
    )
    # The baseline reads the recording rule the IngestRateAnomalous alert uses (pulse.rules.yml), so the
    # band drawn here is the one the alert fires outside of, and a day of history costs one series read.
    ingest_5m = "pulse:events_ingested:rate5m"
    b.row("Ingest")
    b.graph(
        "Ingest rate by source and type",
        "Events accepted per second, by source and event type.",
        [
            q(
                f'sum by (source, type) (rate(pulse_events_ingested_total{{outcome="accepted"}}[{RATE}]))',
                "{{source}} {{type}}",
            )
        ],
        unit="ops",
        stacked=True,
    )
    b.graph(
        "Ingest outcomes",
        "Every event offered to the API by outcome: accepted, duplicate, rejected, shed.",
        [q(f"sum by (outcome) (rate(pulse_events_ingested_total[{RATE}]))", "{{outcome}}")],
        unit="ops",
        stacked=True,
    )
    b.graph(
        "Ingest latency by source",
        "Time to validate and durably append the requests carrying each source's events: p50 and p99.",
        [
            q(p(0.5, "pulse_ingest_request_seconds", "source"), "p50 {{source}}"),
            q(p(0.99, "pulse_ingest_request_seconds", "source"), "p99 {{source}}"),
        ],
        unit="s",
    )
    b.graph(
        "Ingest rate vs its 1-day baseline",
        "Accepted events per second against the mean + 3 standard deviations of the same 5-minute rate "
        "over the past day (the IngestRateAnomalous alert fires when it leaves the mean by 3 sd).",
        [
            q(f'sum(rate(pulse_events_ingested_total{{outcome="accepted"}}[{RATE}]))', "now"),
            q(f"avg_over_time({ingest_5m}[1d])", "1d mean"),
            q(
                f"avg_over_time({ingest_5m}[1d]) + 3 * stddev_over_time({ingest_5m}[1d])",
                "1d mean + 3 sd",
            ),
        ],
        unit="ops",
    )

    b.row("Backlog")
    b.graph(
        "Backlog by priority",
        "Events accepted but not yet processed or failed. max by priority: several processes may report "
        "the same log-derived figure, and summing them would double count.",
        [q("max by (priority) (pulse_events_backlog)", "{{priority}}")],
        unit="short",
        stacked=True,
    )
    b.graph(
        "Backlog forecast (1 h ahead)",
        "predict_linear over the last 30 minutes: where each priority's backlog is heading; the early "
        "warning and capacity-planning view of the BacklogGrowing alert.",
        [q("max by (priority) (predict_linear(pulse_events_backlog[30m], 3600))", "{{priority}} in 1h")],
        unit="short",
    )
    b.graph(
        "Temporal task-queue backlog",
        "Approximate backlog of Pulse's Temporal task queues (DescribeTaskQueue), by queue and task kind.",
        [
            q(
                "max by (task_queue, kind) (pulse_temporal_task_queue_backlog)",
                "{{task_queue}} {{kind}}",
            )
        ],
        unit="short",
    )
    b.graph(
        "Load shedding",
        "Events refused with 429 because the backlog passed its bound, by priority class. Critical events "
        "should never appear here.",
        [q(f"sum by (priority) (rate(pulse_events_shed_total[{RATE}]))", "{{priority}}")],
        unit="ops",
        stacked=True,
    )

    b.row("Dispatch and processing")
    b.graph(
        "Dispatched by route",
        "Events handed to Temporal per second: batched into shard workflows or given their own.",
        [q(f"sum by (route) (rate(pulse_events_dispatched_total[{RATE}]))", "{{route}}")],
        unit="ops",
        stacked=True,
        width=8,
    )
    b.graph(
        "Dispatcher batch size",
        "Events read from the log per dispatcher tick (p50, p95): it grows with the backlog.",
        [
            q(p(0.5, "pulse_dispatch_batch_events"), "p50"),
            q(p(0.95, "pulse_dispatch_batch_events"), "p95"),
        ],
        unit="short",
        width=8,
    )
    b.graph(
        "Processed by type and outcome",
        "Events reaching a final state per second.",
        [
            q(
                f"sum by (type, outcome) (rate(pulse_events_processed_total[{RATE}]))",
                "{{type}} {{outcome}}",
            )
        ],
        unit="ops",
        stacked=True,
        width=8,
    )
    b.graph(
        "Processing latency by priority (p50, p95)",
        "received_at → processed_at; dashed line: the 30 s objective.",
        [
            q(p(0.5, "pulse_event_processing_seconds", "priority"), "p50 {{priority}}"),
            q(p(0.95, "pulse_event_processing_seconds", "priority"), "p95 {{priority}}"),
        ],
        unit="s",
        objective=PROCESSING_P95_OBJECTIVE_S,
    )
    b.graph(
        "Recalculation time by engine (p95)",
        "Time to recalculate one batch per engine (trust, rarity, price, risk, collection statistics).",
        [q(p(0.95, "pulse_recalculation_seconds", "engine"), "{{engine}}")],
        unit="s",
    )

    b.row("Failures and cache")
    b.graph(
        "Failed events by category",
        "Events that ended failed per second, by error category; repair them from /v1/ops/failures.",
        [q(f"sum by (category) (rate(pulse_events_failed_total[{RATE}]))", "{{category}}")],
        unit="ops",
        stacked=True,
        width=8,
    )
    b.graph(
        "Cache hit rate",
        "Entity read cache hits per lookup (stale answers count as misses).",
        [
            q(
                # "or … * 0": lookups without a hit yet are a hit rate of 0, not an empty panel.
                f'(sum(rate(pulse_cache_requests_total{{result="hit"}}[{RATE}])) '
                f"or sum(rate(pulse_cache_requests_total[{RATE}])) * 0) "
                f"/ sum(rate(pulse_cache_requests_total[{RATE}]))",
                "hit rate",
            )
        ],
        unit="percentunit",
        width=8,
    )
    b.graph(
        "Cache lookups and invalidations",
        "Lookups by result and keys invalidated per second.",
        [
            q(f"sum by (result) (rate(pulse_cache_requests_total[{RATE}]))", "{{result}}"),
            q(f"sum(rate(pulse_cache_invalidations_total[{RATE}]))", "invalidated"),
        ],
        unit="ops",
        width=8,
    )

    b.row("Processes")
    b.graph(
        "CPU by process",
        "CPU seconds per second for each Pulse process (1 = one core).",
        [
            q(
                f'sum by (job, instance) (rate(process_cpu_seconds_total{{job=~"{PULSE_JOBS_RE}"}}[{RATE}]))',
                "{{job}} {{instance}}",
            )
        ],
        unit="short",
    )
    b.graph(
        "Resident memory by process",
        "Resident set size of each Pulse process.",
        [
            q(
                f'sum by (job, instance) (process_resident_memory_bytes{{job=~"{PULSE_JOBS_RE}"}})',
                "{{job}} {{instance}}",
            )
        ],
        unit="bytes",
    )
    return b.build()


# ---------------------------------------------------------------------------------------- notifications
