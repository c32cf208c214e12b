"""``pulse demo`` says what to do when it cannot start; its run against a real Pulse is in test_browser.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nftpulse.core.settings import Settings
from nftpulse.demo import Demo, DemoConfig, DemoError, admin_key, demo_contract
from tests.ops.conftest import REPO_ROOT
from tests.ports import free_port


def test_without_an_admin_key_it_names_pulse_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env["PULSE_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "nftpulse.cli", "demo", "--duration", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "no admin key" in message and "pulse up" in message and "--api-key" in message


def test_admin_key_is_the_one_pulse_up_saved(tmp_path: Path) -> None:
    assert admin_key(Settings(data_dir=tmp_path)) is None
    (tmp_path / "admin.key").write_text("pk_saved\n")
    assert admin_key(Settings(data_dir=tmp_path)) == "pk_saved"
    assert admin_key(Settings(data_dir=tmp_path, bootstrap_admin_key="pk_configured")) == "pk_configured"


def test_without_a_running_pulse_it_says_how_to_start_one() -> None:
    demo = Demo(DemoConfig(url=f"http://127.0.0.1:{free_port()}", admin_key="pk_x"), say=lambda _: None)
    try:
        with pytest.raises(DemoError, match=r"no Pulse ready at .*scripts/up"):
            demo.wait_ready(timeout_s=1)
    finally:
        demo.close()


def test_each_run_has_collections_and_ids_of_its_own() -> None:
    """A second demo is news to Pulse, not a stream of duplicates."""
    first, second = (
        Demo(DemoConfig(url="http://127.0.0.1:1", admin_key="k", seed=3), say=lambda _: None)
        for _ in range(2)
    )
    try:
        assert set(first.contracts.values()).isdisjoint(second.contracts.values())
        a, b = (next(iter(d.stream.mints())) for d in (first, second))
        assert first._own(a)["id"] != second._own(b)["id"]
        assert all(len(c) == 42 and int(c, 16) for c in first.contracts.values())
        assert demo_contract("0123abcd", 5).endswith("5")
        fraud = first.fraud_finding(first._own(a))
        assert fraud["type"] == "fraud_finding" and fraud["data"]["severity"] in ("high", "critical")
    finally:
        first.close()
        second.close()
