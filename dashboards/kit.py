"""The pieces every Pulse dashboard is built from: queries, panels laid out on a grid, thresholds,
variables, and the Prometheus job names ``dashboards/prometheus/prometheus.yml`` scrapes.
"""

from __future__ import annotations

import json
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
#: The seed's target: more than 80 % of notifications rated useful.
USEFUL_TARGET = 0.8

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


def q(expr: str, legend: str = "__auto") -> Query:
    return Query(expr=expr, legend=legend)


def targets(queries: Sequence[Query], *, instant: bool = False) -> list[Builder[Dataquery]]:
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


def thresholds(steps: Sequence[tuple[float | None, str]]) -> dash.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (Grafana's -Infinity base)."""
    return (
        dash.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def p(quantile: float, metric: str, by: str = "", selector: str = "") -> str:
    """``histogram_quantile`` over a classic histogram, aggregated by ``le`` plus the given labels."""
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({quantile}, sum by ({labels}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


class Layout:
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


class Board:
    """A dashboard under construction: panels are appended in reading order, rows start new lines."""

    def __init__(self, uid: str, title: str, description: str, tags: Sequence[str]) -> None:
        self.layout = Layout()
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
            .targets(targets(queries))
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
            panel.thresholds(thresholds([(None, GREEN), (objective, RED)])).thresholds_style(
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
            .targets(targets(queries))
            .unit(unit)
            .thresholds(thresholds(steps))
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


def query_variable(name: str, label: str, query: str) -> dash.QueryVariable:
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
