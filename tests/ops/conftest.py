"""Fixtures for the operations tests: tool lookup and the metrics targets Prometheus scrapes.

``pulse_metrics_targets`` maps each Prometheus job name of ``dashboards/prometheus/prometheus.yml`` to the
``host:port`` of a real Pulse process (``pulse api``, ``pulse worker``, ``pulse dispatcher`` and the
worker's Temporal SDK exporter) running against the session's Temporal dev server under a little load.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nftpulse.dashboards.kit import JOB_API, JOB_DISPATCHER, JOB_TEMPORAL_SDK, JOB_WORKER

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run scripts/install-debian-deps.sh (installs Debian's prometheus, which ships promtool)"


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker here because pyproject.toml is not this suite's file to edit."""
    config.addinivalue_line(
        "markers", "prometheus: starts Debian's prometheus binary and queries it (needs the install script)"
    )


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


# ------------------------------------------------------------------------------ a real Pulse under load


class PulseLoad:
    """Feeds a running Pulse over HTTP in a thread: a synthetic stream, duplicates, an invalid request, a
    poison event (a sale in a currency without a rate), reads that hit and miss the cache, and bursts past
    a small backlog bound so that shedding shows."""

    def __init__(self, api_url: str, key: str, webhook_url: str, tick_s: float = 0.25) -> None:
        from nftpulse.synth import Stream

        self.webhook_url = webhook_url
        self.api_url = api_url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.tick_s = tick_s
        self.stream = Stream(collections=3, tokens_per_collection=20, seed=9, source="ops-load")
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="pulse-load", daemon=True)
        self.sent = 0

    def start(self) -> None:
        import httpx

        with httpx.Client(base_url=self.api_url, headers=self.headers, timeout=30) as http:
            # A user who watches every collection's floor and volume, in the inbox and on a webhook.
            profile = {
                "channels": {"webhooks": [{"url": self.webhook_url}]},
                "preferences": {"default": ["in_app", "webhook"]},
            }
            assert http.put("/v1/users/ops", json=profile).status_code == 200
            for coll in self.stream.collections:
                rules = [
                    {
                        "id": f"{metric}-move",
                        "kind": "relative_change",
                        "metric": metric,
                        "pct": 0.02,
                        "cooldown_s": 0,
                    }
                    for metric in ("floor", "volume")
                ]
                body = {
                    "target": "collection",
                    "entity_key": f"collection:ethereum:{coll.contract}",
                    "rules": rules,
                }
                assert http.post("/v1/users/ops/subscriptions", json=body).status_code == 201
            mints = list(self.stream.mints())
            assert http.post("/v1/events", json={"events": mints}).status_code == 202
            poison = {
                **mints[0],
                "id": "ops-poison",
                "type": "sale",
                "block_number": 10**9,
                "data": {
                    "from": mints[0]["data"]["to"],
                    "to": mints[1]["data"]["to"],
                    "price": {"amount": "10", "currency": "XYZ"},
                },
            }
            assert http.post("/v1/events", json=poison).status_code == 202
            assert http.post("/v1/events", json={"events": "nope"}).status_code == 422
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)

    def _feedback(self, http: object, tick: int) -> None:
        """Rate the newest notifications, mostly useful (never 3 of 5 negative: the rules stay as set)."""
        inbox = http.get("/v1/users/ops/notifications", params={"limit": "2"})  # type: ignore[attr-defined]
        if inbox.status_code != 200:
            return
        for i, item in enumerate(inbox.json()["items"]):
            verdict = "not_useful" if (tick + i) % 5 == 0 else "useful"
            http.post(  # type: ignore[attr-defined]
                f"/v1/users/ops/notifications/{item['id']}/feedback", json={"verdict": verdict}
            )

    def _loop(self) -> None:
        import httpx

        with httpx.Client(base_url=self.api_url, headers=self.headers, timeout=30) as http:
            tick = 0
            while not self.stop_event.wait(self.tick_s):
                tick += 1
                size = 400 if tick % 8 == 0 else 40  # every few ticks a burst past the backlog bound
                batch = self.stream.take(size)
                http.post("/v1/events", json={"events": batch})
                http.post("/v1/events", json={"events": batch[:3]})  # duplicates
                contract = batch[0]["contract"]
                for _ in range(2):  # the second read of an unchanged collection hits the cache
                    http.get(f"/v1/collections/ethereum/{contract}")
                if tick % 4 == 0:
                    http.post("/v1/users/ops/notifications/read-all")
                    self._feedback(http, tick)
                self.sent += len(batch)


@pytest.fixture(scope="session")
def running_pulse(temporal_env: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """``pulse api``, ``pulse worker`` and ``pulse dispatcher`` as real processes on SQLite, under load."""
    from tests.procs import PulseProcesses

    workdir = tmp_path_factory.mktemp("ops-pulse")
    target = temporal_env.client.service_client.config.target_host  # type: ignore[attr-defined]
    env = {
        "PULSE_BACKLOG_SHED_THRESHOLD": "150",
        "PULSE_ALLOW_PRIVATE_WEBHOOKS": "true",
        # The poison sale (a currency no rate will ever price) fails at once instead of waiting for one,
        # so that the failure panels have data.
        "PULSE_WAIT_MAX_SECONDS": "0",
        "PULSE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "PULSE_CACHE_PREFIX": f"pulse-ops-{workdir.name}:",
    }
    procs = PulseProcesses(f"sqlite:///{workdir / 'pulse.db'}", target, workdir / "logs", extra_env=env)
    receiver = _webhook_receiver()
    for part in ("api", "worker", "dispatcher"):
        procs.start(part)
    load = None
    try:
        procs.wait_ready()
        load = PulseLoad(
            procs.api_url, procs.admin_key, f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        )
        load.start()
        yield procs
    finally:
        if load is not None:
            load.stop()
        procs.stop_all()
        receiver.shutdown()
        receiver.server_close()


def _webhook_receiver() -> ThreadingHTTPServer:
    """A local endpoint that accepts every webhook delivery (204)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return server


@pytest.fixture(scope="session")
def pulse_metrics_targets(running_pulse: object) -> dict[str, list[str]]:
    """Prometheus job name → the ``host:port`` of each real Pulse process's ``/metrics``."""
    ports = running_pulse.ports  # type: ignore[attr-defined]
    return {
        JOB_API: [f"127.0.0.1:{ports['api_metrics']}"],
        JOB_DISPATCHER: [f"127.0.0.1:{ports['dispatcher_metrics']}"],
        JOB_WORKER: [f"127.0.0.1:{ports['worker_metrics']}"],
        JOB_TEMPORAL_SDK: [f"127.0.0.1:{ports['sdk_metrics']}"],
    }
