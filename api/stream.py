"""The live change feed: server-sent events (``GET /v1/stream``) and a WebSocket (``/v1/ws``) of what
recalculation changed, filtered by entity keys, key prefixes and metrics, resumable from a cursor; the
short-lived stream tokens a browser passes as a query parameter (``POST /v1/stream/tokens``); and the
one-reader-per-process fan-out (:class:`Tail`) the per-user inbox stream (``api/inbox.py``) shares.

Pushed, not polled per client: one task per process tails the change log (``store.changes``, written in
recalculation's transaction) and hands each new row to the queues of the clients whose filter it matches.
Tailing works on SQLite and Postgres alike; a client costs a queue, not a query. A client resuming from a
cursor (``Last-Event-ID``) first reads what it missed from the log; a cursor older than the retention
(``PULSE_CHANGE_LOG_RETENTION_S``) gets an ``event: gap`` naming the oldest cursor still kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from nftpulse.api.common import IsoTime, parse_row_id
from nftpulse.api.deps import PrincipalDep, Services, ServicesDep, get_services
from nftpulse.api.errors import InvalidInput
from nftpulse.store import changes as changelog
from nftpulse.store.changes import LoggedChange
from nftpulse.store.keys import Principal

log = logging.getLogger("pulse.api.stream")
router = APIRouter(prefix="/v1", tags=["live feed"])

#: Kinds of entity key a filter may name or prefix.
ENTITY_KINDS = ("nft", "collection", "creator", "wallet")
_KINDS = ", ".join(ENTITY_KINDS)
MAX_FILTERS = 100
#: Rows one client may fall behind before it is cut off (it resumes from its cursor).
QUEUE_SIZE = 5000
KEEP_ALIVE_S = 15.0
PRUNE_EVERY_S = 60.0

T = TypeVar("T")


# -- one reader per process --------------------------------------------------------------------------------


@dataclass(eq=False)
class Subscriber(Generic[T]):
    """One client of a :class:`Tail`: what it wants and its queue."""

    wants: Callable[[T], bool]
    queue: asyncio.Queue[T] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    #: Set when the client fell more than ``QUEUE_SIZE`` rows behind: it ends and resumes from its cursor.
    overflowed: bool = False


class Tail(Generic[T]):
    """Tails an append-only table from one task and fans its new rows out to subscribers.

    ``fetch(after, limit)`` returns rows past an id, oldest first, with their ids (``ident``). Ids are
    handed out before commit, so on Postgres a lower id may become visible after a higher one: the reader
    keeps a floor below which every id was seen, and waits ``settle_s`` for a missing id (a transaction
    still running) before passing over it (a rolled-back one). It reads only while someone listens.
    """

    def __init__(
        self,
        fetch: Callable[[int, int], list[T]],
        head: Callable[[], int],
        ident: Callable[[T], int],
        *,
        poll_s: float = 0.1,
        settle_s: float = 5.0,
        limit: int = 1000,
    ) -> None:
        self._fetch, self._head, self._ident = fetch, head, ident
        self._poll, self._settle, self._limit = poll_s, settle_s, limit
        self._subscribers: set[Subscriber[T]] = set()
        self._task: asyncio.Task[None] | None = None
        # Held by the reader around each read and fan-out, and by a subscription while it joins: a
        # client joins between two reads, so it gets every row after its floor exactly once. (Without
        # it, a thousand clients connecting at once each saw "no reader yet" and started one of their own.)
        self._lock = asyncio.Lock()
        self._listening = asyncio.Event()
        self._floor = 0
        self._seen: set[int] = set()
        self._missing: dict[int, float] = {}

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    async def subscribe(self, wants: Callable[[T], bool]) -> Subscriber[T]:
        """Register a client; rows committed from now on reach its queue."""
        sub: Subscriber[T] = Subscriber(wants)
        async with self._lock:
            if not self._subscribers:
                # Nobody listened until now: what is in the table is history, read by the client's own
                # catch-up; the reader starts from here.
                self._floor = await run_in_threadpool(self._head)
                self._seen.clear()
                self._missing.clear()
            self._subscribers.add(sub)
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run())
            self._listening.set()
        return sub

    def unsubscribe(self, sub: Subscriber[T]) -> None:
        self._subscribers.discard(sub)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        """The one reader: reads while anyone listens, sleeps (without reading) while nobody does."""
        while True:
            if not self._subscribers:
                self._listening.clear()
                await self._listening.wait()
            async with self._lock:
                try:
                    rows = await run_in_threadpool(self._fetch, self._floor, self._limit)
                except Exception:  # the database is briefly away: keep the clients, try again
                    log.exception("stream.tail_failed")
                    rows = None
                if rows:
                    for row in rows:
                        ident = self._ident(row)
                        if ident not in self._seen:
                            self._seen.add(ident)
                            self._fan_out(row)
                    self._advance()
            if rows is None:
                await asyncio.sleep(1.0)
            elif len(rows) < self._limit:
                await asyncio.sleep(self._poll)

    def _fan_out(self, row: T) -> None:
        for sub in list(self._subscribers):
            if sub.overflowed or not sub.wants(row):
                continue
            try:
                sub.queue.put_nowait(row)
            except asyncio.QueueFull:
                sub.overflowed = True

    def _advance(self) -> None:
        """Move the floor over every id seen and every id missing for longer than ``settle_s``."""
        seen, missing = self._seen, self._missing
        if not seen:
            return
        now = time.monotonic()
        top = max(seen)
        floor = self._floor
        while floor < top:
            nxt = floor + 1
            if nxt not in seen:
                since = missing.setdefault(nxt, now)
                if now - since < self._settle:
                    break
                missing.pop(nxt, None)
            floor = nxt
        self._floor = floor
        seen.difference_update([i for i in seen if i <= floor])
        for i in [i for i in missing if i <= floor]:
            missing.pop(i, None)


@dataclass
class Feeds:
    """The tails of one API process: the change log, and whatever else registers one (the inbox)."""

    changes: Tail[LoggedChange]
    others: dict[str, Tail[Any]] = field(default_factory=dict)
    _encoded: OrderedDict[tuple[int, frozenset[str], bool], bytes] = field(default_factory=OrderedDict)

    def encoded(self, row: LoggedChange, metrics: frozenset[str], *, sse: bool) -> bytes:
        """A change as the wire carries it (an SSE event, or a WebSocket message's JSON), encoded once
        for all the clients with the same metric filter: a change reaches thousands of clients at once."""
        key = (row.cursor, metrics, sse)
        hit = self._encoded.get(key)
        if hit is None:
            message = row.message(metrics)
            if sse:
                hit = f"id: {row.cursor}\nevent: change\ndata: {json.dumps(message)}\n\n".encode()
            else:
                hit = json.dumps({"type": "change", **message}).encode()
            self._encoded[key] = hit
            if len(self._encoded) > 4096:
                self._encoded.popitem(last=False)
        return hit

    async def close(self) -> None:
        for tail in [self.changes, *self.others.values()]:
            await tail.close()


def feeds_of(app: FastAPI, services: Services) -> Feeds:
    """The process's feeds, made on first use."""
    feeds: Feeds | None = getattr(app.state, "feeds", None)
    if feeds is None:
        db = services.db

        def fetch(after: int, limit: int) -> list[LoggedChange]:
            with db.read() as s:
                return changelog.after(s, after, limit=limit)

        def head() -> int:
            with db.read() as s:
                return changelog.head(s)

        feeds = app.state.feeds = Feeds(Tail(fetch, head, lambda row: row.cursor))
    return feeds


async def prune_forever(services: Services) -> None:
    """The change log's pruning job: every minute, drop what is older than the retention (and expired
    stream tokens). Every API process runs it; the deletes are idempotent."""
    retention = timedelta(seconds=services.settings.change_log_retention_s)

    def prune() -> int:
        with services.db.write() as s:
            return changelog.prune(s, datetime.now(UTC), retention)

    while True:
        try:
            removed = await run_in_threadpool(prune)
            if removed:
                log.info("stream.change_log_pruned", extra={"rows": removed})
        except Exception:
            log.exception("stream.prune_failed")
        await asyncio.sleep(PRUNE_EVERY_S)


# -- who may stream ----------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False)


def stream_principal(services: Services, bearer: str | None, token: str | None) -> Principal:
    """Who is streaming: an API key (``Authorization: Bearer``) or a stream token (``?token=``, for
    browsers, whose EventSource and WebSocket cannot send the header). The one check every stream makes."""
    if token:
        with services.db.read() as s:
            grant = changelog.token_grant(s, token, datetime.now(UTC))
        if grant is None:
            raise HTTPException(
                401, "unknown or expired stream token", headers={"WWW-Authenticate": "Bearer"}
            )
        key_id, scopes = grant
        return Principal(key_id, "stream-token", scopes)
    if not bearer:
        raise HTTPException(
            401,
            "missing credentials: send Authorization: Bearer <key>, or ?token=<stream token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = services.keys.authenticate(bearer)
    if principal is None:
        raise HTTPException(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return principal


def get_stream_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[str | None, Query(max_length=200, description="a stream token")] = None,
) -> Principal:
    bearer = credentials.credentials if credentials and credentials.scheme.lower() == "bearer" else None
    return stream_principal(services, bearer, token)


StreamPrincipalDep = Annotated[Principal, Depends(get_stream_principal)]


# -- stream tokens -----------------------------------------------------------------------------------------


class TokenIn(BaseModel):
    ttl_s: float = Field(default=300.0, ge=10, le=3600, description="lifetime in seconds")


class TokenOut(BaseModel):
    token: str
    scopes: list[str]
    expires_at: IsoTime


def readable_scopes(principal: Principal) -> list[str]:
    """What a stream token minted by this key may read: the feed (``read``, which admin keys have too)
    and the inboxes of the key's users."""
    scopes = {"read"} if principal.allows("read") else set()
    return sorted(scopes | {s for s in principal.scopes if s.startswith("user:")})


@router.post("/stream/tokens", status_code=201, responses={403: {"description": "the key may read nothing"}})
async def create_stream_token(
    principal: PrincipalDep, services: ServicesDep, body: TokenIn | None = None
) -> TokenOut:
    """A short-lived token for ``/v1/stream``, ``/v1/ws`` and the inbox stream, to pass as ``?token=``:
    scoped to what this key may read, never more (an admin key's token only reads)."""
    scopes = readable_scopes(principal)
    if not scopes:
        raise HTTPException(403, "this key may read neither the feed nor an inbox")
    ttl = timedelta(seconds=(body or TokenIn()).ttl_s)
    now = datetime.now(UTC)

    def create() -> str:
        with services.db.write() as s:
            return changelog.create_token(s, principal.key_id, scopes, now, ttl)

    token = await run_in_threadpool(create)
    return TokenOut(token=token, scopes=scopes, expires_at=now + ttl)


# -- the feed ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedFilter:
    keys: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    metrics: frozenset[str] = frozenset()

    def wants(self, row: LoggedChange) -> bool:
        if (self.keys or self.prefixes) and not (
            row.entity_key in self.keys or row.entity_key.startswith(self.prefixes)
        ):
            return False
        return not self.metrics or any(m in self.metrics for m in row.changes)


def feed_filter(keys: Sequence[str], prefixes: Sequence[str], metrics: Sequence[str]) -> FeedFilter:
    """The client's filter, or 422 naming the bad parameter."""
    errors = []
    for name, values in (("key", keys), ("prefix", prefixes), ("metric", metrics)):
        if len(values) > MAX_FILTERS:
            errors.append({"field": name, "reason": f"at most {MAX_FILTERS} values"})
        for i, value in enumerate(values):
            if not value or len(value) > 200:
                errors.append({"field": f"{name}.{i}", "reason": "1 to 200 characters"})
            elif name != "metric" and value.split(":", 1)[0] not in ENTITY_KINDS:
                errors.append(
                    {
                        "field": f"{name}.{i}",
                        "reason": f"must start with one of {', '.join(ENTITY_KINDS)} and ':'",
                    }
                )
    if errors:
        raise InvalidInput(errors)
    return FeedFilter(frozenset(keys), tuple(prefixes), frozenset(metrics))


def parse_cursor(raw: str | None, field_name: str) -> int | None:
    if raw is None or raw == "":
        return None
    return parse_row_id(raw, field_name, "a cursor from an earlier message")


def _require_read(principal: Principal) -> None:
    if not principal.allows("read"):
        raise HTTPException(403, "this key lacks the 'read' scope")


async def feed_messages(
    services: Services, feeds: Feeds, flt: FeedFilter, cursor: int | None, deadline: float | None = None
) -> AsyncGenerator[tuple[str, dict[str, Any] | LoggedChange], None]:
    """(event, message) pairs for one client: a gap notice if the cursor is older than the retention,
    what it missed since its cursor (``change`` with the logged row), then the live changes. Ends at
    ``deadline`` (the loop's clock) or when the client falls too far behind."""
    loop = asyncio.get_running_loop()
    sub = await feeds.changes.subscribe(flt.wants)
    try:
        sent: set[int] = set()
        if cursor is not None:

            def pruned() -> int:
                with services.db.read() as s:
                    return changelog.pruned_through(s)

            through = await run_in_threadpool(pruned)
            if cursor < through:
                yield (
                    "gap",
                    {
                        "cursor": str(through),
                        "requested": str(cursor),
                        "reason": "changes after the requested cursor passed the retention and were pruned",
                        "retention_s": services.settings.change_log_retention_s,
                    },
                )
                cursor = through
            while True:
                page = await run_in_threadpool(_page, services, cursor, flt)
                for row in page:
                    cursor = row.cursor
                    if flt.wants(row):
                        sent.add(row.cursor)
                        yield "change", row
                if len(page) < 500:
                    break
        while True:
            if sub.overflowed and sub.queue.empty():
                yield "overflow", {"reason": "too far behind: reconnect with the last cursor"}
                return
            left = KEEP_ALIVE_S if deadline is None else min(KEEP_ALIVE_S, deadline - loop.time())
            if left <= 0:
                return
            try:
                # What is queued already is taken without a timer: a burst reaches thousands of clients.
                row = sub.queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    row = await asyncio.wait_for(sub.queue.get(), timeout=left)
                except TimeoutError:
                    yield "keep-alive", {}
                    continue
            if row.cursor in sent:
                continue
            yield "change", row
    finally:
        feeds.changes.unsubscribe(sub)


def _page(services: Services, cursor: int, flt: FeedFilter) -> list[LoggedChange]:
    with services.db.read() as s:
        # Unfiltered by metric in SQL (a JSON key test differs per dialect): pages advance the cursor.
        return changelog.after(s, cursor, limit=500, keys=sorted(flt.keys), prefixes=flt.prefixes)


_STREAM_DOC = (
    "Server-sent events: each change as `event: change` with `id` = its cursor and `data` = "
    "{cursor, entity_key, version, changes: {metric: {before, after}}, causes, at}. Resume with "
    "`Last-Event-ID` (EventSource does it by itself) or `cursor`; a cursor older than the retention gets "
    "`event: gap` first. A client that falls too far behind gets `event: overflow` and reconnects."
)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": _STREAM_DOC,
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string", "description": _STREAM_DOC},
                    "example": 'id: 42\nevent: change\ndata: {"cursor": "42", "entity_key": "nft:…", …}\n\n',
                }
            },
        },
        403: {"description": "the key or token lacks the 'read' scope"},
    },
)
async def stream(
    request: Request,
    principal: StreamPrincipalDep,
    services: ServicesDep,
    key: Annotated[list[str], Query(description="entity keys to follow")] = [],  # noqa: B006
    prefix: Annotated[list[str], Query(description="key prefixes, e.g. nft:ethereum:0xabc…:")] = [],  # noqa: B006
    metric: Annotated[list[str], Query(description="only these changed fields")] = [],  # noqa: B006
    cursor: str | None = None,
    max_s: Annotated[float, Query(gt=0, le=3600)] = 300.0,
) -> StreamingResponse:
    """The live change feed as server-sent events (``_STREAM_DOC``); ends after ``max_s`` seconds."""
    _require_read(principal)
    flt = feed_filter(key, prefix, metric)
    last = request.headers.get("last-event-id")
    start = parse_cursor(last, "Last-Event-ID") if last else parse_cursor(cursor, "cursor")
    feeds = feeds_of(request.app, services)

    async def events() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        deadline = asyncio.get_running_loop().time() + max_s
        messages = feed_messages(services, feeds, flt, start, deadline)
        try:
            async for event, message in messages:
                if isinstance(message, LoggedChange):
                    yield feeds.encoded(message, flt.metrics, sse=True)
                elif event == "keep-alive":
                    yield b": keep-alive\n\n"  # proxies close silent connections
                else:
                    ident = f"id: {message['cursor']}\n" if "cursor" in message else ""
                    yield f"{ident}event: {event}\ndata: {json.dumps(message)}\n\n".encode()
        finally:
            await messages.aclose()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@router.websocket("/ws")
async def websocket_feed(websocket: WebSocket) -> None:
    """The live change feed over a WebSocket: the same query parameters and messages as ``/v1/stream``
    (``key``, ``prefix``, ``metric``, ``cursor``, ``token``), each message a JSON object with its
    ``type`` (``change``, ``gap``, ``overflow``). Closes with 4401 (no or bad credentials), 4403 (no read
    scope) or 4422 (a bad parameter, named in the reason)."""
    services = get_services(websocket)  # type: ignore[arg-type]
    params = websocket.query_params
    header = websocket.headers.get("authorization", "")
    bearer = header[7:] if header.lower().startswith("bearer ") else None
    try:
        principal = await run_in_threadpool(stream_principal, services, bearer, params.get("token"))
        _require_read(principal)
        flt = feed_filter(params.getlist("key"), params.getlist("prefix"), params.getlist("metric"))
        start = parse_cursor(params.get("cursor"), "cursor")
    except HTTPException as exc:
        # Accepted first: a refusal before the handshake reaches the browser as a bare 403.
        await websocket.accept()
        await websocket.close(code=4401 if exc.status_code == 401 else 4403, reason=str(exc.detail)[:120])
        return
    except InvalidInput as exc:
        await websocket.accept()
        await websocket.close(code=4422, reason=json.dumps(exc.errors)[:120])
        return
    await websocket.accept()
    feeds = feeds_of(websocket.app, services)
    messages = feed_messages(services, feeds, flt, start)
    receiver = asyncio.create_task(_until_closed(websocket))
    try:
        while not receiver.done():
            nxt = asyncio.ensure_future(anext(messages))
            done, _ = await asyncio.wait({nxt, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt
                break
            try:
                event, message = nxt.result()
            except StopAsyncIteration:
                break
            if isinstance(message, LoggedChange):
                # A text frame: browsers hand binary frames to scripts as Blobs.
                await websocket.send_text(feeds.encoded(message, flt.metrics, sse=False).decode())
            elif event != "keep-alive":
                await websocket.send_json({"type": event, **message})
    except WebSocketDisconnect:
        pass
    finally:
        receiver.cancel()
        await messages.aclose()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close()


async def _until_closed(websocket: WebSocket) -> None:
    """Reads (and ignores) what the client sends until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()
