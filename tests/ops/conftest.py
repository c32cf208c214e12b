"""Fixtures for the operations tests: tool lookup and the metrics targets Prometheus scrapes.

``pulse_metrics_targets`` is the seam for a running Pulse: it maps each Prometheus job name of
``dashboards/prometheus/prometheus.yml`` to ``host:port`` targets. Until a fixture that starts the real
API, dispatcher and worker replaces it, it serves a stand-in: an in-process ``prometheus_client`` server
exporting every metric of :mod:`pulse.metrics` with synthetic activity, plus a real Temporal worker
(``temporal_sdk_load.py`` in a subprocess) for the SDK's own ``temporal_*`` metrics.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboards.build import JOB_API, JOB_DISPATCHER, JOB_TEMPORAL_SDK, JOB_WORKER

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run scripts/install-debian-deps.sh (installs Debian's prometheus, which ships promtool)"


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker here because pyproject.toml is not this suite's file to edit."""
    config.addinivalue_line(
        "markers", "prometheus: starts Debian's prometheus binary and queries it (needs the install script)"
    )


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS picks it; a race is possible but harmless here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _debian_tool(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding docker-compose.yml)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path to promtool; skips when the install script has not been run on this machine."""
    path = _debian_tool("promtool")
    if path is None:
        pytest.skip(f"promtool not found: {INSTALL_HINT}")
    return path


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Path to the prometheus server binary; skips when the install script has not been run."""
    path = _debian_tool("prometheus")
    if path is None:
        pytest.skip(f"prometheus not found: {INSTALL_HINT}")
    return path


# ------------------------------------------------------------------------------ synthetic Pulse exporter


class SyntheticPulseActivity:
    """Drives every metric in :mod:`pulse.metrics` with plausible labels and values, in a thread.

    The label values mirror what the dashboards and rules select on (outcome="accepted", status="failed",
    result="hit", …), so a dashboard query that returns nothing here points at a real mismatch.
    """

    SOURCES_TYPES = (("opensea", "item_sold"), ("opensea", "item_listed"), ("alchemy", "transfer"))
    PRIORITIES = ("critical", "high", "normal", "low")
    CHANNELS = ("in_app", "email", "sms", "push", "webhook")
    ENGINES = ("trust", "rarity", "price", "risk", "collection_stats")

    def __init__(self, tick_s: float = 0.1, seed: int = 5) -> None:
        self.tick_s = tick_s
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="synthetic-pulse-metrics", daemon=True)
        self.backlog = dict.fromkeys(self.PRIORITIES, 0.0)

    def start(self) -> None:
        self.tick()  # every series exists before the first scrape
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        while not self.stop_event.wait(self.tick_s):
            self.tick()

    def tick(self) -> None:
        """One step of activity on every metric."""
        from pulse import metrics as m

        rng = self.rng
        for source, event_type in self.SOURCES_TYPES:
            m.EVENTS_INGESTED.labels(source, event_type, "accepted").inc(rng.randint(5, 15))
            m.EVENTS_INGESTED.labels(source, event_type, "duplicate").inc(rng.randint(0, 2))
            m.EVENTS_INGESTED.labels(source, event_type, "rejected").inc(rng.randint(0, 1))
            m.EVENTS_INGESTED.labels(source, event_type, "shed").inc(rng.randint(0, 1))
            m.EVENTS_PROCESSED.labels(event_type, "processed").inc(rng.randint(5, 15))
            m.EVENTS_PROCESSED.labels(event_type, "failed").inc(rng.randint(0, 1))
        for endpoint in ("/v1/events", "/v1/webhooks/opensea", "/v1/webhooks/alchemy"):
            m.INGEST_SECONDS.labels(endpoint).observe(rng.uniform(0.001, 0.05))
        for priority in self.PRIORITIES:
            # a backlog that drifts upward, so predict_linear has a slope to extrapolate
            self.backlog[priority] = max(0.0, self.backlog[priority] + rng.uniform(-5, 10))
            m.BACKLOG.labels(priority).set(self.backlog[priority])
            m.PROCESSING_SECONDS.labels(priority).observe(rng.uniform(0.2, 12))
            if priority in ("normal", "low"):
                m.SHED.labels(priority).inc(rng.randint(0, 2))
        for kind in ("workflow", "activity"):
            m.TASK_QUEUE_BACKLOG.labels("pulse", kind).set(rng.randint(0, 40))
        m.EVENTS_DISPATCHED.labels("partition").inc(rng.randint(10, 30))
        m.EVENTS_DISPATCHED.labels("own_workflow").inc(rng.randint(0, 2))
        m.DISPATCH_BATCH.observe(rng.randint(1, 800))
        for engine in self.ENGINES:
            m.RECALC_SECONDS.labels(engine).observe(rng.uniform(0.0005, 0.2))
        for category in ("validation", "provider", "timeout"):
            m.EVENTS_FAILED.labels(category).inc(rng.randint(0, 1))
        for result, weight in (("hit", 20), ("miss", 4), ("stale", 1)):
            m.CACHE_REQUESTS.labels(result).inc(rng.randint(0, weight))
        m.CACHE_INVALIDATIONS.inc(rng.randint(1, 10))
        m.NOTIFICATIONS_CREATED.labels("price_move", "info").inc(rng.randint(0, 3))
        m.NOTIFICATIONS_CREATED.labels("fraud_finding", "critical").inc(rng.randint(0, 1))
        for channel in self.CHANNELS:
            m.DELIVERIES.labels(channel, "sent").inc(rng.randint(3, 6))
            m.DELIVERIES.labels(channel, "delivered").inc(rng.randint(2, 5))
            m.DELIVERIES.labels(channel, "failed").inc(rng.randint(0, 1))
            m.DELIVERIES.labels(channel, "read").inc(rng.randint(0, 2))
            m.DELIVERY_SECONDS.labels(channel).observe(rng.uniform(0.1, 20))
        m.NOTIFICATIONS_READ.inc(rng.randint(0, 3))
        for dependency in ("database", "temporal", "redis"):
            m.DEPENDENCY_UP.labels(dependency).set(1)


@pytest.fixture(scope="session")
def synthetic_pulse_exporter() -> Iterator[str]:
    """``127.0.0.1:port`` of an in-process exporter of :mod:`pulse.metrics` under synthetic activity."""
    from prometheus_client import start_http_server

    import pulse.metrics  # noqa: F401  (registers every Pulse metric in the default registry)

    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    activity = SyntheticPulseActivity()
    activity.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        activity.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def temporal_sdk_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:port`` of a real Temporal worker's SDK metrics, under a few workflows per second."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("temporal-sdk") / "temporal_sdk_load.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ops.temporal_sdk_load", "--metrics-port", str(port)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert proc.stdout is not None
        ready = threading.Event()

        def wait_ready() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == "READY":
                    ready.set()

        threading.Thread(target=wait_ready, daemon=True).start()
        deadline = time.monotonic() + 60
        while not ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Temporal SDK load did not start:\n{log_path.read_text()[-4000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def pulse_metrics_targets(synthetic_pulse_exporter: str, temporal_sdk_exporter: str) -> dict[str, list[str]]:
    """Prometheus job name → scrape targets (``host:port``) of a Pulse under a little load.

    Placeholder: every Pulse job points at the one synthetic exporter (so ``up`` exists per job) and the
    SDK job at the real Temporal worker. Replace it with a fixture that starts the API, dispatcher and
    worker and returns their ``/metrics`` addresses under the same job names.
    """
    return {
        JOB_API: [synthetic_pulse_exporter],
        JOB_DISPATCHER: [synthetic_pulse_exporter],
        JOB_WORKER: [synthetic_pulse_exporter],
        JOB_TEMPORAL_SDK: [temporal_sdk_exporter],
    }
