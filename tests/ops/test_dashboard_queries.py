"""Every panel query of the generated dashboards is valid PromQL and returns data from a scraped Pulse.

Starts Debian's ``prometheus`` on 127.0.0.1 with the compose stack's own config (same job names, same
rules) rewritten to scrape the ``pulse_metrics_targets`` fixture every second, waits for a few scrapes,
then runs each panel's query as an instant query. Grafana's template variables are substituted first.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from nftpulse.dashboards import build
from tests.ports import free_port

PROM_DIR = build.GENERATED_DIR.parent / "prometheus"
# What Grafana would put in for its built-in variables at a 1 s scrape interval.
BUILTINS = {"__rate_interval": "1m", "__range": "5m", "__interval": "15s"}


def _substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace ``$name`` / ``${name}`` / ``[[name]]`` Grafana variables; unknown names are left to fail."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def _dashboard_variables(model: dict[str, Any]) -> dict[str, str]:
    """Values for the dashboard's own variables: the All value where offered, else the current value."""
    out = dict(BUILTINS)
    for var in model.get("templating", {}).get("list", []):
        if var["type"] == "datasource":
            continue
        if var.get("includeAll"):
            out[var["name"]] = var.get("allValue") or ".*"
        else:
            current = var.get("current", {}).get("value", "")
            out[var["name"]] = current[0] if isinstance(current, list) else current
    return out


def _panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, substituted expr) for every target of every generated dashboard."""
    out = []
    for path in sorted(build.GENERATED_DIR.glob("*.json")):
        model = json.loads(path.read_text())
        variables = _dashboard_variables(model)
        panels = [p for top in model["panels"] for p in (top, *top.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((model["title"], panel["title"], _substitute(target["expr"], variables)))
    return out


def _scrape_config(targets: dict[str, list[str]], rules: Path, self_port: int) -> dict[str, Any]:
    """The real prometheus.yml with 1 s intervals and each job's discovery replaced by the given targets."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config["rule_files"] = [str(rules)]
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name == "prometheus":
            jobs.append({"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{self_port}"]}]})
        elif name in targets:
            jobs.append(
                {
                    "job_name": name,
                    "metrics_path": job.get("metrics_path", "/metrics"),
                    "static_configs": [{"targets": targets[name]}],
                }
            )
    missing = {j["job_name"] for j in config["scrape_configs"] if j["job_name"].startswith("pulse-")} - set(
        targets
    )
    assert not missing, f"pulse_metrics_targets provides no targets for jobs {sorted(missing)}"
    config["scrape_configs"] = jobs
    return config


@pytest.fixture(scope="module")
def prometheus_url(
    prometheus_bin: str, pulse_metrics_targets: dict[str, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A Prometheus on 127.0.0.1 scraping the targets every second, with Pulse's rules loaded."""
    workdir = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config_path = workdir / "prometheus.yml"
    rules = PROM_DIR / "rules/pulse.rules.yml"
    config_path.write_text(yaml.safe_dump(_scrape_config(pulse_metrics_targets, rules, port)))
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited:\n{(workdir / 'prometheus.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("prometheus did not become ready in 30 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def _query(url: str, expr: str) -> dict[str, Any]:
    response = httpx.post(f"{url}/api/v1/query", data={"query": expr}, timeout=10)
    body = response.json()
    assert isinstance(body, dict)
    return body


def _wait_for_scrapes(url: str, jobs: list[str], scrapes: int, timeout_s: float) -> None:
    """Until every target of every job has been scraped up ``scrapes`` times (enough for rate())."""
    deadline = time.monotonic() + timeout_s
    expr = f'min by (job) (count_over_time(up{{job=~"{"|".join(jobs)}"}}[1m]))'
    while time.monotonic() < deadline:
        result = _query(url, expr)["data"]["result"]
        counts = {r["metric"]["job"]: float(r["value"][1]) for r in result}
        if set(counts) == set(jobs) and min(counts.values()) >= scrapes:
            return
        time.sleep(0.5)
    pytest.fail(f"targets not scraped {scrapes} times in {timeout_s} s: {_query(url, expr)}")


@pytest.mark.prometheus
def test_every_panel_query_is_valid_and_returns_data(
    prometheus_url: str, pulse_metrics_targets: dict[str, list[str]]
) -> None:
    jobs = sorted(pulse_metrics_targets)
    _wait_for_scrapes(prometheus_url, jobs, scrapes=5, timeout_s=30)
    targets = httpx.get(f"{prometheus_url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    down = [(t["labels"]["job"], t["scrapeUrl"], t["lastError"]) for t in targets if t["health"] != "up"]
    assert not down, f"targets down: {down}"

    queries = _panel_queries()
    assert len(queries) > 40
    invalid: list[str] = []
    empty: list[tuple[str, str, str]] = []
    for dashboard, panel, expr in queries:
        body = _query(prometheus_url, expr)
        if body.get("status") != "success":
            invalid.append(f"{dashboard} / {panel}: {body.get('error')} in {expr}")
        elif not body["data"]["result"]:
            empty.append((dashboard, panel, expr))
    assert not invalid, "invalid queries:\n" + "\n".join(invalid)

    # Series that appear a little later (sticky-cache hits, recorded rules) get a few more seconds.
    deadline = time.monotonic() + 15
    while empty and time.monotonic() < deadline:
        time.sleep(1)
        empty = [q for q in empty if not _query(prometheus_url, q[2])["data"]["result"]]
    assert not empty, "queries returning no data:\n" + "\n".join(f"{d} / {p}: {e}" for d, p, e in empty)


@pytest.mark.prometheus
def test_rules_load_and_evaluate(prometheus_url: str) -> None:
    """The same rules file loads into a live Prometheus and every rule evaluates without error."""
    deadline = time.monotonic() + 15
    while True:
        groups = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rules, "no rules loaded"
    unhealthy = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert not unhealthy, unhealthy


def test_substitution_covers_every_variable() -> None:
    """No ``$`` is left in a query after substitution: Prometheus would reject it, or worse, match it."""
    leftovers = [(d, p, e) for d, p, e in _panel_queries() if "$" in e]
    assert not leftovers, leftovers
