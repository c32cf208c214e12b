"""Pulse's production entry points (``pulse api|worker|dispatcher``) as real child processes, for tests that
kill them mid-stream or scrape their metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from nftpulse.store import schema
from nftpulse.store.db import Database
from tests.ports import free_port


@dataclass
class PulseProcesses:
    database_url: str
    temporal_address: str
    log_dir: Path
    admin_key: str = field(default_factory=lambda: f"pk_test_{uuid.uuid4().hex}")
    #: One pepper for all the processes, as a deployment on several hosts must have.
    key_pepper: str = field(default_factory=lambda: f"pepper-{uuid.uuid4().hex}")
    task_queue: str = field(default_factory=lambda: f"pulse-proc-{uuid.uuid4().hex[:8]}")
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Tests poll the log four times as often as production, to finish sooner; benchmarks measure the
    #: production pacing.
    fast_dispatch: bool = True
    migrated: bool = False
    #: Added to the processes' Postgres ``application_name`` (``pulse-<name><suffix>``): a test that
    #: terminates its own processes' backends tells them from those of tests running beside it.
    application_suffix: str = ""

    def __post_init__(self) -> None:
        for name in ("api", "api_metrics", "worker_metrics", "dispatcher_metrics", "sdk_metrics"):
            self.ports[name] = free_port()

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        env.update(
            PULSE_DATABASE_URL=self.database_url,
            PULSE_TEMPORAL_ADDRESS=self.temporal_address,
            PULSE_TASK_QUEUE=self.task_queue,
            PULSE_WORKFLOW_ID_PREFIX=f"{self.task_queue}/",
            PULSE_BOOTSTRAP_ADMIN_KEY=self.admin_key,
            PULSE_KEY_PEPPER=self.key_pepper,
            PULSE_API_PORT=str(self.ports["api"]),
            PULSE_API_METRICS_PORT=str(self.ports["api_metrics"]),
            PULSE_WORKER_METRICS_PORT=str(self.ports["worker_metrics"]),
            PULSE_DISPATCHER_METRICS_PORT=str(self.ports["dispatcher_metrics"]),
            PULSE_TEMPORAL_SDK_METRICS_PORT=str(self.ports["sdk_metrics"]),
            PULSE_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        )
        if self.fast_dispatch:
            env["PULSE_DISPATCH_INTERVAL_S"] = "0.05"
        env.update(self.extra_env)
        return env

    def start(self, part: str, name: str | None = None, args: Sequence[str] = ()) -> None:
        """Start ``pulse <part> [args]``; a second worker needs a ``name`` and gets metrics ports of its
        own."""
        name = name or part
        if not self.migrated:
            self.migrate()
        env = self.env
        if not self.database_url.startswith("sqlite"):
            # Names the process's Postgres backends in pg_stat_activity (the pipeline bench charges their
            # CPU to the part that uses them).
            sep = "&" if "?" in self.database_url else "?"
            env["PULSE_DATABASE_URL"] = (
                f"{self.database_url}{sep}application_name=pulse-{name}{self.application_suffix}"
            )
        if name != part:
            for key in ("worker_metrics", "sdk_metrics"):
                self.ports[f"{name}_{key}"] = free_port()
            env["PULSE_WORKER_METRICS_PORT"] = str(self.ports[f"{name}_worker_metrics"])
            env["PULSE_TEMPORAL_SDK_METRICS_PORT"] = str(self.ports[f"{name}_sdk_metrics"])
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "nftpulse.cli", part, *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def migrate(self) -> None:
        """What the compose file's one-off ``migrate`` service does before the processes start (they refuse
        a database behind the code's schema)."""
        db = Database(self.database_url)
        try:
            schema.upgrade(db)
        finally:
            db.dispose()
        self.migrated = True

    def kill(self, part: str) -> None:
        """SIGKILL: no clean shutdown, exactly what a crash or an OOM kill does."""
        proc = self.procs.pop(part)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"pulse {name} exited: {(self.log_dir / f'{name}.log').read_text()[-2000:]}"
                    )
            time.sleep(0.2)
        raise TimeoutError("pulse api not ready")
