"""``pulse up`` as a terminal runs it: it never leaves its Temporal dev server behind (not even when killed
with SIGKILL), the next ``pulse up`` of the same data dir starts, a SIGTERM stops everything within a few
seconds, and a part that fails stops the whole process instead of leaving the rest running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ops.conftest import REPO_ROOT
from tests.ports import free_port

PORTS = (
    "API",
    "API_METRICS",
    "TEMPORAL",
    "TEMPORAL_UI",
    "WORKER_METRICS",
    "DISPATCHER_METRICS",
    "TEMPORAL_SDK_METRICS",
)


def _env(data_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update({f"PULSE_{name}_PORT": str(port) for name, port in ports.items()})
    env.update(PULSE_DATA_DIR=str(data_dir), PULSE_LOG_LEVEL="WARNING")
    return env


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "nftpulse.cli", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )


def _wait_ready(proc: subprocess.Popen[bytes], api_port: int, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"pulse up exited with {proc.returncode}: {log.read_text()[-3000:]}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, f"pulse up not ready: {log.read_text()[-3000:]}"
        time.sleep(0.25)


def _alive(pid: int) -> bool:
    """Running, not a zombie (a reaped or exiting child has no command line any more)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def up_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, int], Path]]:
    ports = {name: free_port() for name in PORTS}
    data = tmp_path / "data"
    yield _env(data, ports), ports, data
    # Whatever a failing assertion left running.
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((data / "temporal.pid").read_text()), signal.SIGKILL)


def test_pulse_up_leaves_no_dev_server_and_stops_in_seconds(
    up_env: tuple[dict[str, str], dict[str, int], Path], tmp_path: Path
) -> None:
    env, ports, data = up_env
    log = tmp_path / "up.log"
    first = _start(env, log)
    try:
        _wait_ready(first, ports["API"], log)
        dev_pid = int((data / "temporal.pid").read_text())
        assert _alive(dev_pid)
        # SIGKILL: no handler runs, yet the dev server goes with its pulse up.
        first.kill()
        first.wait(timeout=10)
        assert _gone_within(dev_pid, 15), "the dev server outlived a killed pulse up"
    finally:
        if first.poll() is None:
            first.kill()

    # The next pulse up of this data dir starts (ports free, nothing left over) ...
    second = _start(env, log)
    try:
        _wait_ready(second, ports["API"], log)
        dev_pid = int((data / "temporal.pid").read_text())
        # ... and a SIGTERM stops it and its dev server within a few seconds.
        started = time.monotonic()
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
        took = time.monotonic() - started
        assert took < 8, f"pulse up took {took:.1f}s to stop"
        assert second.returncode == 0, log.read_text()[-3000:]
        assert _gone_within(dev_pid, 5)
        assert not (data / "temporal.pid").exists()
    finally:
        if second.poll() is None:
            second.kill()


def test_pulse_up_exits_when_a_part_fails(
    up_env: tuple[dict[str, str], dict[str, int], Path], tmp_path: Path
) -> None:
    env, _ports, data = up_env
    log = tmp_path / "up.log"
    # A namespace the dev server lacks: the worker fails at start while the API could serve on. The process
    # must not go on without its worker.
    env = {**env, "PULSE_TEMPORAL_NAMESPACE": "no-such-namespace"}
    proc = _start(env, log)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"pulse up kept running without its worker: {log.read_text()[-3000:]}") from None
    assert proc.returncode == 1, log.read_text()[-3000:]
    assert "worker stopped" in " ".join(log.read_text().split()), log.read_text()[-3000:]
    assert (
        _gone_within(int((data / "temporal.pid").read_text()), 10)
        if (data / "temporal.pid").exists()
        else True
    )
