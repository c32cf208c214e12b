"""Pulse's Grafana dashboards as code, built with ``grafana-foundation-sdk`` (Grafana 11 schema).

``python -m nftpulse.dashboards.build`` writes one JSON file per dashboard into
``dashboards/generated/``, which Grafana loads through ``dashboards/provisioning/dashboards/pulse.yml``.
``--check`` regenerates in memory and exits 1 when the committed files differ, so CI catches a builder
change whose JSON was not committed.

Every query is written against the names in :mod:`nftpulse.core.metrics` (application metrics) and the
Temporal SDK's own Prometheus exporter (``temporal_*``: histograms in milliseconds, counters without
``_total``). The Prometheus job names below are the ones ``dashboards/prometheus/prometheus.yml``
scrapes; a test keeps the two in step.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    GridPos,
    Threshold,
    ThresholdsMode,
    VariableHide,
    VariableOption,
    VariableRefresh,
)

GENERATED_DIR = Path(__file__).resolve().parent / "generated"

# Prometheus job names (dashboards/prometheus/prometheus.yml). The worker process exports two endpoints:
# Pulse's own metrics and the Temporal SDK runtime's exporter, scraped as separate jobs so the SDK's
# series can be told apart from Pulse's without relying on name prefixes.
JOB_API = "pulse-api"
JOB_WORKER = "pulse-worker"
JOB_DISPATCHER = "pulse-dispatcher"
JOB_TEMPORAL_SDK = "pulse-worker-temporal-sdk"
PULSE_JOBS = (JOB_API, JOB_WORKER, JOB_DISPATCHER)
PULSE_JOBS_RE = "|".join(PULSE_JOBS)

# Seed objectives (design: p95 received→processed within 30 s, processed→delivered within 60 s).
PROCESSING_P95_OBJECTIVE_S = 30
DELIVERY_P95_OBJECTIVE_S = 60

DATASOURCE_VAR = "datasource"
# Every panel and query points at the dashboard's datasource variable, so one JSON works in any Grafana
# whatever the Prometheus datasource is called there.
DATASOURCE = DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VAR}}}")
RATE = "$__rate_interval"

GREEN = "green"
AMBER = "#EAB839"
RED = "red"


@dataclass(frozen=True)
class Query:
    """One PromQL target: its expression and the legend Grafana draws for each series."""

    expr: str
    legend: str = "__auto"


def _q(expr: str, legend: str = "__auto") -> Query:
    return Query(expr=expr, legend=legend)


def _targets(queries: Sequence[Query], *, instant: bool = False) -> list[Builder[Dataquery]]:
    """Turn queries into Prometheus targets with stable ref ids (A, B, …) so regeneration is stable."""
    out: list[Builder[Dataquery]] = []
    for i, query in enumerate(queries):
        target = (
            prometheus.Dataquery()
            .expr(query.expr)
            .legend_format(query.legend)
            .ref_id(chr(ord("A") + i))
            .datasource(DATASOURCE)
        )
        out.append(target.instant() if instant else target.range())
    return out


def _thresholds(steps: Sequence[tuple[float | None, str]]) -> dash.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (Grafana's -Infinity base)."""
    return (
        dash.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def _p(quantile: float, metric: str, by: str = "", selector: str = "") -> str:
    """``histogram_quantile`` over a classic histogram, aggregated by ``le`` plus the given labels."""
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({quantile}, sum by ({labels}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


class _Layout:
    """Hands out panel ids and grid positions so the JSON does not depend on builder call order quirks."""

    def __init__(self) -> None:
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_height = 0

    def take_id(self) -> int:
        panel_id = self.next_id
        self.next_id += 1
        return panel_id

    def place(self, width: int, height: int) -> tuple[int, int]:
        if self.x + width > 24:
            self.x = 0
            self.y += self.row_height
            self.row_height = 0
        pos = (self.x, self.y)
        self.x += width
        self.row_height = max(self.row_height, height)
        return pos

    def new_row(self) -> int:
        if self.x:
            self.y += self.row_height
        self.x = 0
        self.row_height = 0
        row_y = self.y
        self.y += 1
        return row_y


class _Board:
    """A dashboard under construction: panels are appended in reading order, rows start new lines."""

    def __init__(self, uid: str, title: str, description: str, tags: Sequence[str]) -> None:
        self.layout = _Layout()
        self.builder = (
            dash.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(["pulse", *tags])
            .editable()
            .tooltip(DashboardCursorSync.CROSSHAIR)
            .refresh("30s")
            .time("now-3h", "now")
            .timezone("browser")
            .with_variable(
                dash.DatasourceVariable(DATASOURCE_VAR)
                .label("Data source")
                .type("prometheus")
                .hide(VariableHide.DONT_HIDE)
            )
        )

    def row(self, title: str) -> None:
        y = self.layout.new_row()
        self.builder.with_row(
            dash.Row(title).id(self.layout.take_id()).grid_pos(GridPos(h=1, w=24, x=0, y=y))
        )

    def _place(self, panel: timeseries.Panel | stat.Panel, width: int, height: int) -> None:
        x, y = self.layout.place(width, height)
        panel.id(self.layout.take_id()).grid_pos(GridPos(h=height, w=width, x=x, y=y))
        self.builder.with_panel(panel)

    def graph(
        self,
        title: str,
        description: str,
        queries: Sequence[Query],
        *,
        unit: str,
        width: int = 12,
        height: int = 8,
        objective: float | None = None,
        stacked: bool = False,
        min_zero: bool = True,
    ) -> None:
        """A time series panel; ``objective`` draws a dashed red line at the objective."""
        panel = (
            timeseries.Panel()
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .targets(_targets(queries))
            .unit(unit)
            .line_width(1)
            .fill_opacity(10 if not stacked else 40)
            .show_points(common.VisibilityMode.NEVER)
            .legend(
                common_builder.VizLegendOptions()
                .display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM)
                .show_legend(True)
            )
            .tooltip(
                common_builder.VizTooltipOptions()
                .mode(common.TooltipDisplayMode.MULTI)
                .sort(common.SortOrder.DESCENDING)
            )
        )
        if min_zero:
            panel.min(0)
        if stacked:
            panel.stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL))
        if objective is not None:
            panel.thresholds(_thresholds([(None, GREEN), (objective, RED)])).thresholds_style(
                common_builder.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
            )
        self._place(panel, width, height)

    def stat(
        self,
        title: str,
        description: str,
        queries: Sequence[Query],
        *,
        unit: str,
        steps: Sequence[tuple[float | None, str]],
        width: int = 6,
        height: int = 5,
        decimals: int | None = None,
    ) -> None:
        """A single-value panel coloured by ``steps`` (value, colour) thresholds."""
        panel = (
            stat.Panel()
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .targets(_targets(queries))
            .unit(unit)
            .thresholds(_thresholds(steps))
            .color_mode(common.BigValueColorMode.BACKGROUND)
            .graph_mode(common.BigValueGraphMode.AREA)
            .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        )
        if decimals is not None:
            panel.decimals(decimals)
        self._place(panel, width, height)

    def build(self) -> dict[str, object]:
        """The dashboard's JSON model as plain data."""
        built = json.loads(json.dumps(self.builder.build(), cls=JSONEncoder))
        assert isinstance(built, dict)
        return built


def _query_variable(name: str, label: str, query: str) -> dash.QueryVariable:
    """A multi-value label filter defaulting to All (regex ``.*``), refreshed with the time range."""
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .all_value(".*")
        .multi(True)
        .current(VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


# --------------------------------------------------------------------------------------------- overview


def overview() -> dict[str, object]:
    """The seed's success figures at a glance: latency objectives, availability, accuracy, usefulness."""
    b = _Board(
        "pulse-overview",
        "Pulse / Overview",
        "Seed success figures: p95 processing within 30 s, processed→delivered within 60 s, availability, "
        "processing accuracy and notification usefulness.",
        ["overview"],
    )
    processing_p95 = _p(0.95, "pulse_event_processing_seconds")
    delivery_p95 = _p(0.95, "pulse_notification_delivery_seconds")
    b.stat(
        "Processing p95 (objective 30 s)",
        "95th percentile of received_at → processed_at over all priorities. Red past the 30 s objective.",
        [_q(processing_p95, "p95")],
        unit="s",
        steps=[(None, GREEN), (PROCESSING_P95_OBJECTIVE_S * 0.8, AMBER), (PROCESSING_P95_OBJECTIVE_S, RED)],
        decimals=2,
    )
    b.stat(
        "Processed → delivered p95 (objective 60 s)",
        "95th percentile from an event's processed_at to its notification delivered, all channels.",
        [_q(delivery_p95, "p95")],
        unit="s",
        steps=[(None, GREEN), (DELIVERY_P95_OBJECTIVE_S * 0.8, AMBER), (DELIVERY_P95_OBJECTIVE_S, RED)],
        decimals=2,
    )
    b.stat(
        "Availability (time range)",
        "Share of the time range in which the API was scraped up and every dependency its /readyz checks "
        "(database, Temporal, Redis) answered.",
        [
            _q(
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
            _q(
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
        [_q(_p(0.95, "pulse_event_processing_seconds", "priority"), "{{priority}}")],
        unit="s",
        objective=PROCESSING_P95_OBJECTIVE_S,
    )
    b.graph(
        "Processed → delivered p95 by channel",
        "processed_at → delivered, 95th percentile per channel; dashed line: the 60 s objective.",
        [_q(_p(0.95, "pulse_notification_delivery_seconds", "channel"), "{{channel}}")],
        unit="s",
        objective=DELIVERY_P95_OBJECTIVE_S,
    )

    b.graph(
        "Processes and dependencies up",
        "Scrape health of each Pulse process (count of up targets per job) and each dependency the API's "
        "/readyz checks (1 = answered).",
        [
            _q(f'sum by (job) (up{{job=~"{PULSE_JOBS_RE}"}})', "{{job}} up"),
            _q("min by (dependency) (pulse_dependency_up)", "{{dependency}}"),
        ],
        unit="short",
        width=8,
    )
    b.graph(
        "Failed / processed ratio",
        "Failed events as a share of events reaching a final state; the inverse of processing accuracy.",
        [
            _q(
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
            _q(f'sum(rate(pulse_events_ingested_total{{outcome="accepted"}}[{RATE}]))', "accepted"),
            _q(f"sum(rate(pulse_events_dispatched_total[{RATE}]))", "dispatched"),
            _q(f"sum(rate(pulse_events_processed_total[{RATE}]))", "final"),
        ],
        unit="ops",
        width=8,
    )

    b.stat(
        "Read rate (time range)",
        "Notifications read by their user per notification delivered: the plainest usefulness signal.",
        [
            _q(
                "sum(increase(pulse_notifications_read_total[$__range])) "
                '/ sum(increase(pulse_notification_deliveries_total{status="delivered"}[$__range]))',
                "read rate",
            )
        ],
        unit="percentunit",
        steps=[(None, AMBER), (0.2, GREEN)],
        decimals=1,
    )
    b.stat(
        "Backlog",
        "Events accepted but not yet processed or failed, all priorities.",
        [_q("sum(max by (priority) (pulse_events_backlog))", "backlog")],
        unit="short",
        steps=[(None, GREEN), (50_000, AMBER), (200_000, RED)],
    )
    b.stat(
        "Notifications sent (time range)",
        "Notifications created by the significance detectors over the time range.",
        [_q("sum(increase(pulse_notifications_created_total[$__range]))", "created")],
        unit="short",
        steps=[(None, GREEN)],
        decimals=0,
    )
    b.stat(
        "Delivery failure ratio (time range)",
        "Failed delivery attempts per attempt, all channels.",
        [
            _q(
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
    b = _Board(
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
            _q(
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
        [_q(f"sum by (outcome) (rate(pulse_events_ingested_total[{RATE}]))", "{{outcome}}")],
        unit="ops",
        stacked=True,
    )
    b.graph(
        "Ingest latency by source",
        "Time to validate and durably append the requests carrying each source's events: p50 and p99.",
        [
            _q(_p(0.5, "pulse_ingest_request_seconds", "source"), "p50 {{source}}"),
            _q(_p(0.99, "pulse_ingest_request_seconds", "source"), "p99 {{source}}"),
        ],
        unit="s",
    )
    b.graph(
        "Ingest rate vs its 1-day baseline",
        "Accepted events per second against the mean + 3 standard deviations of the same 5-minute rate "
        "over the past day (the IngestRateAnomalous alert fires when it leaves the mean by 3 sd).",
        [
            _q(f'sum(rate(pulse_events_ingested_total{{outcome="accepted"}}[{RATE}]))', "now"),
            _q(f"avg_over_time({ingest_5m}[1d])", "1d mean"),
            _q(
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
        [_q("max by (priority) (pulse_events_backlog)", "{{priority}}")],
        unit="short",
        stacked=True,
    )
    b.graph(
        "Backlog forecast (1 h ahead)",
        "predict_linear over the last 30 minutes: where each priority's backlog is heading; the early "
        "warning and capacity-planning view of the BacklogGrowing alert.",
        [_q("max by (priority) (predict_linear(pulse_events_backlog[30m], 3600))", "{{priority}} in 1h")],
        unit="short",
    )
    b.graph(
        "Temporal task-queue backlog",
        "Approximate backlog of Pulse's Temporal task queues (DescribeTaskQueue), by queue and task kind.",
        [
            _q(
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
        [_q(f"sum by (priority) (rate(pulse_events_shed_total[{RATE}]))", "{{priority}}")],
        unit="ops",
        stacked=True,
    )

    b.row("Dispatch and processing")
    b.graph(
        "Dispatched by route",
        "Events handed to Temporal per second: batched into shard workflows or given their own.",
        [_q(f"sum by (route) (rate(pulse_events_dispatched_total[{RATE}]))", "{{route}}")],
        unit="ops",
        stacked=True,
        width=8,
    )
    b.graph(
        "Dispatcher batch size",
        "Events read from the log per dispatcher tick (p50, p95): it grows with the backlog.",
        [
            _q(_p(0.5, "pulse_dispatch_batch_events"), "p50"),
            _q(_p(0.95, "pulse_dispatch_batch_events"), "p95"),
        ],
        unit="short",
        width=8,
    )
    b.graph(
        "Processed by type and outcome",
        "Events reaching a final state per second.",
        [
            _q(
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
            _q(_p(0.5, "pulse_event_processing_seconds", "priority"), "p50 {{priority}}"),
            _q(_p(0.95, "pulse_event_processing_seconds", "priority"), "p95 {{priority}}"),
        ],
        unit="s",
        objective=PROCESSING_P95_OBJECTIVE_S,
    )
    b.graph(
        "Recalculation time by engine (p95)",
        "Time to recalculate one batch per engine (trust, rarity, price, risk, collection statistics).",
        [_q(_p(0.95, "pulse_recalculation_seconds", "engine"), "{{engine}}")],
        unit="s",
    )

    b.row("Failures and cache")
    b.graph(
        "Failed events by category",
        "Events that ended failed per second, by error category; repair them from /v1/ops/failures.",
        [_q(f"sum by (category) (rate(pulse_events_failed_total[{RATE}]))", "{{category}}")],
        unit="ops",
        stacked=True,
        width=8,
    )
    b.graph(
        "Cache hit rate",
        "Entity read cache hits per lookup (stale answers count as misses).",
        [
            _q(
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
            _q(f"sum by (result) (rate(pulse_cache_requests_total[{RATE}]))", "{{result}}"),
            _q(f"sum(rate(pulse_cache_invalidations_total[{RATE}]))", "invalidated"),
        ],
        unit="ops",
        width=8,
    )

    b.row("Processes")
    b.graph(
        "CPU by process",
        "CPU seconds per second for each Pulse process (1 = one core).",
        [
            _q(
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
            _q(
                f'sum by (job, instance) (process_resident_memory_bytes{{job=~"{PULSE_JOBS_RE}"}})',
                "{{job}} {{instance}}",
            )
        ],
        unit="bytes",
    )
    return b.build()


# ---------------------------------------------------------------------------------------- notifications


def notifications() -> dict[str, object]:
    """Notifications created and delivered: outcomes by channel, latency, failures and read rate."""
    b = _Board(
        "pulse-notifications",
        "Pulse / Notifications & delivery",
        "Notifications from the significance detectors to the user's channel: outcomes, latency, reads.",
        ["notifications"],
    )
    b.graph(
        "Notifications created by kind and severity",
        "Notifications the significance detectors created per second.",
        [
            _q(
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
            _q(
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
            _q(_p(0.5, "pulse_notification_delivery_seconds", "channel"), "p50 {{channel}}"),
            _q(_p(0.95, "pulse_notification_delivery_seconds", "channel"), "p95 {{channel}}"),
        ],
        unit="s",
        objective=DELIVERY_P95_OBJECTIVE_S,
    )
    b.graph(
        "Delivery failure ratio by channel",
        "Failed attempts per finished attempt (delivered or failed), by channel; the "
        "DeliveryFailureRateHigh alert fires past 10% sustained.",
        [
            _q(
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
            _q(
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
            _q(f"sum(rate(pulse_notifications_read_total[{RATE}]))", "read"),
            _q(
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
    b = _Board(
        "pulse-temporal-workers",
        "Pulse / Temporal workers",
        "The Temporal SDK runtime's metrics from every Pulse worker (histograms in ms). Find individual "
        "workflows in the Temporal Web UI.",
        ["temporal"],
    )
    b.builder.with_variable(
        _query_variable(
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
            _q(
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
            _q(
                _p(0.95, "temporal_workflow_task_schedule_to_start_latency", "task_queue", tq),
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
            _q(
                _p(0.95, "temporal_workflow_task_execution_latency", "workflow_type", tq),
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
            _q(
                _p(0.95, "temporal_activity_schedule_to_start_latency", "activity_type", tq),
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
            _q(
                _p(0.95, "temporal_activity_execution_latency", "activity_type", tq),
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
            _q(
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
            _q(
                f"sum by (worker_type) (temporal_worker_task_slots_available{{{tq}}})",
                "{{worker_type}} free",
            ),
            _q(
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
            _q(
                f'sum by (instance) (temporal_sticky_cache_size{{job="{JOB_TEMPORAL_SDK}"}})',
                "size {{instance}}",
            ),
            _q(
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
            _q(
                _p(0.95, "temporal_workflow_endtoend_latency", "workflow_type", tq),
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
            _q(
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
            _q(
                _p(0.95, "temporal_request_latency", "operation", f'job="{JOB_TEMPORAL_SDK}"'),
                "{{operation}}",
            )
        ],
        unit="ms",
    )
    return b.build()


DASHBOARDS = {
    "pulse-overview.json": overview,
    "pulse-pipeline.json": pipeline,
    "pulse-notifications.json": notifications,
    "pulse-temporal-workers.json": temporal_workers,
}


def render(model: dict[str, object]) -> str:
    """Serialise deterministically: sorted keys and a final newline, so regeneration is byte-identical."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build_all() -> dict[str, str]:
    """File name → JSON text for every dashboard."""
    return {name: render(make()) for name, make in DASHBOARDS.items()}


def write(out_dir: Path) -> list[Path]:
    """Write every dashboard into ``out_dir`` and drop stale generated files left by renamed dashboards."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = build_all()
    written: list[Path] = []
    for name, text in rendered.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for stale in out_dir.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    return written


def check(out_dir: Path) -> list[str]:
    """Names of generated files that are missing, differ from a fresh build, or should not exist."""
    rendered = build_all()
    problems = []
    for name, text in rendered.items():
        path = out_dir / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name}: differs from a fresh build")
    problems.extend(
        f"{stale.name}: not produced by the builder"
        for stale in sorted(out_dir.glob("*.json"))
        if stale.name not in rendered
    )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write the dashboards, or with ``--check`` exit 1 when the committed JSON is out of date."""
    parser = argparse.ArgumentParser(
        prog="python -m nftpulse.dashboards.build", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if regenerating would change a file")
    parser.add_argument(
        "--out", type=Path, default=GENERATED_DIR, help="output folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for problem in problems:
            print(f"dashboards: {problem}", file=sys.stderr)
        if problems:
            print(
                "dashboards: run `python -m nftpulse.dashboards.build` and commit the result", file=sys.stderr
            )
            return 1
        print(f"dashboards: {len(DASHBOARDS)} dashboards up to date in {args.out}")
        return 0
    for path in write(args.out):
        print(f"dashboards: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
