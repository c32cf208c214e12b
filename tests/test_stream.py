"""The live change feed on real parts (a served API, the Temporal pipeline, SQLite and Postgres): server-sent
events and the WebSocket filtered by key, prefix and metric, stream tokens, resuming from a cursor, a gap
older than the retention; and in Chromium, a page whose EventSource sees an NFT's trust change after an
event is posted."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
import websockets
from temporalio.client import Client

from nftpulse.store import changes as changelog
from nftpulse.store import keys
from tests.conftest import RunningPulse, run_pulse
from tests.ops.test_browser import CHROMIUM_ARGS, chromium_path
from tests.ports import free_port

CONTRACT = "0x" + "5a" * 20
NFT = f"nft:ethereum:{CONTRACT}"
A = "0x" + "a1" * 20
B = "0x" + "b2" * 20
ZERO = "0x" + "0" * 40
SOURCE = "feed"


@dataclass
class Served:
    pulse: RunningPulse
    url: str

    def headers(self, which: str = "read") -> dict[str, str]:
        return self.pulse.keys.auth(which)


@pytest_asyncio.fixture
async def served(database_url: str, temporal_client: Client) -> AsyncIterator[Served]:
    """Pulse with its API served on a local port (streams need a real connection)."""
    async with run_pulse(database_url, temporal_client) as pulse:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(pulse.app, host="127.0.0.1", port=port, log_level="warning"))
        task = asyncio.create_task(server.serve())
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                await asyncio.sleep(0.02)
        try:
            yield Served(pulse, f"http://127.0.0.1:{port}")
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, timeout=10)


_n = iter(range(10_000))


def _ev(kind: str, token: str, data: dict[str, Any]) -> dict[str, Any]:
    n = next(_n)
    return {
        "id": f"{kind}-{token}-{n}",
        "source": SOURCE,
        "type": kind,
        "occurred_at": (datetime(2026, 11, 3, 8, tzinfo=UTC) + timedelta(minutes=n)).isoformat(),
        "chain": "ethereum",
        "contract": CONTRACT,
        "token_id": token,
        "data": data,
    }


async def _post(s: Served, *events: dict[str, Any]) -> None:
    resp = await s.pulse.post(list(events))
    assert resp.status_code == 202, resp.text
    final = await s.pulse.wait_final([(SOURCE, e["id"]) for e in events])
    assert set(final.values()) == {"processed"}


class Sse:
    """Reads server-sent events from a streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, limit_s: float = 15.0) -> dict[str, Any]:
        event: dict[str, Any] = {}
        async with asyncio.timeout(limit_s):
            async for line in self._lines:
                if not line:
                    if "event" in event:
                        return event
                    event = {}
                    continue
                name, _, value = line.partition(": ")
                if name in ("id", "event"):
                    event[name] = value
                elif name == "data":
                    event["data"] = json.loads(value)
        raise AssertionError("stream ended")


@contextlib.asynccontextmanager
async def _sse(
    s: Served, params: dict[str, Any], headers: dict[str, str] | None = None
) -> AsyncIterator[Sse]:
    async with (
        httpx.AsyncClient(base_url=s.url, timeout=30) as http,
        http.stream("GET", "/v1/stream", params=params, headers=headers or {}) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        yield Sse(resp)


async def test_feed_filters_resumes_and_reports_gaps(served: Served) -> None:
    s = served
    await _post(s, _ev("mint", "1", {"from": ZERO, "to": A}), _ev("mint", "2", {"from": ZERO, "to": A}))
    params = {"key": f"{NFT}:1", "metric": "owner", "max_s": "20"}
    async with _sse(s, params, s.headers()) as sse:
        await asyncio.sleep(0.3)  # subscribed before the event is posted
        sale = _ev("sale", "1", {"from": A, "to": B, "price": {"amount": "1.5", "currency": "ETH"}})
        await _post(s, sale, _ev("transfer", "2", {"from": A, "to": B}))
        got = await sse.next()
    assert got["event"] == "change" and got["id"] == got["data"]["cursor"]
    change = got["data"]
    # Only the key asked for (token 2's transfer is not in this feed), only the metric asked for.
    assert change["entity_key"] == f"{NFT}:1"
    assert change["changes"] == {"owner": {"before": A, "after": B}}
    assert f"{SOURCE}/{sale['id']}" in change["causes"] and change["version"] >= 2
    first = int(change["cursor"])

    # Resuming from a cursor replays what came after it, from the log (Last-Event-ID, as EventSource does).
    await _post(s, _ev("transfer", "1", {"from": B, "to": A}))
    prefix = {"prefix": f"{NFT}:", "max_s": "5"}
    async with _sse(s, prefix, {**s.headers(), "Last-Event-ID": str(first)}) as sse:
        replayed = await sse.next()
    assert int(replayed["id"]) > first and replayed["data"]["entity_key"].startswith(f"{NFT}:")

    # A browser's way in: a stream token as a query parameter; an ingest-only key gets none.
    resp = await s.pulse.http.post("/v1/stream/tokens", json={"ttl_s": 60}, headers=s.headers())
    assert resp.status_code == 201, resp.text
    token = resp.json()["token"]
    assert resp.json()["scopes"] == ["read"]
    denied = await s.pulse.http.post("/v1/stream/tokens", headers=s.headers("ingest"))
    assert denied.status_code == 403
    async with httpx.AsyncClient(base_url=s.url) as http:
        bad = await http.get("/v1/stream", params={"token": "st_nope"})
        assert bad.status_code == 401
        wrong = await http.get("/v1/stream", params={"token": token, "prefix": "contract:x"})
        assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "prefix.0"
        no_read = await http.get("/v1/stream", headers=s.headers("ingest"))
        assert no_read.status_code == 403

    # The WebSocket: same filters, same messages.
    ws_url = s.url.replace("http://", "ws://") + f"/v1/ws?token={token}&key={NFT}:2"
    async with websockets.connect(ws_url) as ws:
        await asyncio.sleep(0.3)
        await _post(s, _ev("transfer", "2", {"from": B, "to": A}))
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=15))
    assert message["type"] == "change" and message["entity_key"] == f"{NFT}:2"
    assert message["changes"]["owner"] == {"before": B, "after": A}
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        async with websockets.connect(s.url.replace("http://", "ws://") + "/v1/ws?token=st_nope") as ws:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

    # Past the retention: pruned, and a cursor from before says so instead of skipping silently.
    with s.pulse.db.write() as session:
        assert changelog.prune(session, datetime.now(UTC) + timedelta(days=2), timedelta(hours=24)) > 0
    async with _sse(s, {"cursor": "0", "max_s": "3"}, s.headers()) as sse:
        gap = await sse.next()
    assert gap["event"] == "gap" and int(gap["data"]["cursor"]) >= first


async def test_inbox_stream_takes_a_stream_token(served: Served) -> None:
    s = served
    user_key = keys.create(s.pulse.db, "ada", ["user:ada"])
    resp = await s.pulse.http.post("/v1/stream/tokens", headers={"Authorization": f"Bearer {user_key}"})
    assert resp.status_code == 201 and resp.json()["scopes"] == ["user:ada"]
    token = resp.json()["token"]
    async with httpx.AsyncClient(base_url=s.url) as http:
        mine = await http.get("/v1/users/ada/notifications/stream", params={"token": token, "max_s": "0.3"})
        assert mine.status_code == 200
        theirs = await http.get("/v1/users/bob/notifications/stream", params={"token": token, "max_s": "0.3"})
        assert theirs.status_code == 403
        feed = await http.get("/v1/stream", params={"token": token, "max_s": "0.3"})
        assert feed.status_code == 403  # a user's token reads its inbox, not the feed


@pytest.mark.skipif(chromium_path() is None, reason="chromium not installed")
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_browser_eventsource_sees_trust_change(served: Served) -> None:
    from playwright.async_api import async_playwright

    s = served
    await _post(s, _ev("mint", "7", {"from": ZERO, "to": A}))
    resp = await s.pulse.http.post("/v1/stream/tokens", headers=s.headers())
    token = resp.json()["token"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(f"{s.url}/healthz")
            await page.evaluate(
                """([token, key]) => new Promise((resolve, reject) => {
                    window.changes = [];
                    const query = `token=${token}&key=${encodeURIComponent(key)}`;
                    const source = new EventSource(`/v1/stream?${query}`);
                    source.addEventListener("change", (e) => window.changes.push(JSON.parse(e.data)));
                    source.onopen = () => resolve(true);
                    setTimeout(() => reject(new Error("EventSource did not open")), 10000);
                })""",
                [token, f"{NFT}:7"],
            )
            finding = {
                "finding_id": "B1",
                "kind": "stolen_asset",
                "severity": "critical",
                "wallets": [A],
                "detector": "browser-test",
            }
            await _post(s, _ev("fraud_finding", "7", finding))
            await page.wait_for_function("window.changes.some(c => c.changes.trust)", timeout=15000)
            seen = await page.evaluate("window.changes.find(c => c.changes.trust)")
        finally:
            await browser.close()
    assert seen["entity_key"] == f"{NFT}:7"
    assert seen["changes"]["trust"]["after"] < seen["changes"]["trust"]["before"]
