"""The JSON-RPC client and reader against a real local HTTP server that misbehaves as nodes do: 429 with
Retry-After, 5xx, a dropped connection, a JSON-RPC rate-limit error, and log ranges refused as too large."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import pytest

from nftpulse.adapters.chain import ChainReader, Rpc, RpcError, RpcUnavailable
from nftpulse.adapters.logs import LogDecoder
from nftpulse.core.settings import Settings
from nftpulse.follow import Follower
from nftpulse.store import chain as checkpoints
from nftpulse.store.db import Database
from tests.adapters import logs_factory as f
from tests.conftest import local_http_server

NFT = "0x00000000000000000000000000000000000000aa"
ALICE = "0x1111111111111111111111111111111111111111"


class Node(BaseHTTPRequestHandler):
    """Answers from a script: each entry is (status, headers, JSON-RPC body or None to drop the line)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as nodes answer
    script: ClassVar[list[tuple[int, dict[str, str], Any]]] = []
    seen: ClassVar[list[dict[str, Any]]] = []
    lock = threading.Lock()
    #: Logs per block for eth_getLogs; a query over more than ``max_range`` blocks is refused.
    logs: ClassVar[dict[int, list[dict[str, Any]]]] = {}
    max_range: ClassVar[int] = 1_000_000

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            Node.seen.append(request)
            scripted = Node.script.pop(0) if Node.script else None
        headers: dict[str, str] = {}
        if scripted is None:
            status, body = 200, self._answer(request)
        else:
            status, headers, body = scripted
        if body is None:
            self.close_connection = True  # no answer: the server shuts the connection
            return
        data = json.dumps({"jsonrpc": "2.0", "id": request["id"], **body}).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        method, params = request["method"], request["params"]
        if method == "eth_blockNumber":
            return {"result": hex(max(Node.logs, default=0))}
        if method == "eth_getBlockByNumber":
            n = int(params[0], 16)
            return {
                "result": {
                    "number": hex(n),
                    "hash": "0x" + n.to_bytes(32, "big").hex(),
                    "parentHash": "0x" + (n - 1).to_bytes(32, "big").hex(),
                    "timestamp": hex(1_700_000_000 + 12 * n),
                }
            }
        if method == "eth_getLogs":
            first, last = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            if last - first + 1 > Node.max_range:
                # Infura's answer: a range refusal under a rate-limit code, not to be retried as such.
                return {"error": {"code": -32005, "message": "query returned more than 10000 results"}}
            topics = params[0]["topics"][0]
            return {
                "result": [
                    log
                    for n in range(first, last + 1)
                    for log in Node.logs.get(n, [])
                    if log["topics"][0] in topics
                ]
            }
        return {"error": {"code": -32601, "message": f"no method {method}"}}


@pytest.fixture
def node() -> Iterator[str]:
    Node.script, Node.seen, Node.logs, Node.max_range = [], [], {}, 1_000_000
    with local_http_server(Node) as url:
        yield url


async def no_wait(_: float) -> None:
    return None


async def test_retries_429_5xx_dropped_lines_and_rate_limit_errors(node: str) -> None:
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    Node.script = [
        (429, {"Retry-After": "2"}, {"error": {"code": 429, "message": "Too Many Requests"}}),
        (503, {}, {"error": {"code": -32000, "message": "unavailable"}}),
        (200, {}, None),  # the connection drops
        (200, {}, {"error": {"code": -32005, "message": "daily request rate limit exceeded"}}),
    ]
    rpc = Rpc(node, sleep=record, base_delay_s=0.01)
    try:
        assert await rpc.call("eth_blockNumber", []) == "0x0"
    finally:
        await rpc.aclose()
    assert rpc.retries == 4 and len(Node.seen) == 5
    assert waits[0] == 2.0  # Retry-After is honoured; the rest back off exponentially with jitter
    assert all(0 < w <= 0.01 * 2**i for i, w in enumerate(waits[1:], 1))


async def test_gives_up_after_its_attempts_and_does_not_retry_real_errors(node: str) -> None:
    Node.script = [(503, {}, {"error": {"code": -32000, "message": "down"}})] * 3
    rpc = Rpc(node, sleep=no_wait, attempts=3)
    try:
        with pytest.raises(RpcUnavailable, match="after 3 attempts"):
            await rpc.call("eth_blockNumber", [])
        with pytest.raises(RpcError, match="no method eth_nothing"):
            await rpc.call("eth_nothing", [])
    finally:
        await rpc.aclose()


async def test_reader_halves_ranges_the_node_refuses(node: str) -> None:
    for block in range(1, 41):
        Node.logs[block] = [f.erc721_transfer(NFT, f.ZERO, ALICE, block, block=block, index=0, tx=block)]
    Node.max_range = 6
    rpc = Rpc(node, sleep=no_wait)
    reader = ChainReader(rpc, LogDecoder("ethereum"), [NFT])
    try:
        chunk = await reader.read(1, 40)
    finally:
        await rpc.aclose()
    assert [int(e.token_id or 0) for e in chunk.decoded.events] == list(range(1, 41))
    assert chunk.decoded.events[0].occurred_at == datetime.fromtimestamp(1_700_000_012, tz=UTC)
    assert chunk.last_block.number == 40 and chunk.logs == 40
    assert rpc.retries == 0  # refused ranges were halved, not asked again


async def test_follower_survives_a_node_that_fails_and_catches_up_after(node: str, db: Database) -> None:
    """Live following through a node that refuses eth_getLogs: the follower keeps running (the failure is
    logged), and reads the blocks once the node answers again; nothing is skipped."""
    for block in range(1, 6):
        Node.logs[block] = [f.erc721_transfer(NFT, f.ZERO, ALICE, block, block=block, index=0, tx=block)]
    Node.script = [
        (200, {}, {"result": "0x5"}),
        (200, {}, {"error": {"code": -32000, "message": "internal"}}),
    ]
    settings = Settings(chain_rpc_url=node, chain_contracts=NFT, chain_confirmations=0)
    follower = Follower.from_settings(settings, db)
    stop = asyncio.Event()
    running = asyncio.create_task(follower.run(stop, start_block=1, poll_s=0.05))
    try:
        for _ in range(200):
            saved = checkpoints.checkpoint(db, "ethereum")
            if saved is not None and saved.block_number == 5:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await follower.aclose()
    assert saved is not None and saved.block_number == 5
    assert follower.report.accepted == 5
