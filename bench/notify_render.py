"""Benchmark: notifications rendered per second per channel, and delivered per second to local receivers.

    .venv/bin/python bench/notify_render.py [--renders N] [--deliveries N] [--concurrency N]

Prints one JSON object. Delivery targets are local: a signed-webhook receiver (aiohttp, 127.0.0.1, in
its own thread and event loop so that client and server do not share a loop) and an in-process in-app
writer. The webhook receiver verifies every signature, as a real consumer would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from nftpulse.channels.base import OutboundMessage
from nftpulse.channels.in_app import InAppChannel
from nftpulse.channels.webhook import WebhookChannel, WebhookConfig
from nftpulse.core.delivery import generate_webhook_secret
from nftpulse.templates.renderer import CHANNELS, KINDS, LOCALES, render

SECRET = generate_webhook_secret()


def _context(i: int, kind: str) -> dict[str, Any]:
    return {
        "idempotency_key": f"ntf_bench_{i}",
        "severity": ("info", "warning", "critical")[i % 3],
        "timezone": ("Europe/Berlin", "America/New_York", "Asia/Tokyo")[i % 3],
        "entity_key": f"collection:ethereum:0x{i:040x}",
        "entity_name": f"Collection {i}",
        "entity_url": f"https://pulse.example/e/{i}",
        "rule": {"id": f"r{i}", "kind": "relative_change", "metric": "floor", "pct": 0.2, "window_s": 3600},
        "metric": "floor" if kind != "risk_change" else "risk",
        "before": "12.5" if kind != "risk_change" else "medium",
        "after": f"{9 + (i % 100) / 100}" if kind != "risk_change" else "high",
        "unit": "currency" if kind != "risk_change" else "level",
        "currency": "ETH",
        "change_pct": -0.2 - (i % 10) / 100,
        "data_at": datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        "detected_at": datetime(2025, 3, 1, 12, 0, 1, tzinfo=UTC),
        "holding": {"label": f"Token #{i}", "value": "9.5", "currency": "ETH"},
    }


def bench_render(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for channel in CHANNELS:
        render(KINDS[0], channel, "en", _context(0, KINDS[0]))  # warm the template cache
        start = time.perf_counter()
        for i in range(n):
            kind = KINDS[i % len(KINDS)]
            render(kind, channel, LOCALES[i % len(LOCALES)], _context(i, kind))
        out[channel] = round(n / (time.perf_counter() - start), 1)
    return out


class _Receiver:
    """aiohttp receiver on 127.0.0.1 in a thread; counts verified deliveries."""

    def __init__(self) -> None:
        self.verified = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None
        self._verifier = Webhook(SECRET)

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._verifier.verify(body, dict(request.headers))
        self.verified += 1
        return web.Response(status=204)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/hook", self._hook)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def __enter__(self) -> _Receiver:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _drain(send: Any, messages: list[OutboundMessage], concurrency: int) -> float:
    queue: asyncio.Queue[OutboundMessage] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)

    async def worker() -> None:
        while not queue.empty():
            await send(queue.get_nowait())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def bench_deliver(n: int, concurrency: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with _Receiver() as receiver:
        channel = WebhookChannel(WebhookConfig(allow_private=True))
        url = f"http://127.0.0.1:{receiver.port}/hook"
        msgs = []
        for i in range(n):
            kind = KINDS[i % len(KINDS)]
            r = render(kind, "webhook", "en", _context(i, kind))
            msgs.append(
                OutboundMessage(
                    idempotency_key=f"ntf_b{i}",
                    user_id="u",
                    kind=kind,
                    severity="info",
                    to=url,
                    webhook_secret=SECRET,
                    payload=r.data or {},
                )
            )
        await channel.send(msgs[0])  # connection warm-up
        elapsed = await _drain(channel.send, msgs, concurrency)
        await channel.aclose()
        results["webhook"] = {
            "per_s": round(n / elapsed, 1),
            "n": n,
            "concurrency": concurrency,
            "verified_by_receiver": receiver.verified - 1,
        }
    rows: dict[str, OutboundMessage] = {}

    async def writer(message: OutboundMessage) -> str:
        rows.setdefault(message.idempotency_key, message)
        return message.idempotency_key

    in_app = InAppChannel(writer)
    m = n * 10
    msgs = [
        OutboundMessage(
            idempotency_key=f"ntf_i{i}",
            user_id="u",
            kind="trust_change",
            severity="info",
            payload={"title": "t"},
        )
        for i in range(m)
    ]
    elapsed = await _drain(in_app.send, msgs, concurrency)
    results["in_app_callable"] = {"per_s": round(m / elapsed, 1), "n": m, "stored": len(rows)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=2000, help="renders per channel")
    parser.add_argument("--deliveries", type=int, default=2000, help="webhook deliveries (in-app: 10x)")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    rendered = bench_render(args.renders)
    delivered = asyncio.run(bench_deliver(args.deliveries, args.concurrency))
    print(
        json.dumps(
            {
                "rendered_per_s": rendered,
                "delivered_per_s": delivered,
                "renders_per_channel": args.renders,
                "python": platform.python_version(),
                "cpus": __import__("os").cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
