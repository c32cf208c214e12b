"""The OpenSea Stream API client (``pulse stream opensea``, and ``pulse up`` when PULSE_OPENSEA_API_KEY and
PULSE_OPENSEA_COLLECTIONS are set): a Phoenix channels client (JSON serializer v1) over a WebSocket.

It connects to PULSE_OPENSEA_STREAM_URL with the API key as the ``token`` query parameter (as OpenSea's
stream-js does), joins ``collection:<slug>`` for each collection (``collection:*`` for all), sends Phoenix's
heartbeat every ``heartbeat_s`` and treats a heartbeat left unanswered until the next one as a dead
connection. Pushed events are mapped by :mod:`nftpulse.adapters.opensea` and appended to the event log as
other sources are (:class:`nftpulse.ingest.Ingestor`). Any loss of the connection or of a channel leads to
a reconnection after an exponential backoff with jitter (reset once a join succeeds) and to joining again.

The Stream API is best effort: it does not replay what was pushed while the client was away. What it
pushes again (the same event to a reconnected client) has the same id and is a duplicate in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, WebSocketException

from nftpulse.adapters.logs import DecodeError
from nftpulse.adapters.opensea import CHAIN_EVENT_TYPES, map_message, topic
from nftpulse.core.settings import Settings
from nftpulse.domain.events import Event
from nftpulse.ingest import Ingestor
from nftpulse.store.db import Database, is_transient

log = logging.getLogger("pulse.opensea")

#: Phoenix's default heartbeat interval (phoenix.js), which OpenSea's server expects.
HEARTBEAT_S = 30.0
#: Tries to append one event while the database is unreachable (0.5 s, doubling, between them).
STORE_ATTEMPTS = 6
#: Events received but not yet appended (the reader waits beyond), and at most appended at once.
QUEUE_MAX = 10_000
BATCH_MAX = 1000


class ConnectionLost(RuntimeError):
    """The server closed a channel, answered a join with an error, or let a heartbeat go unanswered."""


@dataclass
class StreamReport:
    connections: int = 0
    messages: int = 0
    accepted: int = 0
    duplicates: int = 0
    skipped: int = 0
    malformed: int = 0


def stream_url(base: str, token: str) -> str:
    """``base`` with the API key as ``token`` and Phoenix's v1 (JSON object) serializer asked for; a base
    that is not a ws:// or wss:// URL with a host is a ValueError naming the setting."""
    parts = urlsplit(base)
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ValueError(f"PULSE_OPENSEA_STREAM_URL has no valid port: {base!r}") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"PULSE_OPENSEA_STREAM_URL must be a ws:// or wss:// URL with a host: {base!r}")
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("token", "vsn")]
    query += [("token", token), ("vsn", "1.0.0")]
    return urlunsplit(parts._replace(query=urlencode(query)))


class OpenSeaStream:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        collections: Sequence[str],
        *,
        heartbeat_s: float = HEARTBEAT_S,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        if not settings.opensea_api_key:
            raise ValueError("PULSE_OPENSEA_API_KEY is not set: OpenSea's Stream API needs a key")
        if not collections:
            raise ValueError("no collection to follow: give a slug, or * for every collection")
        self.settings = settings
        self.collections = list(dict.fromkeys(collections))
        self._key = settings.opensea_api_key.get_secret_value()
        self.url = stream_url(settings.opensea_stream_url, self._key)
        self.heartbeat_s = heartbeat_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.ingestor = Ingestor(settings, db)
        self.report = StreamReport()
        self._refs = itertools.count(1)
        self._failures = 0
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    def _delay(self) -> float:
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(self._failures, 30))
        return random.uniform(cap / 2, cap)

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until ``stop`` is set, reconnecting whenever the connection is lost. Events received are
        appended by a writer task in batches of what has arrived meanwhile (one transaction each), so a
        burst costs one append rather than one per message; they are all appended before this returns."""
        self._queue = asyncio.Queue(maxsize=QUEUE_MAX)
        self._writer = asyncio.create_task(self._write())
        try:
            await self._connect_loop(stop)
        finally:
            if not self._writer.done():  # a dead writer would never make room for the end marker
                await self._queue.put(None)
            writer, self._writer = self._writer, None
            await writer

    async def _connect_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with connect(
                    self.url,
                    open_timeout=15,
                    # Phoenix's heartbeat is the keepalive this protocol has; WebSocket pings would be a
                    # second one the server does not need.
                    ping_interval=None,
                    max_size=2**22,
                ) as ws:
                    self.report.connections += 1
                    await self._session(ws, stop)
            except (OSError, TimeoutError, WebSocketException, InvalidHandshake, ConnectionLost) as exc:
                if stop.is_set():
                    break
                self._failures += 1
                delay = self._delay()
                # The URL carries the API key, and some errors quote the URL: the key never reaches the logs.
                error = f"{type(exc).__name__}: {exc}".replace(self._key, "<PULSE_OPENSEA_API_KEY>")
                log.warning("opensea.disconnected", extra={"error": error, "retry_in_s": round(delay, 3)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _send(self, ws: ClientConnection, topic_: str, event: str, ref: str) -> None:
        message: dict[str, object] = {"topic": topic_, "event": event, "payload": {}, "ref": ref}
        if event == "phx_join":
            message["join_ref"] = ref
        await ws.send(orjson.dumps(message).decode())

    async def _session(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        joins: dict[str, str] = {}
        for slug in self.collections:
            join_ref = str(next(self._refs))
            joins[join_ref] = topic(slug)
            await self._send(ws, topic(slug), "phx_join", join_ref)
        joined: set[str] = set()
        heartbeat: str | None = None
        next_beat = loop.time() + self.heartbeat_s
        while not stop.is_set():
            if self._writer is not None and self._writer.done():
                self._writer.result()  # the database stayed away: the stream stops with its error
                raise RuntimeError("the OpenSea writer stopped")
            now = loop.time()
            if now >= next_beat:
                if heartbeat is not None:
                    raise ConnectionLost(f"no answer to the heartbeat within {self.heartbeat_s} s")
                heartbeat = str(next(self._refs))
                await self._send(ws, "phoenix", "heartbeat", heartbeat)
                next_beat = now + self.heartbeat_s
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=min(1.0, max(0.0, next_beat - now)))
            except TimeoutError:
                continue
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.report.malformed += 1
                log.warning("opensea.malformed", extra={"reason": "not JSON"})
                continue
            if not isinstance(message, dict):
                self.report.malformed += 1
                continue
            event, ref = message.get("event"), message.get("ref")
            if event == "phx_reply":
                status = (message.get("payload") or {}).get("status")
                if ref is not None and ref == heartbeat:
                    heartbeat = None
                elif isinstance(ref, str) and ref in joins:
                    if status != "ok":
                        raise ConnectionLost(f"joining {joins[ref]} was refused: {message.get('payload')}")
                    joined.add(joins[ref])
                    self._failures = 0
                    log.info("opensea.joined", extra={"topic": joins[ref]})
                continue
            if event in ("phx_error", "phx_close"):
                raise ConnectionLost(f"the server closed {message.get('topic')} ({event})")
            await self._ingest(message)

    async def _ingest(self, message: dict[str, Any]) -> None:
        self.report.messages += 1
        try:
            mapped = map_message(message)
        except DecodeError as exc:
            self.report.malformed += 1
            log.warning(
                "opensea.malformed",
                extra={"event": message.get("event"), "field": exc.field, "reason": exc.reason},
            )
            return
        if mapped.event is None or (
            not self.settings.opensea_chain_events and message.get("event") in CHAIN_EVENT_TYPES
        ):
            self.report.skipped += 1
            log.debug("opensea.skipped", extra={"event": message.get("event"), "reason": mapped.skipped})
            return
        # Bounded: when the database falls behind, reading waits (the socket buffers, then OpenSea).
        await self._queue.put(mapped.event)

    async def _write(self) -> None:
        """Append what the reader queued, in batches of whatever has arrived, until the end marker."""
        ending = False
        while not ending:
            first = await self._queue.get()
            batch: list[Event] = []
            if first is None:
                ending = True
            else:
                batch.append(first)
            while not ending and len(batch) < BATCH_MAX and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    ending = True
                else:
                    batch.append(item)
            if batch:
                await self._append(batch)

    async def _append(self, batch: list[Event]) -> None:
        for attempt in range(STORE_ATTEMPTS):
            try:
                accepted, duplicates = await asyncio.to_thread(self.ingestor.append, batch)
                break
            except Exception as exc:
                # The stream does not send a message twice: a database that is away for a moment is waited
                # for rather than the messages dropped; one away for longer stops the stream (and the
                # process, whose supervisor restarts it).
                if not is_transient(exc) or attempt + 1 == STORE_ATTEMPTS:
                    raise
                log.warning("opensea.store_retry", extra={"attempt": attempt + 1, "error": str(exc)[:200]})
                await asyncio.sleep(0.5 * 2**attempt)
        self.report.accepted += accepted
        self.report.duplicates += duplicates
