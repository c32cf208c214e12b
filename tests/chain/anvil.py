"""A local Ethereum node (anvil, from npm ``@foundry-rs/anvil``, installed by scripts/install-npm-deps.sh)
and the test contracts (tests/chain/PulseTestTokens.sol, compiled with solcjs from npm ``solc``)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_abi import decode, encode
from eth_hash.auto import keccak

REPO = Path(__file__).resolve().parents[2]
ANVIL = REPO / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
SOLCJS = REPO / "node_modules" / ".bin" / "solcjs"
SOURCE = Path(__file__).with_name("PulseTestTokens.sol")


def missing_tools() -> str | None:
    for tool in (ANVIL, SOLCJS):
        if not tool.exists():
            return f"{tool} is missing: run scripts/install-npm-deps.sh"
    return None


def compile_contracts(out: Path) -> dict[str, str]:
    """Contract name -> creation bytecode (hex, no 0x)."""
    subprocess.run(
        [str(SOLCJS), "--bin", "--optimize", "-o", str(out), str(SOURCE)],
        check=True,
        capture_output=True,
        cwd=SOURCE.parent,
    )
    return {p.stem.rsplit("_", 1)[-1]: p.read_text().strip() for p in out.glob("*.bin")}


@contextlib.contextmanager
def anvil(port: int, *extra: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--silent", "--chain-id", "31337", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("anvil did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def selector(signature: str) -> bytes:
    return keccak(signature.encode())[:4]


def calldata(signature: str, *args: Any) -> str:
    """ABI-encoded call data for a function of plain (non-tuple) parameter types."""
    types = [t for t in signature[signature.index("(") + 1 : -1].split(",") if t]
    return "0x" + (selector(signature) + encode(types, list(args))).hex()


@dataclass
class Eth:
    url: str
    http: httpx.AsyncClient

    async def call(self, method: str, *params: Any) -> Any:
        answer = (
            await self.http.post(
                self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
            )
        ).json()
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    async def accounts(self) -> list[str]:
        return [a.lower() for a in await self.call("eth_accounts")]

    async def send(
        self, sender: str, to: str | None, data: str, value: int = 0, gas: int = 3_000_000
    ) -> dict[str, Any]:
        tx: dict[str, Any] = {"from": sender, "data": data, "value": hex(value), "gas": hex(gas)}
        if to is not None:
            tx["to"] = to
        tx_hash = await self.call("eth_sendTransaction", tx)
        # Anvil mines each transaction at once, but its receipt can lag the answer by a moment.
        for _ in range(200):
            receipt = await self.call("eth_getTransactionReceipt", tx_hash)
            if receipt is not None:
                break
            await asyncio.sleep(0.01)
        assert receipt is not None and receipt["status"] == "0x1", receipt
        return receipt  # type: ignore[no-any-return]

    async def deploy(self, sender: str, bytecode: str) -> str:
        receipt = await self.send(sender, None, "0x" + bytecode)
        return str(receipt["contractAddress"]).lower()

    async def view(self, to: str, signature: str, *args: Any, returns: str = "address") -> Any:
        raw = await self.call("eth_call", {"to": to, "data": calldata(signature, *args)}, "latest")
        (value,) = decode([returns], bytes.fromhex(raw[2:]))
        return value.lower() if isinstance(value, str) else value

    async def owner_of(self, nft: str, token: int) -> str | None:
        """``ownerOf`` from the chain; None for a token that does not exist (burned)."""
        try:
            return await self.view(nft, "ownerOf(uint256)", token)  # type: ignore[no-any-return]
        except RuntimeError:
            return None

    async def head(self) -> int:
        return int(await self.call("eth_blockNumber"), 16)
