"""The token metadata fetcher against anvil and a local HTTP server: mints without traits and ERC-4906
updates (a single token and a range) are enqueued by the follower; the fetcher reads ``tokenURI`` (ERC-721)
and ``uri`` with ``{id}`` (ERC-1155, through an ``ipfs://`` gateway) with eth_call, fetches the JSON
(retrying a 503), and a running Pulse then shows the traits and rarity. Plus the pure parts and the SSRF
guard without a chain."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
import pytest
import pytest_asyncio
from sqlmodel import col, select

from nftpulse.adapters.chain import Rpc
from nftpulse.adapters.logs import Decoded, MetadataRefresh
from nftpulse.core.settings import Settings
from nftpulse.domain.events import Event
from nftpulse.follow import Follower
from nftpulse.metadata import FetchError, MetadataFetcher, attributes_of, gateway_url, requests_for
from nftpulse.store import events as event_log
from nftpulse.store import metadata_fetches, schema
from nftpulse.store.db import Database
from nftpulse.store.metadata_fetches import FetchRequest
from nftpulse.store.models import EventRecord
from tests.chain.anvil import Eth, anvil, calldata, compile_contracts, missing_tools
from tests.conftest import RunningPulse, local_http_server
from tests.ports import free_port

if os.environ.get("CI") and missing_tools():
    raise RuntimeError(f"CI runs the chain tests: {missing_tools()}")
chain_only = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))


class MetadataHost(BaseHTTPRequestHandler):
    """Serves ``docs`` as JSON; a path in ``failing`` answers 503 that many times first."""

    docs: ClassVar[dict[str, Any]] = {}
    failing: ClassVar[dict[str, int]] = {}
    requests: ClassVar[list[str]] = []
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.requests.append(self.path)
            if self.failing.get(self.path, 0) > 0:
                self.failing[self.path] -= 1
                self.send_response(503)
                self.end_headers()
                return
            doc = self.docs.get(self.path)
        if doc is None:
            self.send_response(404)
            self.end_headers()
            return
        body = orjson.dumps(doc)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def host() -> Iterator[str]:
    MetadataHost.docs, MetadataHost.failing, MetadataHost.requests = {}, {}, []
    with local_http_server(MetadataHost) as base:
        yield base


def token_doc(name: str, **traits: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "ipfs://bafyimage/1.png",
        "attributes": [{"trait_type": k, "value": v} for k, v in traits.items()]
        + [
            {"value": "no trait type: left out"},
            {"trait_type": "Level", "value": 2, "display_type": "number"},
        ],
    }


# -- without a chain --------------------------------------------------------------------------------------


def test_requests_for_mints_without_traits_and_each_token_of_an_update() -> None:
    at = datetime(2026, 11, 30, tzinfo=UTC)
    contract = "0x" + "ab" * 20
    mint = Event(
        id="m",
        source="chain",
        type="mint",
        occurred_at=at,
        chain="ethereum",
        contract=contract,
        token_id="1",
        block_number=5,
        log_index=0,
        data={"to": "0x" + "cd" * 20},
    )
    with_traits = mint.model_copy(update={"token_id": "2", "data": {**mint.data, "traits": {"a": 1}}})
    again = mint.model_copy(update={"id": "m2", "log_index": 1})  # more of the same ERC-1155 id
    decoded = Decoded(
        events=[mint, with_traits, again],
        refreshes=[MetadataRefresh("ethereum", contract, 10, 10**6, 9, 3, "0x" + "11" * 32)],
    )
    wanted = requests_for(decoded, max_range=4, now=at)
    assert [(r.token_id, r.block_number, r.log_index, r.reason) for r in wanted] == [
        ("1", 5, 0, "mint"),
        *[(str(t), 9, 3, "update") for t in range(10, 14)],  # the range is cut at max_range
    ]
    # A range wider than max_range is the tokens Pulse knows in it.
    asked: list[tuple[Any, ...]] = []

    def known(*args: Any) -> list[int]:
        asked.append(args)
        return [11, 500]

    wanted = requests_for(decoded, max_range=4, now=at, known=known)
    assert [r.token_id for r in wanted if r.reason == "update"] == ["11", "500"]
    assert asked == [("ethereum", contract, 10, 10**6, 4)]


def test_attributes_are_kept_to_what_an_event_holds() -> None:
    doc = {
        "attributes": [
            {"trait_type": "Eyes", "value": "Laser"},
            {"trait_type": "Power", "value": float("inf")},
            {"trait_type": "Nested", "value": {"no": "objects"}},
            {"trait_type": "Long", "value": "x" * 5000},
            {"trait_type": "Boost", "value": 5, "display_type": "boost_number"},
        ]
    }
    attrs = attributes_of(doc)
    assert [a["trait_type"] for a in attrs] == ["Eyes", "Long", "Boost"]
    assert len(attrs[1]["value"]) == 1000 and attrs[2]["display_type"] == "boost_number"
    assert attributes_of({"name": "no attributes"}) == []
    with pytest.raises(FetchError):
        attributes_of(["not", "an", "object"])


def test_ipfs_uris_go_through_the_gateway() -> None:
    assert (
        gateway_url("ipfs://bafy/1.json", "https://gw.example/ipfs/") == "https://gw.example/ipfs/bafy/1.json"
    )
    assert (
        gateway_url("ipfs://ipfs/bafy/1.json", "https://gw.example/ipfs")
        == "https://gw.example/ipfs/bafy/1.json"
    )
    assert gateway_url("https://a.example/1", "https://gw.example/ipfs/") == "https://a.example/1"


async def test_private_hosts_are_refused_and_data_uris_read_in_place(host: str) -> None:
    MetadataHost.docs["/meta/1.json"] = token_doc("one", Eyes="Laser")
    fetcher = MetadataFetcher(Settings(), Database("sqlite://"), Rpc("http://127.0.0.1:9"))
    try:
        with pytest.raises(FetchError) as refused:
            await fetcher.document(f"{host}/meta/1.json", fresh=True)
        assert refused.value.permanent and "refused URL" in refused.value.reason
        with pytest.raises(FetchError) as scheme:
            await fetcher.document("ar://abc", fresh=True)
        assert scheme.value.permanent
        inline = (
            "data:application/json;base64,"
            + base64.b64encode(orjson.dumps(token_doc("two", Eyes="Gold"))).decode()
        )
        assert (await fetcher.document(inline, fresh=True))[0] == {"trait_type": "Eyes", "value": "Gold"}
    finally:
        await fetcher.aclose()
    assert MetadataHost.requests == [], "a refused URL is never requested"


def test_pulse_metadata_status_and_retry(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'pulse.db'}")
    schema.upgrade(db)
    at = datetime(2026, 11, 30, tzinfo=UTC)
    contract = "0x" + "ab" * 20
    metadata_fetches.enqueue(db, [FetchRequest("ethereum", contract, "7", 5, 0, at, "mint")], at)
    (due,) = metadata_fetches.due(db, at, 10)
    metadata_fetches.fail(db, due.id, 3, "HTTP 404 from https://meta.example/7.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")} | {"PULSE_DATABASE_URL": db.url}
    cli = str(Path(sys.executable).with_name("pulse"))
    status = subprocess.run([cli, "metadata", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines() == [
        "0 pending, 1 failed",
        f"ethereum {contract} 7: HTTP 404 from https://meta.example/7.json",
    ]
    other = subprocess.run(
        [cli, "metadata", "retry", "--contract", "0x" + "cd" * 20], env=env, capture_output=True, text=True
    )
    assert other.stdout.strip() == "0 request(s) queued again"
    retried = subprocess.run([cli, "metadata", "retry"], env=env, capture_output=True, text=True, timeout=60)
    assert retried.returncode == 0 and retried.stdout.strip() == "1 request(s) queued again"
    assert metadata_fetches.counts(db) == {"pending": 1}
    db.dispose()


# -- against anvil ----------------------------------------------------------------------------------------


@dataclass
class Chain:
    eth: Eth
    nft: str
    multi: str
    alice: str


@pytest_asyncio.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    if missing_tools():
        pytest.skip(str(missing_tools()))
    code = await asyncio.to_thread(compile_contracts, tmp_path / "solc")
    with anvil(free_port()) as url:
        async with httpx.AsyncClient(timeout=30) as http:
            eth = Eth(url, http)
            alice = (await eth.accounts())[0]
            nft = await eth.deploy(alice, code["TestERC721"])
            multi = await eth.deploy(alice, code["TestERC1155"])
            yield Chain(eth, nft, multi, alice)


async def settle(pulse: RunningPulse, follower: Follower, fetcher: MetadataFetcher) -> None:
    while await follower.step(start_block=None) is not None:
        pass
    await fetcher.drain(limit_s=60)
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        counts = event_log.status_counts(pulse.db)
        if not {"received", "dispatched", "applied"} & {k for k, v in counts.items() if v}:
            assert not counts.get("failed"), counts
            return
        assert asyncio.get_running_loop().time() < deadline, counts
        await asyncio.sleep(0.1)


def metadata_rows(db: Database) -> list[EventRecord]:
    with db.read() as session:
        return list(
            session.execute(select(EventRecord).where(col(EventRecord.source) == "metadata")).scalars()
        )


async def nft_view(pulse: RunningPulse, contract: str, token: int) -> dict[str, Any]:
    answer = await pulse.http.get(f"/v1/nfts/ethereum/{contract}/{token}", headers=pulse.keys.auth("read"))
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


@chain_only
async def test_fetcher_brings_traits_from_token_uris(pulse: RunningPulse, chain: Chain, host: str) -> None:
    eth, c = chain.eth, chain
    settings = pulse.settings.model_copy(
        update={
            "chain_rpc_url": eth.url,
            "chain_confirmations": 0,
            "chain_contracts": f"{c.nft},{c.multi}",
            "metadata_allow_private": True,
            "metadata_fetch_attempts": 3,
            "metadata_fetch_max_range": 10,
            "ipfs_gateway": f"{host}/ipfs/",
        }
    )
    follower = Follower.from_settings(settings, pulse.db, batch_blocks=20)
    fetcher = MetadataFetcher(settings, pulse.db, Rpc(eth.url), retry_base_s=0.05, poll_s=0.05)
    five = f"{5:064x}"
    MetadataHost.docs.update(
        {
            "/meta/1.json": token_doc("one", Eyes="Laser", Hat="Crown"),
            "/meta/2.json": token_doc("two", Eyes="Laser", Hat="Cap"),
            f"/ipfs/bafytest/{five}.json": token_doc("five", Rank="Gold"),
        }
    )
    MetadataHost.failing["/meta/2.json"] = 1  # a 503 first: retried
    try:
        await follower.step(start_block=1)
        await eth.send(c.alice, c.nft, calldata("setBaseURI(string)", f"{host}/meta/"))
        await eth.send(c.alice, c.multi, calldata("setURI(string)", "ipfs://bafytest/{id}.json"))
        for token in (1, 2, 3):  # 3 has no document: 404 until the attempts run out
            await eth.send(c.alice, c.nft, calldata("mint(address,uint256)", c.alice, token))
        await eth.send(c.alice, c.multi, calldata("mint(address,uint256,uint256)", c.alice, 5, 10))
        await settle(pulse, follower, fetcher)

        one, two = await nft_view(pulse, c.nft, 1), await nft_view(pulse, c.nft, 2)
        assert one["traits"] == {"Eyes": "Laser", "Hat": "Crown", "Level": 2}
        assert two["traits"] == {"Eyes": "Laser", "Hat": "Cap", "Level": 2}
        assert one["rarity"] is not None and two["rarity"] is not None
        assert (await nft_view(pulse, c.multi, 5))["traits"] == {"Rank": "Gold", "Level": 2}
        assert MetadataHost.requests.count("/meta/2.json") == 2, "the 503 was retried"
        assert MetadataHost.requests.count("/meta/3.json") == 3
        failed = metadata_fetches.failures(pulse.db)
        assert [(f[1], f[2]) for f in failed] == [(c.nft, "3")] and "HTTP 404" in failed[0][3]
        (stored,) = [r for r in metadata_rows(pulse.db) if r.contract == c.nft and r.token_id == "1"]
        assert stored.data["uri"] == f"{host}/meta/1.json"
        assert stored.external_id == f"ethereum:{c.nft}:1:{stored.block_number}:{stored.log_index}"

        # ERC-4906: new documents, a range update and a single one; updates never take the cache.
        MetadataHost.docs["/meta/1.json"] = token_doc("one", Eyes="Gold", Hat="Crown")
        MetadataHost.docs["/meta/2.json"] = token_doc("two", Eyes="Gold", Hat="Crown")
        await eth.send(c.alice, c.nft, calldata("refreshRange(uint256,uint256)", 1, 2))
        await settle(pulse, follower, fetcher)
        assert (await nft_view(pulse, c.nft, 1))["traits"] == {"Eyes": "Gold", "Hat": "Crown", "Level": 2}
        assert (await nft_view(pulse, c.nft, 2))["traits"] == {"Eyes": "Gold", "Hat": "Crown", "Level": 2}

        MetadataHost.docs["/meta/2.json"] = token_doc("two", Eyes="Pearl", Hat="Crown")
        await eth.send(c.alice, c.nft, calldata("refresh(uint256)", 2))
        # Read twice (a re-read range): asked and ingested once.
        head = await eth.head()
        await follower.backfill(head, head)
        await settle(pulse, follower, fetcher)
        assert (await nft_view(pulse, c.nft, 2))["traits"]["Eyes"] == "Pearl"
        assert MetadataHost.requests.count("/meta/2.json") == 4
        assert metadata_fetches.counts(pulse.db) == {"failed": 1}

        # "Every token" (0 .. 2**256 - 1), wider than the range allowed: the tokens Pulse knows, 1 to 3.
        MetadataHost.docs["/meta/1.json"] = token_doc("one", Eyes="Silver", Hat="Crown")
        await eth.send(c.alice, c.nft, calldata("refreshRange(uint256,uint256)", 0, 2**256 - 1))
        await settle(pulse, follower, fetcher)
        assert (await nft_view(pulse, c.nft, 1))["traits"]["Eyes"] == "Silver"
        assert MetadataHost.requests.count("/meta/2.json") == 5
        assert metadata_fetches.counts(pulse.db) == {"failed": 2}, "token 3 once more, no other"

        # The cause fixed (token 3's document is there now): what failed is queued again and succeeds.
        MetadataHost.docs["/meta/3.json"] = token_doc("three", Eyes="Laser", Hat="Fez")
        assert metadata_fetches.retry_failed(pulse.db, datetime.now(UTC), c.nft) == 2
        await settle(pulse, follower, fetcher)
        assert (await nft_view(pulse, c.nft, 3))["traits"] == {"Eyes": "Laser", "Hat": "Fez", "Level": 2}
        assert metadata_fetches.counts(pulse.db) == {}
    finally:
        await follower.aclose()
        await fetcher.rpc.aclose()
        await fetcher.aclose()
