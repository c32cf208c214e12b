"""Reading an EVM chain over JSON-RPC: logs in block ranges, block headers for times and hashes, ERC-20
symbols and decimals for sale prices. What it reads is decoded by :mod:`nftpulse.adapters.logs`; storing
it (and the follower's checkpoint) is the wiring's business (``nftpulse/follow.py``).

Transport failures, HTTP 429 and 5xx answers, and JSON-RPC rate-limit errors are retried with exponential
backoff and jitter (a ``Retry-After`` is honoured); a range the node refuses as too large (too many
results, or past its block-range limit) is read again in halves.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from nftpulse.adapters.logs import (
    NFT_TOPICS,
    ORDER_FULFILLED,
    Decoded,
    DecodeError,
    Erc20,
    LogDecoder,
    RawLog,
    erc20_payments,
    hex_int,
    known_token,
)

log = logging.getLogger("pulse.chain")

#: JSON-RPC error codes and message fragments that mean "slow down" rather than "wrong request".
_RATE_LIMIT_CODES = frozenset({429, -32005, -32029, -32090})
_RATE_LIMIT_WORDS = ("rate limit", "too many requests", "capacity")
#: Message fragments with which nodes refuse a log query's size (geth, erigon, anvil, hosted providers).
_TOO_LARGE_WORDS = ("more than", "block range", "range is too", "too large", "response size", "10000")

_SYMBOL = "0x95d89b41"  # symbol()
_DECIMALS = "0x313ce567"  # decimals()


class RpcError(RuntimeError):
    """A JSON-RPC error the node answered (not worth retrying as such)."""

    def __init__(self, method: str, code: int | None, message: str) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message


class RpcUnavailable(RuntimeError):
    """The node did not answer usefully after every retry."""


@dataclass(frozen=True, slots=True)
class Block:
    number: int
    hash: str
    parent_hash: str
    timestamp: datetime


class Rpc:
    """A JSON-RPC client over HTTP with retries. ``sleep`` is injectable so tests need not wait."""

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        attempts: int = 8,
        base_delay_s: float = 0.25,
        max_delay_s: float = 30.0,
        timeout_s: float = 30.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.url = url
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._owns_client = client is None
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep
        self._ids = itertools.count(1)
        #: Retries so far (transport errors, 429s, 5xx, rate-limit errors), for logs and tests.
        self.retries = 0

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(self.max_delay_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        cap = min(self.max_delay_s, self.base_delay_s * 2**attempt)
        return random.uniform(cap / 2, cap)

    async def call(self, method: str, params: Sequence[Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        last = "no attempt"
        for attempt in range(self.attempts):
            retry_after: str | None = None
            try:
                response = await self._client.post(self.url, json=body)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}"
                    retry_after = response.headers.get("Retry-After")
                else:
                    try:
                        answer = response.json()
                    except ValueError:
                        answer = None
                    if not isinstance(answer, dict):
                        raise RpcError(method, None, f"HTTP {response.status_code}, not a JSON-RPC answer")
                    error = answer.get("error")
                    if error is None:
                        return answer.get("result")
                    code = error.get("code") if isinstance(error, dict) else None
                    message = str(error.get("message", error) if isinstance(error, dict) else error)
                    if method == "eth_getLogs" and _too_large_message(message):
                        # Some nodes send a range refusal with a rate-limit code (Infura's -32005):
                        # the caller halves the range rather than ask the same again.
                        raise RpcError(method, code, message)
                    if code in _RATE_LIMIT_CODES or any(w in message.lower() for w in _RATE_LIMIT_WORDS):
                        last = f"rate limited: {message}"
                    else:
                        raise RpcError(method, code, message)
            if attempt + 1 < self.attempts:
                self.retries += 1
                delay = self._delay(attempt, retry_after)
                log.warning(
                    "chain.rpc_retry",
                    extra={"method": method, "attempt": attempt + 1, "reason": last, "delay_s": delay},
                )
                await self._sleep(delay)
        raise RpcUnavailable(f"{method}: no answer after {self.attempts} attempts ({last})")


def _too_large_message(message: str) -> bool:
    return any(word in message.lower() for word in _TOO_LARGE_WORDS)


def _too_large(exc: RpcError) -> bool:
    return _too_large_message(exc.message)


@dataclass
class ChainRange:
    """What one range of blocks holds: its decoded events and refreshes, the last block (for the checkpoint)
    and how many logs were read."""

    first: int
    last: int
    decoded: Decoded
    last_block: Block
    logs: int
    #: The headers read: of ``last`` and of every block with a log (the follower keeps recent ones to find
    #: where a reorganised chain forked).
    blocks: dict[int, Block] = field(default_factory=dict)


class ChainReader:
    """Reads NFT logs (of ``contracts``, or of every contract when empty) and Seaport sales of those
    contracts, and decodes them with ``decoder``."""

    def __init__(self, rpc: Rpc, decoder: LogDecoder, contracts: Sequence[str] = ()) -> None:
        self.rpc = rpc
        self.decoder = decoder
        self.contracts = [c.lower() for c in contracts]
        self._tokens: dict[str, Erc20 | None] = {}
        decoder.tokens = self._token

    def _token(self, chain: str, address: str) -> Erc20 | None:
        return known_token(chain, address) or self._tokens.get(address)

    async def head(self) -> int:
        return _quantity(await self.rpc.call("eth_blockNumber", []), "eth_blockNumber")

    async def block(self, number: int) -> Block:
        raw = await self.rpc.call("eth_getBlockByNumber", [hex(number), False])
        if not isinstance(raw, dict):
            raise RpcError("eth_getBlockByNumber", None, f"block {number} not found")
        return Block(
            number=_quantity(raw.get("number"), "number"),
            hash=str(raw.get("hash")).lower(),
            parent_hash=str(raw.get("parentHash")).lower(),
            timestamp=datetime.fromtimestamp(_quantity(raw.get("timestamp"), "timestamp"), tz=UTC),
        )

    async def logs(self, first: int, last: int) -> list[RawLog]:
        """Every log the follower wants in ``first``..``last``; a range the node refuses as too large is
        read in halves."""
        try:
            nft = await self._get_logs(first, last, self.contracts or None, [list(NFT_TOPICS)])
            sales = await self._get_logs(first, last, sorted(self.decoder.marketplaces), [[ORDER_FULFILLED]])
        except RpcError as exc:
            if first == last or not _too_large(exc):
                raise
            middle = (first + last) // 2
            return [*await self.logs(first, middle), *await self.logs(middle + 1, last)]
        merged = {(log.block_number, log.log_index): log for log in (*nft, *sales)}
        return [merged[k] for k in sorted(merged)]

    async def _get_logs(
        self, first: int, last: int, addresses: list[str] | None, topics: list[Any]
    ) -> list[RawLog]:
        query: dict[str, Any] = {"fromBlock": hex(first), "toBlock": hex(last), "topics": topics}
        if addresses:
            query["address"] = addresses
        raw = await self.rpc.call("eth_getLogs", [query])
        if not isinstance(raw, list):
            raise RpcError("eth_getLogs", None, "the answer is not a list of logs")
        return [RawLog.from_json(item, f"eth_getLogs[{i}]") for i, item in enumerate(raw)]

    async def erc20(self, address: str) -> Erc20 | None:
        """An ERC-20's symbol and decimals read with eth_call; None when the contract does not answer
        both (the sale is then skipped with that reason)."""
        try:
            symbol_raw = await self.rpc.call("eth_call", [{"to": address, "data": _SYMBOL}, "latest"])
            decimals_raw = await self.rpc.call("eth_call", [{"to": address, "data": _DECIMALS}, "latest"])
            (decimals,) = abi_decode(["uint8"], bytes.fromhex(str(decimals_raw)[2:]))
            symbol = _symbol(bytes.fromhex(str(symbol_raw)[2:]))
        except (RpcError, DecodingError, ValueError, OverflowError):
            return None
        return Erc20(symbol, decimals) if symbol else None

    async def read(self, first: int, last: int) -> ChainRange:
        """Read and decode blocks ``first``..``last``: logs, the headers of the blocks that have some (their
        timestamps become the events' times) and of ``last`` (its hash is the checkpoint's)."""
        logs = await self.logs(first, last)
        for address in erc20_payments(logs, self.decoder.marketplaces):
            if known_token(self.decoder.chain, address) is None and address not in self._tokens:
                self._tokens[address] = await self.erc20(address)
        numbers = sorted({log.block_number for log in logs} | {last})
        blocks = {b.number: b for b in await asyncio.gather(*(self.block(n) for n in numbers))}
        for raw in logs:
            if blocks[raw.block_number].hash != raw.block_hash:
                # The chain moved under the read (a reorganisation at the tip): read the range again.
                raise ChainMoved(raw.block_number)
        decoded = self.decoder.decode(logs, {n: b.timestamp for n, b in blocks.items()})
        if self.contracts:
            wanted = set(self.contracts)
            decoded.events = [e for e in decoded.events if e.contract in wanted]
        return ChainRange(first, last, decoded, blocks[last], len(logs), blocks)


class ChainMoved(RuntimeError):
    """A log's block hash is not the block's hash any more: the chain reorganised during the read."""

    def __init__(self, block: int) -> None:
        super().__init__(f"block {block} changed during the read")
        self.block = block


def _quantity(value: Any, where: str) -> int:
    try:
        return hex_int(value, where)
    except DecodeError as exc:
        raise RpcError(where, None, exc.reason) from None


def _symbol(raw: bytes) -> str:
    """An ERC-20 symbol: ABI ``string``, or ``bytes32`` in old tokens (MKR), kept alphanumeric."""
    try:
        (text,) = abi_decode(["string"], raw)
    except (DecodingError, OverflowError, ValueError):
        text = raw[:32].rstrip(b"\x00").decode("utf-8", "ignore")
    cleaned = "".join(ch for ch in str(text) if ch.isalnum())
    return cleaned[:12] if len(cleaned) >= 2 else ""
