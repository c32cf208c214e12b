"""scripts/install-npm-deps.sh: valid bash, called by scripts/test, and a no-op (no npm install) when the
pinned packages are there."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.chain.anvil import missing_tools

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-npm-deps.sh"


def test_script_is_valid_bash_and_run_by_scripts_test() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert "scripts/install-npm-deps.sh" in (REPO / "scripts" / "test").read_text()


def test_script_does_nothing_when_everything_is_installed() -> None:
    if missing_tools():
        subprocess.run(["bash", str(SCRIPT)], check=True, capture_output=True, timeout=300)
    done = subprocess.run(["bash", str(SCRIPT)], check=True, capture_output=True, text=True, timeout=60)
    assert "nothing to do" in done.stdout and "installing" not in done.stdout
