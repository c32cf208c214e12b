"""The token metadata fetcher: for a mint without traits and for an ERC-4906 ``MetadataUpdate`` or
``BatchMetadataUpdate`` (each token of its range), read the token's URI with ``eth_call`` (ERC-721
``tokenURI(uint256)``, else ERC-1155 ``uri(uint256)`` with ``{id}`` as 64 hex digits), fetch the JSON
(``https://``; ``ipfs://`` through PULSE_IPFS_GATEWAY; ``data:`` URIs of on-chain metadata are read in
place) and ingest a ``metadata_update`` with its ``attributes``, so traits and rarity follow.

Where it runs, and why: the follower only *enqueues* (``store.metadata_fetches``, written with the range's
events and before the checkpoint moves, so a crash loses no request and a re-read block asks once), and
this fetcher drains the queue in a bounded pool of asyncio tasks beside the follower, in the same process
(``pulse follow``, or ``pulse up``'s follower). A slow or dead metadata host therefore never holds back
reading blocks, and at most PULSE_METADATA_FETCH_CONCURRENCY requests are out at once. Not a Temporal
activity per token: ``pulse follow`` runs without a Temporal client, and one BatchMetadataUpdate can name
thousands of tokens, which as workflows would cost the Temporal server far more than the fetches cost.

Every URL is vetted as webhook destinations are (``core.delivery.vet_destination``: https only, public
addresses only, unless PULSE_METADATA_ALLOW_PRIVATE) and requested at the address that was vetted, with
redirects followed by hand and each one vetted again. Transient failures (the node, a timeout, 429, 5xx,
404 while IPFS content propagates) are retried with exponential backoff up to PULSE_METADATA_FETCH_ATTEMPTS;
permanent ones (no URI function, a refused URL, not JSON) fail at once. Failed requests stay in the
queue with their reason (``status = failed``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_to_bytes, urljoin

import httpx
import orjson
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from pydantic import ValidationError

from nftpulse.adapters.chain import Rpc, RpcError, RpcUnavailable
from nftpulse.adapters.logs import Decoded
from nftpulse.core.delivery import InvalidWebhookUrl, vet_destination
from nftpulse.core.settings import Settings
from nftpulse.domain.events import Event, EventType, utcnow
from nftpulse.ingest import Ingestor
from nftpulse.store import metadata_fetches as queue
from nftpulse.store.db import Database
from nftpulse.store.metadata_fetches import DueFetch, FetchRequest

log = logging.getLogger("pulse.metadata")

#: The source metadata events are ingested under.
SOURCE = "metadata"
TOKEN_URI = "0xc87b56dd"  # tokenURI(uint256)
URI_1155 = "0x0e89341c"  # uri(uint256)
MAX_BYTES = 1 << 20
MAX_REDIRECTS = 3
MAX_ATTRIBUTES = 200
MAX_TEXT = 1000
#: A cached document serves other mints for this long; an ERC-4906 update always reads afresh.
CACHE_TTL_S = 300.0
CACHE_ENTRIES = 4096


class FetchError(Exception):
    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


#: ``(chain, contract, first, last, limit) -> token ids``: the tokens Pulse knows in a range.
KnownTokens = Callable[[str, str, int, int, int], list[int]]


def requests_for(
    decoded: Decoded, max_range: int, now: datetime, known: KnownTokens | None = None
) -> list[FetchRequest]:
    """What a decoded range asks of the fetcher: mints that carry no traits, and each token of each
    ERC-4906 update. A range wider than ``max_range`` (``BatchMetadataUpdate(0, 2**256 - 1)`` is how a
    contract says "all of them") becomes the tokens Pulse knows in it, at most ``max_range`` of them, or
    without ``known`` its first ``max_range`` ids; either way logged."""
    out: list[FetchRequest] = []
    # An ERC-1155 id minted again and again (an open edition) is asked for once per range.
    minted: set[tuple[str, str]] = set()
    for e in decoded.events:
        if (
            e.type is not EventType.MINT
            or e.token_id is None
            or e.block_number is None
            or e.log_index is None
            or e.data.get("traits") is not None
            or (e.contract, e.token_id) in minted
        ):
            continue
        minted.add((e.contract, e.token_id))
        out.append(
            FetchRequest(e.chain, e.contract, e.token_id, e.block_number, e.log_index, e.occurred_at, "mint")
        )
    for r in decoded.refreshes:
        tokens: Iterable[int]
        if r.last - r.first + 1 <= max_range:
            tokens = range(r.first, r.last + 1)
        else:
            # A narrow range is taken as it is: a token minted a moment ago may not be known yet.
            tokens = (
                known(r.chain, r.contract, r.first, r.last, max_range)
                if known is not None
                else range(r.first, r.first + max_range)
            )
            log.warning(
                "metadata.range_cut",
                extra={"contract": r.contract, "first": r.first, "last": r.last, "max": max_range},
            )
        out.extend(
            # The block's time is not part of a refresh; ``now`` is close to it when following live, and
            # the chain position (block, log index) is what orders the update after the token's mint.
            FetchRequest(r.chain, r.contract, str(token), r.block_number, r.log_index, now, "update")
            for token in tokens
            if token < 10**78
        )
    return out


def _abi_string(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.startswith("0x") or len(raw) <= 2:
        raise ValueError("empty answer")
    (text,) = abi_decode(["string"], bytes.fromhex(raw[2:]))
    return str(text)


def gateway_url(uri: str, gateway: str) -> str:
    """An ``ipfs://`` URI through the HTTP gateway (``ipfs://ipfs/<cid>`` too); other URIs unchanged."""
    if not uri.startswith("ipfs://"):
        return uri
    path = uri.removeprefix("ipfs://").removeprefix("ipfs/")
    return gateway.rstrip("/") + "/" + path


def attributes_of(document: Any) -> list[dict[str, Any]]:
    """Standard metadata's ``attributes`` (or ``traits``), kept to what an event holds: entries with a
    ``trait_type`` and a scalar value, texts cut at :data:`MAX_TEXT`, at most :data:`MAX_ATTRIBUTES`."""
    if not isinstance(document, dict):
        raise FetchError("the metadata is not a JSON object", permanent=True)
    raw: list[Any] = []
    for key in ("attributes", "traits"):
        if isinstance(document.get(key), list):
            raw = document[key]
            break
    out: list[dict[str, Any]] = []
    for entry in raw:
        if not isinstance(entry, dict) or len(out) >= MAX_ATTRIBUTES:
            continue
        trait, value = entry.get("trait_type"), entry.get("value")
        if not isinstance(trait, str) or not trait.strip():
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, str):
            value = value.replace("\x00", "")[:MAX_TEXT]
        elif not isinstance(value, bool | int | float) or (isinstance(value, int) and abs(value) > 2**63):
            continue
        attribute: dict[str, Any] = {"trait_type": trait.replace("\x00", "")[:200], "value": value}
        if isinstance(entry.get("display_type"), str):
            attribute["display_type"] = entry["display_type"][:64]
        out.append(attribute)
    return out


def _data_uri(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raise FetchError("a data: URI that is not base64", permanent=True) from None
    return unquote_to_bytes(payload)


class MetadataFetcher:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        rpc: Rpc,
        *,
        client: httpx.AsyncClient | None = None,
        retry_base_s: float = 5.0,
        retry_max_s: float = 3600.0,
        poll_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.db = db
        self.rpc = rpc
        self.ingestor = Ingestor(settings, db)
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.poll_s = poll_s
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=settings.metadata_fetch_timeout_s,
            follow_redirects=False,
            headers={"user-agent": "Pulse-Metadata/1", "accept": "application/json"},
            limits=httpx.Limits(max_connections=settings.metadata_fetch_concurrency * 2),
        )
        self._cache: OrderedDict[str, tuple[float, list[dict[str, Any]]]] = OrderedDict()
        self._busy: dict[int, asyncio.Task[None]] = {}
        #: Counters for logs and tests.
        self.fetched = 0
        self.failed = 0
        self.retried = 0
        self.cache_hits = 0

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    # -- one token ------------------------------------------------------------------------------------

    async def token_uri(self, contract: str, token_id: int) -> str:
        word = token_id.to_bytes(32, "big").hex()
        last = ""
        for selector in (TOKEN_URI, URI_1155):
            try:
                raw = await self.rpc.call("eth_call", [{"to": contract, "data": selector + word}, "latest"])
                uri = _abi_string(raw)
            except RpcError as exc:
                last = exc.message  # a revert: the contract has no such function, or not for this token
                continue
            except (DecodingError, ValueError, OverflowError) as exc:
                last = f"not an ABI string: {exc}"
                continue
            except RpcUnavailable as exc:
                raise FetchError(f"the node did not answer: {exc}", permanent=False) from exc
            if uri:
                # ERC-1155: the client substitutes {id} with the id as 64 lower-case hex digits.
                return uri.replace("{id}", word) if selector == URI_1155 else uri
        raise FetchError(f"neither tokenURI nor uri answers for token {token_id} ({last})", permanent=True)

    async def _get(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                destination = await vet_destination(url, allow_private=self.settings.metadata_allow_private)
            except InvalidWebhookUrl as exc:
                raise FetchError(f"refused URL {url[:200]}: {exc}", permanent=True) from None
            pinned = destination.pinned()
            try:
                async with self._client.stream(
                    "GET",
                    pinned.url,
                    headers={"host": pinned.host_header},
                    extensions={"sni_hostname": pinned.sni_hostname} if pinned.sni_hostname else None,
                ) as response:
                    status = response.status_code
                    if status in (301, 302, 303, 307, 308) and response.headers.get("location"):
                        url = urljoin(url, response.headers["location"])
                        continue
                    if status == 429 or status >= 500 or status in (404, 408):
                        raise FetchError(f"HTTP {status} from {url[:200]}", permanent=False)
                    if not 200 <= status < 300:
                        raise FetchError(f"HTTP {status} from {url[:200]}", permanent=True)
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_BYTES:
                            raise FetchError(f"more than {MAX_BYTES} bytes at {url[:200]}", permanent=True)
                    return bytes(body)
            except httpx.HTTPError as exc:
                raise FetchError(f"{type(exc).__name__} at {url[:200]}: {exc}", permanent=False) from None
        raise FetchError(f"more than {MAX_REDIRECTS} redirects from {url[:200]}", permanent=True)

    async def document(self, uri: str, *, fresh: bool) -> list[dict[str, Any]]:
        """The attributes at ``uri``, from the cache unless ``fresh``."""
        now = time.monotonic()
        hit = self._cache.get(uri)
        if hit is not None and not fresh and now - hit[0] < CACHE_TTL_S:
            self.cache_hits += 1
            return hit[1]
        if uri.startswith("data:"):
            raw = _data_uri(uri)
        elif uri.startswith(("https://", "http://", "ipfs://")):
            raw = await self._get(gateway_url(uri, self.settings.ipfs_gateway))
        else:
            raise FetchError(f"unsupported URI scheme: {uri[:60]}", permanent=True)
        try:
            attributes = attributes_of(orjson.loads(raw))
        except orjson.JSONDecodeError:
            raise FetchError(f"the metadata at {uri[:200]} is not JSON", permanent=True) from None
        self._cache[uri] = (now, attributes)
        self._cache.move_to_end(uri)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return attributes

    async def event_for(self, request: FetchRequest) -> Event:
        uri = await self.token_uri(request.contract, int(request.token_id))
        attributes = await self.document(uri, fresh=request.reason != "mint")
        data: dict[str, Any] = {"attributes": attributes}
        if len(uri) <= 2048 and not uri.startswith("data:"):
            data["uri"] = uri
        try:
            return Event(
                id=f"{request.chain}:{request.contract}:{request.token_id}:{request.block_number}:"
                f"{request.log_index}",
                source=SOURCE,
                type=EventType.METADATA_UPDATE,
                occurred_at=request.occurred_at,
                chain=request.chain,
                contract=request.contract,
                token_id=request.token_id,
                block_number=request.block_number,
                log_index=request.log_index,
                data=data,
            )
        except ValidationError as exc:
            raise FetchError(f"the metadata makes no valid event: {exc}", permanent=True) from None

    def _delay(self, attempts: int) -> float:
        cap = min(self.retry_max_s, self.retry_base_s * 2 ** (attempts - 1))
        return random.uniform(cap / 2, cap)

    async def fetch(self, due: DueFetch) -> None:
        """Fetch one request and ingest its event, or put it back for later, or give up on it."""
        attempts = due.attempts + 1
        try:
            event = await self.event_for(due.request)
        except FetchError as exc:
            where = {"contract": due.request.contract, "token": due.request.token_id, "attempt": attempts}
            if exc.permanent or attempts >= self.settings.metadata_fetch_attempts:
                self.failed += 1
                log.warning("metadata.failed", extra={**where, "reason": exc.reason})
                await asyncio.to_thread(queue.fail, self.db, due.id, attempts, exc.reason)
            else:
                self.retried += 1
                at = utcnow() + timedelta(seconds=self._delay(attempts))
                log.info("metadata.retry", extra={**where, "reason": exc.reason})
                await asyncio.to_thread(queue.retry_later, self.db, due.id, attempts, at, exc.reason)
            return
        await asyncio.to_thread(self.ingestor.append, [event])
        await asyncio.to_thread(queue.done, self.db, due.id)
        self.fetched += 1

    # -- the pool ---------------------------------------------------------------------------------------

    async def _fill(self) -> int:
        """Start fetches for due requests while the pool has room; returns how many started."""
        room = self.settings.metadata_fetch_concurrency - len(self._busy)
        if room <= 0:
            return 0
        due = await asyncio.to_thread(queue.due, self.db, datetime.now(UTC), room, list(self._busy))
        for item in due:
            task = asyncio.create_task(self.fetch(item))
            self._busy[item.id] = task
            task.add_done_callback(functools.partial(self._finished, item.id))
        return len(due)

    def _finished(self, fetch_id: int, task: asyncio.Task[None]) -> None:
        self._busy.pop(fetch_id, None)
        if not task.cancelled() and task.exception() is not None:
            # A store error: the request stays pending and is tried again on a later round.
            log.error("metadata.error", extra={"id": fetch_id}, exc_info=task.exception())

    async def run(self, stop: asyncio.Event) -> None:
        """Drain the queue until ``stop`` is set; requests still in flight then are left pending."""
        try:
            while not stop.is_set():
                try:
                    await self._fill()
                except Exception:
                    log.exception("metadata.queue_unreadable")
                waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait()), *self._busy.values()]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait(waits, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
                waits[0].cancel()
        finally:
            for task in list(self._busy.values()):
                task.cancel()
            await asyncio.gather(*self._busy.values(), return_exceptions=True)

    async def drain(self, limit_s: float = 60.0) -> None:
        """Fetch until no request is pending, retries included (tests, backfills)."""
        deadline = time.monotonic() + limit_s
        while True:
            started = await self._fill()
            if not started and not self._busy:
                pending = (await asyncio.to_thread(queue.counts, self.db)).get(queue.PENDING, 0)
                if not pending:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"metadata fetches still pending after {limit_s} s")
            if self._busy:
                await asyncio.wait(list(self._busy.values()), return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(min(self.poll_s, 0.05))


def enqueue(db: Database, requests: Sequence[FetchRequest]) -> None:
    queue.enqueue(db, requests, utcnow())


def enqueue_decoded(db: Database, decoded: Decoded, max_range: int) -> int:
    """Queue what a decoded range asks for (blocking: the follower calls it from a thread, before its
    checkpoint moves); returns how many requests that was."""

    def known(chain: str, contract: str, first: int, last: int, limit: int) -> list[int]:
        return queue.known_tokens(db, chain, contract, first, last, limit)

    wanted = requests_for(decoded, max_range, utcnow(), known)
    queue.enqueue(db, wanted, utcnow())
    return len(wanted)
