"""Dashboards as code: regeneration is byte-identical, the CLI's --check works, queries name real metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nftpulse.dashboards import build, kit

GENERATED = build.GENERATED_DIR
EXPECTED_UIDS = {"pulse-overview", "pulse-pipeline", "pulse-notifications", "pulse-temporal-workers"}


def _panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in model.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _load_generated() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(GENERATED.glob("*.json"))}


def test_regenerating_gives_byte_identical_json() -> None:
    """The committed JSON is exactly what the builder produces, and building twice gives the same bytes."""
    first = build.build_all()
    second = build.build_all()
    assert first == second, "the builder is not deterministic"
    committed = {p.name: p.read_text(encoding="utf-8") for p in GENERATED.glob("*.json")}
    assert set(committed) == set(first), "generated/ and the builder disagree on which dashboards exist"
    for name, text in first.items():
        assert committed[name] == text, (
            f"{name} is stale: run `python -m nftpulse.dashboards.build` and commit"
        )


def test_cli_check_passes_on_committed_json() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nftpulse.dashboards.build", "--check"],
        capture_output=True,
        text=True,
        cwd=build.GENERATED_DIR.parents[1],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_cli_writes_then_check_detects_drift(tmp_path: Path) -> None:
    """``build`` writes every file; ``--check`` exits 1 on an edited, a missing or a stray file."""
    assert build.main(["--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.glob("*.json")} == set(build.DASHBOARDS)
    assert build.main(["--check", "--out", str(tmp_path)]) == 0

    overview = tmp_path / "pulse-overview.json"
    overview.write_text(overview.read_text().replace("Overview", "Overveiw"))
    assert build.main(["--check", "--out", str(tmp_path)]) == 1
    overview.unlink()
    assert build.main(["--check", "--out", str(tmp_path)]) == 1
    assert build.main(["--out", str(tmp_path)]) == 0
    (tmp_path / "renamed-away.json").write_text("{}")
    assert build.main(["--check", "--out", str(tmp_path)]) == 1
    # writing again removes the stray file so the folder mirrors the builder
    assert build.main(["--out", str(tmp_path)]) == 0
    assert build.main(["--check", "--out", str(tmp_path)]) == 0


def test_every_dashboard_has_a_datasource_variable_used_by_every_panel_and_query() -> None:
    dashboards = _load_generated()
    assert {d["uid"] for d in dashboards.values()} == EXPECTED_UIDS
    for name, model in dashboards.items():
        variables = model["templating"]["list"]  # type: ignore[index]
        ds_vars = [v for v in variables if v["type"] == "datasource"]
        assert ds_vars and ds_vars[0]["name"] == "datasource" and ds_vars[0]["query"] == "prometheus", name
        ids = [p["id"] for p in _panels(model)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in _panels(model):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel.get("description"), f"{name}: panel {panel['title']!r} has no description"
            assert panel["targets"], f"{name}: panel {panel['title']!r} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panels_do_not_overlap() -> None:
    for name, model in _load_generated().items():
        cells: dict[tuple[int, int], str] = {}
        for panel in _panels(model):
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, f"{name}: {panel['title']} overflows the grid"
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, f"{name}: {panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]


def test_overview_shows_the_seed_objectives() -> None:
    overview = json.loads((GENERATED / "pulse-overview.json").read_text())
    titles = " | ".join(p["title"] for p in _panels(overview))
    for needle in ("Processing p95", "delivered p95", "Availability", "accuracy", "Read rate", "Useful rate"):
        assert needle in titles, f"overview lacks {needle!r}: {titles}"
    objectives = {
        p["title"]: [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        for p in _panels(overview)
        if "objective" in p["title"]
    }
    assert objectives["Processing p95 (objective 30 s)"][-1] == 30
    assert objectives["Processed → delivered p95 (objective 60 s)"][-1] == 60
    useful = {
        p["title"]: p for p in _panels(overview) if "Useful" in p["title"] or "Usefulness" in p["title"]
    }
    steps = useful["Useful rate (target 80%)"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 0.8  # green from the seed's 80 % target
    beside = useful["Usefulness next to the 80 % target, with read and click rates"]
    assert [t["legendFormat"] for t in beside["targets"]] == ["useful rate", "read rate", "click rate"]


def _metric_names(expr: str) -> set[str]:
    """Metric-looking identifiers in a PromQL expression, minus functions, keywords and label names."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_grouping = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels
    )
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_grouping)
    tokens = set(
        re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*(?:\{|\)|$|\s|\[|/|\*|-|\+|>|<|,))", without_ranges)
    )
    return {t for t in tokens if "_" in t or ":" in t} - {"histogram_quantile", "predict_linear"}


def test_queries_use_only_known_metrics() -> None:
    """Every metric a panel reads is exported by nftpulse.core.metrics, the Temporal SDK, the client library's
    process collector, Prometheus itself (``up``) or a recording rule in pulse.rules.yml."""
    from prometheus_client.metrics import MetricWrapperBase

    from nftpulse.core import metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    known: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            # describe() gives the family (name without samples' suffixes) even before any label is used
            for family in value.describe():
                known.update(family.name + suffix for suffix in suffixes[family.type])
    temporal = {
        "temporal_workflow_completed",
        "temporal_activity_execution_failed",
        "temporal_local_activity_execution_failed",
        "temporal_worker_task_slots_available",
        "temporal_worker_task_slots_used",
        "temporal_sticky_cache_size",
        "temporal_sticky_cache_hit",
        "temporal_num_pollers",
    } | {
        f"{h}_bucket"
        for h in (
            "temporal_workflow_task_schedule_to_start_latency",
            "temporal_workflow_task_execution_latency",
            "temporal_activity_schedule_to_start_latency",
            "temporal_activity_execution_latency",
            "temporal_workflow_endtoend_latency",
            "temporal_request_latency",
        )
    }
    rules = yaml.safe_load((build.GENERATED_DIR.parent / "prometheus/rules/pulse.rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known |= temporal | recorded | {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    unknown: dict[str, set[str]] = {}
    for name, model in _load_generated().items():
        for panel in _panels(model):
            for target in panel.get("targets", []):
                names = _metric_names(target["expr"]) - {"up"}
                missing = names - known
                if missing:
                    unknown[f"{name}: {panel['title']}"] = missing
    assert not unknown, f"queries name metrics nobody exports: {unknown}"


def test_prometheus_config_jobs_match_the_dashboards() -> None:
    """The job names the dashboards and rules select on are the ones prometheus.yml scrapes."""
    config = yaml.safe_load((build.GENERATED_DIR.parent / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {kit.JOB_API, kit.JOB_DISPATCHER, kit.JOB_WORKER, kit.JOB_TEMPORAL_SDK} <= jobs
    assert config["rule_files"] == ["rules/pulse.rules.yml"]


def test_grafana_provisioning_points_at_the_generated_dashboards(repo_root: Path) -> None:
    """Grafana's dashboard provider path is where docker-compose.yml mounts dashboards/generated."""
    provider = yaml.safe_load((repo_root / "dashboards/provisioning/dashboards/pulse.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./dashboards/generated:{path}:ro" in mounts
    datasources = yaml.safe_load(
        (repo_root / "dashboards/provisioning/datasources/prometheus.yml").read_text()
    )
    (prom,) = datasources["datasources"]
    assert prom["type"] == "prometheus" and prom["url"] == "http://prometheus:9090"


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_dashboard_json_is_grafana_11_shaped(name: str) -> None:
    model = json.loads((GENERATED / name).read_text())
    assert model["schemaVersion"] >= 39, "not a Grafana 11 dashboard schema"
    assert model["title"].startswith("Pulse / ")
    assert "pulse" in model["tags"]
