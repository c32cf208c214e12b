"""The notification dashboard and the Temporal workers' dashboard."""

from __future__ import annotations

from nftpulse.dashboards.kit import (
    DELIVERY_P95_OBJECTIVE_S,
    JOB_TEMPORAL_SDK,
    RATE,
    Board,
    p,
    q,
    query_variable,
)


def notifications() -> dict[str, object]:
    """Notifications created and delivered: outcomes by channel, latency, failures and read rate."""
    b = Board(
        "pulse-notifications",
        "Pulse / Notifications & delivery",
        "Notifications from the significance detectors to the user's channel: outcomes, latency, reads.",
        ["notifications"],
    )
    b.graph(
        "Notifications created by kind and severity",
        "Notifications the significance detectors created per second.",
        [
            q(
                f"sum by (kind, severity) (rate(pulse_notifications_created_total[{RATE}]))",
                "{{kind}} {{severity}}",
            )
        ],
        unit="ops",
        stacked=True,
    )
    b.graph(
        "Deliveries by channel and status",
        "Delivery outcomes per second (sent, delivered, failed, read) by channel.",
        [
            q(
                f"sum by (channel, status) (rate(pulse_notification_deliveries_total[{RATE}]))",
                "{{channel}} {{status}}",
            )
        ],
        unit="ops",
    )
    b.graph(
        "Delivery latency by channel (p50, p95)",
        "processed_at → delivered per channel; dashed line: the 60 s objective.",
        [
            q(p(0.5, "pulse_notification_delivery_seconds", "channel"), "p50 {{channel}}"),
            q(p(0.95, "pulse_notification_delivery_seconds", "channel"), "p95 {{channel}}"),
        ],
        unit="s",
        objective=DELIVERY_P95_OBJECTIVE_S,
    )
    b.graph(
        "Delivery failure ratio by channel",
        "Failed attempts per finished attempt (delivered or failed), by channel; the "
        "DeliveryFailureRateHigh alert fires past 10% sustained.",
        [
            q(
                f'(sum by (channel) (rate(pulse_notification_deliveries_total{{status="failed"}}[{RATE}])) '
                f"or sum by (channel) "
                f'(rate(pulse_notification_deliveries_total{{status=~"delivered|failed"}}[{RATE}])) * 0) '
                f"/ sum by (channel) "
                f'(rate(pulse_notification_deliveries_total{{status=~"delivered|failed"}}[{RATE}]))',
                "{{channel}}",
            )
        ],
        unit="percentunit",
    )
    b.graph(
        "Read rate by channel",
        "Read receipts per delivered notification on each channel: which channels people actually use.",
        [
            q(
                f'sum by (channel) (rate(pulse_notification_deliveries_total{{status="read"}}[{RATE}])) '
                f"/ sum by (channel) "
                f'(rate(pulse_notification_deliveries_total{{status="delivered"}}[{RATE}]))',
                "{{channel}}",
            )
        ],
        unit="percentunit",
    )
    b.graph(
        "Notifications read",
        "Notifications marked read by their user per second, against those delivered.",
        [
            q(f"sum(rate(pulse_notifications_read_total[{RATE}]))", "read"),
            q(
                f'sum(rate(pulse_notification_deliveries_total{{status="delivered"}}[{RATE}]))',
                "delivered",
            ),
        ],
        unit="ops",
    )
    return b.build()


# --------------------------------------------------------------------------------------- temporal workers


def temporal_workers() -> dict[str, object]:
    """The Temporal SDK's own worker metrics from the worker's runtime exporter."""
    b = Board(
        "pulse-temporal-workers",
        "Pulse / Temporal workers",
        "The Temporal SDK runtime's metrics from every Pulse worker (histograms in ms). Find individual "
        "workflows in the Temporal Web UI.",
        ["temporal"],
    )
    b.builder.with_variable(
        query_variable(
            "task_queue",
            "Task queue",
            f'label_values(temporal_worker_task_slots_available{{job="{JOB_TEMPORAL_SDK}"}}, task_queue)',
        )
    )
    tq = 'task_queue=~"$task_queue"'
    b.graph(
        "Workflows completed by type",
        "Workflow executions completed per second (temporal_workflow_completed).",
        [
            q(
                f"sum by (workflow_type) (rate(temporal_workflow_completed{{{tq}}}[{RATE}]))",
                "{{workflow_type}}",
            )
        ],
        unit="ops",
        stacked=True,
        width=8,
    )
    b.graph(
        "Workflow task schedule-to-start p95",
        "Time a workflow task waits for a worker: rising means too few workers or pollers.",
        [
            q(
                p(0.95, "temporal_workflow_task_schedule_to_start_latency", "task_queue", tq),
                "{{task_queue}}",
            )
        ],
        unit="ms",
        width=8,
    )
    b.graph(
        "Workflow task execution p95",
        "Time the worker spends running one workflow task (replay excluded).",
        [
            q(
                p(0.95, "temporal_workflow_task_execution_latency", "workflow_type", tq),
                "{{workflow_type}}",
            )
        ],
        unit="ms",
        width=8,
    )
    b.graph(
        "Activity schedule-to-start p95",
        "Time an activity task waits for a worker slot.",
        [
            q(
                p(0.95, "temporal_activity_schedule_to_start_latency", "activity_type", tq),
                "{{activity_type}}",
            )
        ],
        unit="ms",
        width=8,
    )
    b.graph(
        "Activity execution p95 by type",
        "Time one activity attempt runs.",
        [
            q(
                p(0.95, "temporal_activity_execution_latency", "activity_type", tq),
                "{{activity_type}}",
            )
        ],
        unit="ms",
        width=8,
    )
    b.graph(
        "Activity failures by type",
        "Activity attempts that failed per second (each is retried per its retry policy), local activities "
        "(the pipeline's steps) and regular ones (deliveries) alike.",
        [
            q(
                " or ".join(
                    f"sum by (activity_type) (rate(temporal_{kind}_execution_failed{{{tq}}}[{RATE}]))"
                    for kind in ("activity", "local_activity")
                ),
                "{{activity_type}}",
            )
        ],
        unit="ops",
        width=8,
    )
    b.graph(
        "Task slots available",
        "Free execution slots per worker type, summed over workers: near zero means the workers are "
        "saturated and scale-out helps.",
        [
            q(
                f"sum by (worker_type) (temporal_worker_task_slots_available{{{tq}}})",
                "{{worker_type}} free",
            ),
            q(
                f"sum by (worker_type) (temporal_worker_task_slots_used{{{tq}}})",
                "{{worker_type}} used",
            ),
        ],
        unit="short",
        width=8,
    )
    b.graph(
        "Sticky cache",
        "Cached workflow executions per worker and cache hits per second: misses force full replays.",
        [
            q(
                f'sum by (instance) (temporal_sticky_cache_size{{job="{JOB_TEMPORAL_SDK}"}})',
                "size {{instance}}",
            ),
            q(
                f'sum(rate(temporal_sticky_cache_hit{{job="{JOB_TEMPORAL_SDK}"}}[{RATE}]))',
                "hits/s",
            ),
        ],
        unit="short",
        width=8,
    )
    b.graph(
        "Workflow end-to-end p95",
        "From workflow start to completion, per workflow type.",
        [
            q(
                p(0.95, "temporal_workflow_endtoend_latency", "workflow_type", tq),
                "{{workflow_type}}",
            )
        ],
        unit="ms",
        width=8,
    )
    b.graph(
        "Pollers",
        "Long-poll requests in flight per poller type: a worker with none is not taking work.",
        [
            q(
                f"sum by (poller_type) (temporal_num_pollers{{{tq}}})",
                "{{poller_type}}",
            )
        ],
        unit="short",
    )
    b.graph(
        "Temporal client requests p95",
        "Latency of the worker's requests to the Temporal frontend, by operation.",
        [
            q(
                p(0.95, "temporal_request_latency", "operation", f'job="{JOB_TEMPORAL_SDK}"'),
                "{{operation}}",
            )
        ],
        unit="ms",
    )
    return b.build()
