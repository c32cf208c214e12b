"""The first five minutes, in a real browser: ``pulse up``, then ``pulse demo``, then Chromium on the Temporal
Web UI (workflows listed, the fraud findings' own among them), on ``/docs`` (Swagger UI rendered from local
assets only) and on ``/redoc``, and the demo user's inbox read with the key the demo printed.

Chromium is Debian's (scripts/install-debian-deps.sh), driven by Playwright; Playwright's own browser
downloads are never used.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.ops.conftest import REPO_ROOT
from tests.ports import free_port

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
DEMO_SECONDS = 15


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@dataclass
class Embedded:
    """A ``pulse up`` child process and where it listens."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    data_dir: Path
    api_url: str
    ui_url: str
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def pulse_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    """``pulse up`` with its own data dir and free ports: dev server with Web UI, API, worker, dispatcher."""
    work = tmp_path_factory.mktemp("pulse-up")
    ports = {
        name: free_port()
        for name in (
            "API",
            "API_METRICS",
            "TEMPORAL",
            "TEMPORAL_UI",
            "WORKER_METRICS",
            "DISPATCHER_METRICS",
            "TEMPORAL_SDK_METRICS",
        )
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update({f"PULSE_{name}_PORT": str(port) for name, port in ports.items()})
    env.update(
        PULSE_DATA_DIR=str(work / "data"),
        PULSE_LOG_LEVEL="WARNING",
        # The unpriced sale below is to fail at once, not wait for a rate.
        PULSE_WAIT_MAX_SECONDS="0",
        PULSE_PUBLIC_BASE_URL=f"http://127.0.0.1:{ports['API']}",
    )
    log = work / "up.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nftpulse.cli", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    up = Embedded(
        proc,
        env,
        work / "data",
        f"http://127.0.0.1:{ports['API']}",
        f"http://127.0.0.1:{ports['TEMPORAL_UI']}",
        log,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"pulse up exited with {proc.returncode}: {up.tail()}")
            ready = False
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{up.api_url}/readyz", timeout=2).status_code == 200
            # The admin key is saved once everything runs: the demo reads it from there.
            if ready and (up.data_dir / "admin.key").exists():
                break
            assert time.monotonic() < deadline, f"pulse up not ready within 120 s: {up.tail()}"
            time.sleep(0.5)
        yield up
    finally:
        # SIGTERM: pulse up stops its parts and the dev server it started (in a session of its own).
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def demo_user_key(pulse_up: Embedded) -> str:
    """Runs ``pulse demo`` for a few seconds and returns the demo user's key it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "nftpulse.cli", "demo", "--duration", str(DEMO_SECONDS)],
        env=pulse_up.env,
        capture_output=True,
        text=True,
        timeout=DEMO_SECONDS + 120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr + pulse_up.tail()
    match = re.search(
        r"Authorization: Bearer (pk_[A-Za-z0-9_-]+)' \S+/v1/users/demo/notifications", result.stdout
    )
    assert match, result.stdout + result.stderr
    admin = (pulse_up.data_dir / "admin.key").read_text().strip()
    assert match.group(1) != admin, "the demo printed the admin key, not a key of the demo user's"
    return match.group(1)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    path = chromium_path()
    if path is None:
        pytest.skip("chromium not found: run scripts/install-debian-deps.sh (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def test_pulse_up_points_at_the_demo(pulse_up: Embedded) -> None:
    printed = " ".join(pulse_up.log.read_text(errors="replace").split())
    assert "Admin API key" in printed
    assert "pulse demo streams a small synthetic market" in printed, printed[-2000:]


def test_demo_fills_the_inbox(pulse_up: Embedded, demo_user_key: str) -> None:
    headers = {"Authorization": f"Bearer {demo_user_key}"}
    deadline = time.monotonic() + 30
    while True:
        resp = httpx.get(f"{pulse_up.api_url}/v1/users/demo/notifications", headers=headers, timeout=10)
        assert resp.status_code == 200, resp.text
        if resp.json()["items"]:
            break
        assert time.monotonic() < deadline, "the demo user's inbox stayed empty"
        time.sleep(1)
    # The key is the user's alone: another user's inbox is refused.
    other = httpx.get(f"{pulse_up.api_url}/v1/users/someone-else/notifications", headers=headers, timeout=10)
    assert other.status_code == 403


def test_web_ui_lists_the_demo_workflows(pulse_up: Embedded, demo_user_key: str, browser: object) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(f"{pulse_up.ui_url}/namespaces/default/workflows", wait_until="domcontentloaded")
        # Routine events run in shard workflows; each fraud finding is significant and gets its own.
        page.get_by_text(re.compile(r"shard/\d+")).first.wait_for(timeout=30_000)
        page.get_by_text(re.compile(r"event/demo/\S+-fraud")).first.wait_for(timeout=30_000)
    finally:
        page.close()


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_render_from_local_assets(pulse_up: Embedded, browser: object, path: str) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        page.goto(f"{pulse_up.api_url}{path}", wait_until="domcontentloaded")
        if path == "/docs":
            # Swagger UI rendered the OpenAPI document: the ingest operation is listed.
            page.locator(".opblock-summary-path", has_text="/v1/events").first.wait_for(timeout=30_000)
        else:
            page.get_by_text("/v1/events").first.wait_for(timeout=30_000)
        # (ReDoc also makes a blob: URL of the document for its download button: local too.)
        remote = [
            url
            for url in requested
            if url.startswith(("http:", "https:")) and not url.startswith(pulse_up.api_url)
        ]
        assert remote == [], f"{path} fetched from other hosts: {remote}"
    finally:
        page.close()


def test_failures_list_links_open_the_workflow_in_the_web_ui(pulse_up: Embedded, browser: object) -> None:
    """A failed event's ``web_ui`` link (its workflow id, slashes and all, as one path segment) opens its
    workflow's page in the Web UI."""
    admin = {"Authorization": f"Bearer {(pulse_up.data_dir / 'admin.key').read_text().strip()}"}
    contract = "0x" + "9a" * 20
    unpriced = {
        "id": "unpriced-sale",
        "source": "browser",
        "type": "sale",
        "occurred_at": "2026-11-01T12:00:00Z",
        "chain": "ethereum",
        "contract": contract,
        "token_id": "1",
        # No USDC/ETH rate is known: the sale cannot be valued and fails in a workflow of its own.
        "data": {
            "from": "0x" + "a" * 40,
            "to": "0x" + "b" * 40,
            "price": {"amount": "5", "currency": "USDC"},
        },
    }
    resp = httpx.post(f"{pulse_up.api_url}/v1/events", json=unpriced, headers=admin, timeout=10)
    assert resp.status_code == 202, resp.text
    deadline = time.monotonic() + 60
    while True:
        listed = httpx.get(f"{pulse_up.api_url}/v1/ops/failures", headers=admin, timeout=10).json()
        failed = [f for f in listed["items"] if f["id"] == "unpriced-sale"]
        if failed:
            break
        assert time.monotonic() < deadline, f"the unpriced sale never failed: {listed}"
        time.sleep(0.5)
    link = failed[0]["web_ui"]
    assert link == f"{pulse_up.ui_url}/namespaces/default/workflows/event%2Fbrowser%2Funpriced-sale"
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(link, wait_until="domcontentloaded")
        # The workflow's own page: its id and its failed status, not the UI's "not found".
        page.get_by_text("event/browser/unpriced-sale").first.wait_for(timeout=30_000)
        page.get_by_text(re.compile(r"^\s*Failed\s*$")).first.wait_for(timeout=30_000)
        assert "not found" not in page.content().lower()
    finally:
        page.close()
