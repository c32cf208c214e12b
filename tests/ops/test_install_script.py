"""scripts/install-debian-deps.sh: valid bash, and a no-op (no apt-get at all) when everything is there."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts/install-debian-deps.sh"


def test_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_script_is_idempotent_when_installed() -> None:
    if not (Path("/usr/bin/promtool").exists() and Path("/usr/bin/chromium").exists()):
        pytest.skip("prometheus/chromium not installed; the install itself is CI's job, not a test's")
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to do" in result.stdout
    assert "apt-get" not in result.stdout


def test_script_rejects_unknown_packages() -> None:
    if shutil.which("apt-cache") is None:
        pytest.skip("not a Debian machine")
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PULSE_DEBIAN_DEPS": "not-a-package"},
    )
    assert result.returncode == 2
    assert "unknown package" in result.stderr


def test_scripts_test_installs_what_the_tests_use() -> None:
    """promtool for the Prometheus tests, chromium for the browser test."""
    script = (SCRIPT.parent / "test").read_text()
    line = next(line for line in script.splitlines() if "install-debian-deps.sh" in line)
    assert "prometheus" in line and "chromium" in line, line
