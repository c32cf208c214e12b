"""The chain follower against a real local chain: anvil running the contracts of PulseTestTokens.sol (an
ERC-721 with ERC-4906 updates, an ERC-1155, and a Seaport stand-in at Seaport 1.6's address that emits the
real OrderFulfilled). Mint, transfer, batch transfer, metadata update, burn and a sale; after each step the
follower (0 confirmations, checkpoint in the database) brings the new blocks into a running Pulse, whose
owners then equal ``ownerOf`` read from the chain, and ``pulse verify`` finds no difference."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlmodel import col, select

from nftpulse.adapters.logs import SEAPORT
from nftpulse.follow import Follower
from nftpulse.store import chain as checkpoints
from nftpulse.store import events as event_log
from nftpulse.store import schema
from nftpulse.store.db import Database
from nftpulse.store.models import EventRecord
from nftpulse.verify import verify
from tests.chain.anvil import Eth, anvil, calldata, compile_contracts, missing_tools
from tests.conftest import RunningPulse
from tests.ports import free_port

SEAPORT_16 = next(a for a, name in SEAPORT.items() if name == "seaport-1.6")
ETH = 10**18

if os.environ.get("CI") and missing_tools():
    raise RuntimeError(f"CI runs the chain tests: {missing_tools()}")
pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))


@dataclass
class Chain:
    eth: Eth
    nft: str
    multi: str
    alice: str
    bob: str
    carol: str
    fees: str


@pytest_asyncio.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    code = await asyncio.to_thread(compile_contracts, tmp_path / "solc")
    with anvil(free_port()) as url:
        async with httpx.AsyncClient(timeout=30) as http:
            eth = Eth(url, http)
            alice, bob, carol, fees = (await eth.accounts())[:4]
            nft = await eth.deploy(alice, code["TestERC721"])
            multi = await eth.deploy(alice, code["TestERC1155"])
            # Seaport's code at Seaport's address: the follower believes OrderFulfilled only from there.
            stand_in = await eth.deploy(alice, code["TestSeaport"])
            await eth.call("anvil_setCode", SEAPORT_16, await eth.call("eth_getCode", stand_in, "latest"))
            yield Chain(eth, nft, multi, alice, bob, carol, fees)


async def settle(pulse: RunningPulse, follower: Follower, limit_s: float = 30) -> None:
    """Follow up to the head, then wait until Pulse has processed every event."""
    while await follower.step(start_block=None) is not None:
        pass
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        counts = event_log.status_counts(pulse.db)
        if not {"received", "dispatched", "applied"} & {k for k, v in counts.items() if v}:
            assert not counts.get("failed"), counts
            return
        assert asyncio.get_running_loop().time() < deadline, counts
        await asyncio.sleep(0.1)


async def check_owners(pulse: RunningPulse, chain: Chain, tokens: range) -> None:
    for token in tokens:
        truth = await chain.eth.owner_of(chain.nft, token)
        answer = await pulse.http.get(
            f"/v1/nfts/ethereum/{chain.nft}/{token}", headers=pulse.keys.auth("read")
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["owner"] == truth, (token, answer.json()["owner"], truth)
    report = await asyncio.to_thread(verify, pulse.db)
    assert report.ok, report.differences[:5]


async def check_balances(pulse: RunningPulse, chain: Chain, tokens: tuple[int, ...]) -> None:
    """Each ERC-1155 id's holders and quantities in Pulse equal ``balanceOf`` on the chain."""
    wallets = (chain.alice, chain.bob, chain.carol)
    for token in tokens:
        answer = await pulse.http.get(
            f"/v1/nfts/ethereum/{chain.multi}/{token}", headers=pulse.keys.auth("read")
        )
        assert answer.status_code == 200, answer.text
        view = answer.json()
        held = {h["wallet"]: h["quantity"] for h in view["balances"]["top_holders"]}
        truth = {
            w: await chain.eth.view(chain.multi, "balanceOf(address,uint256)", w, token, returns="uint256")
            for w in wallets
        }
        assert {w: held.get(w, 0) for w in wallets} == truth, (token, view["balances"])
        assert view["owner"] is None and view["balances"]["supply"] == sum(truth.values())
        assert view["balances"]["holders_count"] == sum(1 for q in truth.values() if q > 0)
    report = await asyncio.to_thread(verify, pulse.db)
    assert report.ok, report.differences[:5]


async def test_follower_keeps_pulse_equal_to_the_chain(pulse: RunningPulse, chain: Chain) -> None:
    eth, c = chain.eth, chain
    settings = pulse.settings.model_copy(
        update={"chain_rpc_url": eth.url, "chain_confirmations": 0, "chain_contracts": f"{c.nft},{c.multi}"}
    )
    follower = Follower.from_settings(settings, pulse.db, batch_blocks=3)
    try:
        await follower.step(start_block=1)  # the deployments: no NFT logs yet

        for token in (1, 2, 3):
            await eth.send(c.alice, c.nft, calldata("mint(address,uint256)", c.alice, token))
        await eth.send(c.alice, c.multi, calldata("mint(address,uint256,uint256)", c.alice, 7, 10))
        await settle(pulse, follower)
        await check_owners(pulse, c, range(1, 4))

        await eth.send(c.alice, c.nft, calldata("transferFrom(address,address,uint256)", c.alice, c.bob, 1))
        batch = calldata(
            "safeBatchTransferFrom(address,address,uint256[],uint256[])", c.alice, c.bob, [7], [4]
        )
        await eth.send(c.alice, c.multi, batch)
        await settle(pulse, follower)
        await check_owners(pulse, c, range(1, 4))
        # The batch's entry is an event of its own (id: the log's and its position), with its quantity.
        (entry,) = [
            e
            for e in (await asyncio.to_thread(_chain_events, pulse))
            if e.contract == c.multi and e.type == "transfer"
        ]
        assert entry.data["quantity"] == 4 and entry.external_id.endswith(":0")
        await check_balances(pulse, c, (7,))

        await eth.send(c.alice, c.nft, calldata("refresh(uint256)", 2))
        await eth.send(c.alice, c.nft, calldata("refreshRange(uint256,uint256)", 1, 3))
        await eth.send(c.alice, c.nft, calldata("burn(uint256)", 3))
        await settle(pulse, follower)
        await check_owners(pulse, c, range(1, 4))
        assert follower.report.refreshes == 2

        # A sale through Seaport: bob buys alice's #2 for 1 ETH (2.5 % to the fee recipient).
        await eth.send(c.alice, c.nft, calldata("setApprovalForAll(address,bool)", SEAPORT_16, True))
        fill = calldata(
            "fulfil(address,uint256,address,address,uint256)", c.nft, 2, c.alice, c.fees, ETH // 40
        )
        await eth.send(c.bob, SEAPORT_16, fill, value=ETH)
        await settle(pulse, follower)
        await check_owners(pulse, c, range(1, 4))
        nft = (await pulse.http.get(f"/v1/nfts/ethereum/{c.nft}/2", headers=pulse.keys.auth("read"))).json()
        sale = nft["last_sale"]
        assert (sale["price"], sale["currency"], sale["seller"], sale["buyer"]) == (
            "1",
            "ETH",
            c.alice,
            c.bob,
        )

        # ERC-1155 in quantities: another id, a batch of both ids, a single transfer and a burn. Pulse's
        # balances then equal balanceOf on the chain, wallet by wallet.
        await eth.send(c.alice, c.multi, calldata("mint(address,uint256,uint256)", c.alice, 8, 5))
        both = calldata(
            "safeBatchTransferFrom(address,address,uint256[],uint256[])", c.alice, c.carol, [7, 8], [2, 3]
        )
        await eth.send(c.alice, c.multi, both)
        await eth.send(
            c.bob, c.multi, calldata("transfer(address,address,uint256,uint256)", c.bob, c.carol, 7, 1)
        )
        await eth.send(c.carol, c.multi, calldata("burn(address,uint256,uint256)", c.carol, 8, 1))
        await settle(pulse, follower)
        await check_balances(pulse, c, (7, 8))

        # Reading every block again (a backfill over the followed range) adds nothing.
        before = sum(event_log.status_counts(pulse.db).values())
        report = await follower.backfill(1, await eth.head())
        assert report.duplicates > 0 and sum(event_log.status_counts(pulse.db).values()) == before
        await check_balances(pulse, c, (7, 8))
        saved = checkpoints.checkpoint(pulse.db, "ethereum")
        assert saved is not None and saved.block_number == await eth.head()
    finally:
        await follower.aclose()


def _chain_events(pulse: RunningPulse) -> list[EventRecord]:
    with pulse.db.read() as session:
        return list(session.exec(select(EventRecord).where(col(EventRecord.source) == "chain")))


async def test_pulse_follow_command_backfills_then_follows(chain: Chain, tmp_path: Path) -> None:
    """The command itself: a backfill (progress bar, summary, checkpoint untouched), then live following
    from the checkpoint-less start until SIGTERM."""
    eth, c = chain.eth, chain
    for token in (1, 2):
        await eth.send(c.alice, c.nft, calldata("mint(address,uint256)", c.alice, token))
    db = Database(f"sqlite:///{tmp_path / 'pulse.db'}")
    schema.upgrade(db)
    env = {
        **os.environ,
        "PULSE_DATABASE_URL": db.url,
        "PULSE_CHAIN_RPC_URL": eth.url,
        "PULSE_CHAIN_CONTRACTS": c.nft,
        "PULSE_CHAIN_CONFIRMATIONS": "0",
    }
    pulse_cli = str(Path(sys.executable).with_name("pulse"))
    head = await eth.head()
    done = await asyncio.to_thread(
        subprocess.run,
        [pulse_cli, "follow", "--from-block", "1", "--to-block", str(head)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "2 event(s) accepted, 0 already known" in done.stdout
    assert checkpoints.checkpoint(db, "ethereum") is None  # a backfill leaves the checkpoint alone

    live = await asyncio.create_subprocess_exec(
        pulse_cli, "follow", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        await eth.send(c.alice, c.nft, calldata("transferFrom(address,address,uint256)", c.alice, c.bob, 1))
        deadline = asyncio.get_running_loop().time() + 30
        while (
            saved := checkpoints.checkpoint(db, "ethereum")
        ) is None or saved.block_number < await eth.head():
            assert live.returncode is None, await live.communicate()
            assert asyncio.get_running_loop().time() < deadline, "the follower did not catch up"
            await asyncio.sleep(0.2)
        live.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(live.wait(), 10) == 0
    finally:
        if live.returncode is None:
            live.kill()
            await live.wait()
    db.dispose()


async def send_fixed(eth: Eth, sender: str, to: str, data: str) -> dict[str, Any]:
    """A legacy transaction with every field fixed, so that sending it again after evm_revert (same nonce)
    is the same signed transaction, with the same hash."""
    tx = {"from": sender, "to": to, "data": data, "gas": hex(300_000), "gasPrice": hex(50 * 10**9)}
    tx_hash = await eth.call("eth_sendTransaction", tx)
    for _ in range(200):
        receipt = await eth.call("eth_getTransactionReceipt", tx_hash)
        if receipt is not None:
            return receipt  # type: ignore[no-any-return]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no receipt for {tx_hash}")


async def test_a_reorganisation_is_undone_exactly(pulse: RunningPulse, chain: Chain) -> None:
    """evm_snapshot, a branch Pulse follows (a transfer, a mint), evm_revert, then a longer different branch
    (the same transfer again, another one, empty blocks): the orphaned blocks' events are retracted, the new
    branch's ingested, and Pulse's owners equal ownerOf again, with `pulse verify` clean."""
    eth, c = chain.eth, chain
    settings = pulse.settings.model_copy(
        update={"chain_rpc_url": eth.url, "chain_confirmations": 0, "chain_contracts": c.nft}
    )
    follower = Follower.from_settings(settings, pulse.db, batch_blocks=2)
    try:
        await follower.step(start_block=1)
        for token in (1, 2, 3):
            await eth.send(c.alice, c.nft, calldata("mint(address,uint256)", c.alice, token))
        await settle(pulse, follower)
        await check_owners(pulse, c, range(1, 4))

        snapshot = await eth.call("evm_snapshot")
        move = calldata("transferFrom(address,address,uint256)", c.alice, c.bob, 1)
        first = await send_fixed(eth, c.alice, c.nft, move)
        await eth.send(c.alice, c.nft, calldata("mint(address,uint256)", c.alice, 4))
        await settle(pulse, follower)
        await check_owners(pulse, c, range(1, 5))
        old_head = await eth.head()

        assert await eth.call("evm_revert", snapshot) is True
        await eth.call("anvil_mine", "0x1")
        # The same signed transaction, included again one block later in the new branch.
        again = await send_fixed(eth, c.alice, c.nft, move)
        assert again["transactionHash"] == first["transactionHash"]
        await eth.send(c.alice, c.nft, calldata("transferFrom(address,address,uint256)", c.alice, c.carol, 2))
        await eth.call("anvil_mine", "0x3")
        assert await eth.head() > old_head
        await settle(pulse, follower)

        assert follower.report.retracted >= 1
        await check_owners(pulse, c, range(1, 4))
        assert await eth.owner_of(c.nft, 4) is None
        gone = await pulse.http.get(f"/v1/nfts/ethereum/{c.nft}/4", headers=pulse.keys.auth("read"))
        assert gone.status_code == 404, gone.text
        rows = await asyncio.to_thread(_chain_events, pulse)
        assert any(r.status == "retracted" for r in rows)
        # Included again in another block: a new event under an id naming that block, applied.
        (back,) = [r for r in rows if "@" in r.external_id]
        assert back.status == "processed" and back.external_id.endswith("@" + again["blockHash"][:18])
        assert all(r.status in ("processed", "retracted") for r in rows), [
            (r.external_id, r.status) for r in rows
        ]

        # Following on after the new branch: a later transfer lands as usual.
        await eth.send(c.bob, c.nft, calldata("transferFrom(address,address,uint256)", c.bob, c.carol, 1))
        await settle(pulse, follower)
        await check_owners(pulse, c, range(1, 4))
    finally:
        await follower.aclose()
