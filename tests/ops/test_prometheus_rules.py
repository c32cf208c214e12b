"""Alert rules: promtool accepts the rules and the config, and every rule is exercised by a unit test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / "dashboards/prometheus/rules"
RULES = RULES_DIR / "pulse.rules.yml"
RULE_TESTS = RULES_DIR / "pulse.rules.test.yml"
CONFIG = RULES_DIR.parent / "prometheus.yml"


def _run(promtool: str, *args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_promtool_check_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config(promtool: str) -> None:
    """The compose stack's prometheus.yml is valid and loads the rules (checked relative to its folder)."""
    result = _run(promtool, "check", "config", str(CONFIG), cwd=CONFIG.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """promtool only tests what the test file names: keep every alert (and recording rule) covered."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    records = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fired == set(), f"alerts never shown firing: {sorted(alerts - fired)}"
    assert alerts - quiet == set(), f"alerts never shown quiet: {sorted(alerts - quiet)}"
    alert_exprs = " ".join(rule["expr"] for group in groups for rule in group["rules"] if "alert" in rule)
    for record in records:
        assert record in alert_exprs, f"recording rule {record} is used by no alert (and so untested)"


def test_alerts_carry_severity_and_annotations() -> None:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            assert rule["labels"]["severity"] in {"page", "warning"}, rule["alert"]
            assert {"summary", "description", "dashboard"} <= set(rule["annotations"]), rule["alert"]
