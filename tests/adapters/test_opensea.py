"""OpenSea's Stream API: payloads shaped as OpenSea documents them (stream-js ``types.ts`` and the Stream
API's example payloads) mapped to Pulse events, and the client against a local WebSocket server that speaks
Phoenix channels (join replies, heartbeats, pushed events, a dropped connection) with a running Pulse."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from nftpulse.adapters import opensea
from nftpulse.adapters.logs import DecodeError
from nftpulse.core.settings import Settings
from nftpulse.opensea import OpenSeaStream, stream_url
from nftpulse.store import events as event_log
from nftpulse.store import schema
from nftpulse.store.db import Database
from tests.conftest import RunningPulse

CONTRACT = "0x495f947276749ce646f68ac8c248420045cb7b5e"
SELLER = "0xa4ff2b59d72f76ee51051196d25e3998cdc579c6"
BUYER = "0x29469395eaf6f95920e59f858042f0e28d98a20b"
OTHER = "0x715af6b6c6e3aefb97f1f6811ce52db563b38896"
ZERO = "0x" + "0" * 40
ETH = {
    "address": ZERO,
    "decimals": 18,
    "eth_price": "1.000000000000000",
    "name": "Ether",
    "symbol": "ETH",
    "usd_price": "1287.160000000000082000",
}
USDC = {
    "address": "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
    "decimals": 6,
    "eth_price": "0.000776",
    "name": "USD Coin",
    "symbol": "USDC",
    "usd_price": "1.000000000000000",
}
KEY = "os-test-key-1234"


def item(token: int = 7) -> dict[str, Any]:
    return {
        "chain": {"name": "ethereum"},
        "metadata": {
            "animation_url": None,
            "image_url": "https://i.seadn.io/gae/frens.png",
            "metadata_url": None,
            "name": f"Devil Frens #{token}",
        },
        "nft_id": f"ethereum/{CONTRACT}/{token}",
        "permalink": f"https://opensea.io/assets/ethereum/{CONTRACT}/{token}",
    }


def message(event_type: str, body: dict[str, Any], second: int, slug: str = "boredfrens") -> dict[str, Any]:
    """A Phoenix push as the Stream API sends it: the event name and ``{event_type, sent_at, payload}``."""
    body = {
        "collection": {"slug": slug},
        "event_timestamp": f"2022-12-01T16:54:{second:02d}.974726+00:00",
    } | body
    return {
        "topic": f"collection:{slug}",
        "event": event_type,
        "payload": {
            "event_type": event_type,
            "sent_at": f"2022-12-01T16:54:{second:02d}.212517+00:00",
            "payload": body,
        },
        "ref": None,
    }


def order(maker: str, price: str, token: dict[str, Any] = ETH, **extra: Any) -> dict[str, Any]:
    return {
        "base_price": price,
        "expiration_date": "2022-12-02T16:54:22.000000+00:00",
        "maker": {"address": maker},
        "taker": None,
        "order_hash": "0xccbf2c8bc22d06fc16e118e5a865377d8b2fe4ea485cd0cb713899cca17d8964",
        "payment_token": token,
        "quantity": 1,
        **extra,
    }


def tx(n: int) -> dict[str, Any]:
    return {"hash": "0x" + f"{n:02x}" * 32, "timestamp": "2022-12-01T16:54:00.000000+00:00"}


MINT = message(
    "item_transferred",
    {
        "item": item(),
        "from_account": {"address": ZERO},
        "to_account": {"address": SELLER},
        "quantity": 1,
        "transaction": tx(1),
    },
    1,
)
METADATA = message(
    "item_metadata_updated",
    {
        "item": {
            **item(),
            "metadata": {
                **item()["metadata"],
                "traits": [
                    {
                        "trait_type": "Eyes",
                        "value": "Laser",
                        "display_type": None,
                        "max_value": None,
                        "trait_count": 12,
                        "order": None,
                    },
                    {
                        "trait_type": "Level",
                        "value": 3,
                        "display_type": "number",
                        "max_value": 10,
                        "trait_count": 0,
                        "order": None,
                    },
                ],
            },
        }
    },
    2,
)
LISTED = message(
    "item_listed",
    {
        "item": item(),
        "listing_date": "2022-12-01T16:54:22.000000+00:00",
        "listing_type": None,
        "is_private": False,
    }
    | order(SELLER, "5000000000000000"),
    3,
)
BID = message(
    "item_received_bid",
    {"item": item(), "created_date": "2022-12-01T16:54:04Z"} | order(OTHER, "4000000000000000"),
    4,
)
OFFER = message("item_received_offer", {"item": item()} | order(OTHER, "1500000000", USDC), 5)
COLLECTION_OFFER = message(
    "collection_offer",
    {
        "item": {},
        "asset_contract_criteria": {"address": CONTRACT},
        "collection_criteria": {"slug": "boredfrens"},
    }
    | order(
        BUYER,
        "348000000000000000",
        {**ETH, "symbol": "WETH", "address": "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"},
        quantity=3,
    ),
    6,
)
TRAIT_OFFER = message(
    "trait_offer",
    {
        "item": {},
        "asset_contract_criteria": {"address": CONTRACT},
        "collection_criteria": {"slug": "boredfrens"},
        "trait_criteria": {"trait_type": "Eyes", "trait_name": "Laser"},
    }
    | order(
        BUYER,
        "400000000000000000",
        {**ETH, "symbol": "WETH", "address": "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"},
    ),
    7,
)
SOLD = message(
    "item_sold",
    {
        "item": item(),
        "closing_date": "2022-12-01T16:54:08Z",
        "listing_type": None,
        "is_private": False,
        "maker": {"address": SELLER},
        "taker": {"address": BUYER},
        "order_hash": "0x" + "ab" * 32,
        "sale_price": "750000000000000000",
        "payment_token": ETH,
        "quantity": 1,
        "transaction": tx(2),
    },
    8,
)
MOVED = message(
    "item_transferred",
    {
        "item": item(),
        "from_account": {"address": BUYER},
        "to_account": {"address": OTHER},
        "quantity": 1,
        "transaction": tx(3),
    },
    9,
)
CANCELLED = message(
    "item_cancelled",
    {
        "item": item(8),
        "listing_type": None,
        "listing_date": "2022-12-01T16:54:00Z",
        "is_private": False,
        "transaction": tx(4),
    }
    | order(SELLER, "9000000000000000"),
    10,
)
INVALIDATED = message(
    "order_invalidate", {"item": {"nft_id": f"ethereum/{CONTRACT}/7"}, "order_hash": "0x01"}, 11
)


# -- mapping ----------------------------------------------------------------------------------------------


def mapped(msg: dict[str, Any]) -> Any:
    result = opensea.map_message(msg)
    assert result.event is not None, result.skipped
    return result.event


def test_each_documented_event_type_maps_to_a_pulse_event() -> None:
    listing = mapped(LISTED)
    assert (listing.type.value, listing.source, listing.chain, listing.contract, listing.token_id) == (
        "listing",
        "opensea",
        "ethereum",
        CONTRACT,
        "7",
    )
    assert listing.data["seller"] == SELLER and listing.data["price"] == {
        "amount": "0.005",
        "currency": "ETH",
    }
    assert listing.data["expires_at"].startswith("2022-12-02T16:54:22")
    assert listing.occurred_at.isoformat() == "2022-12-01T16:54:03.974726+00:00"

    sale = mapped(SOLD)
    assert sale.type.value == "sale" and (sale.data["from"], sale.data["to"]) == (SELLER, BUYER)
    assert sale.data["price"] == {"amount": "0.75", "currency": "ETH"} and sale.tx_hash == "0x" + "02" * 32

    mint, move = mapped(MINT), mapped(MOVED)
    assert (mint.type.value, mint.data["to"]) == ("mint", SELLER)
    assert (move.type.value, move.data["from"], move.data["to"]) == ("transfer", BUYER, OTHER)

    metadata = mapped(METADATA)
    assert metadata.type.value == "metadata_update"
    assert metadata.data["traits"] == {"Eyes": "Laser", "Level": 3}
    assert metadata.data["attributes"][1] == {"trait_type": "Level", "value": 3, "display_type": "number"}

    cancelled = mapped(CANCELLED)
    assert (cancelled.type.value, cancelled.token_id, cancelled.data["seller"]) == (
        "listing_cancelled",
        "8",
        SELLER,
    )

    bid, offer = mapped(BID), mapped(OFFER)
    assert (bid.type.value, bid.token_id, bid.data["bidder"]) == ("bid", "7", OTHER)
    assert offer.data["price"] == {"amount": "1500", "currency": "USDC"}, "units / 10**decimals in the token"

    collection = mapped(COLLECTION_OFFER)
    assert (collection.type.value, collection.token_id, collection.contract) == ("bid", None, CONTRACT)
    assert (
        collection.data["price"] == {"amount": "0.348", "currency": "WETH"}
        and collection.data["quantity"] == 3
    )

    trait = mapped(TRAIT_OFFER)
    assert trait.token_id is None and trait.data["trait"] == {"type": "Eyes", "value": "Laser"}
    assert trait.data["price"] == {"amount": "0.4", "currency": "WETH"}

    skipped = opensea.map_message(INVALIDATED)
    assert skipped.event is None and "order_invalidate" in str(skipped.skipped)


def test_an_accepted_offer_is_sold_by_its_taker() -> None:
    """In a filled offer the order's maker is the buyer: the Seaport order's offer holds the currency."""
    accepted = deepcopy(SOLD)
    body = accepted["payload"]["payload"]
    body["maker"], body["taker"] = {"address": BUYER}, {"address": SELLER}
    weth = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"
    body["protocol_data"] = {
        "parameters": {
            "offer": [{"itemType": 1, "token": weth, "startAmount": "750000000000000000"}],
            "consideration": [{"itemType": 2, "token": CONTRACT, "identifierOrCriteria": "7"}],
        }
    }
    sale = mapped(accepted)
    assert (sale.data["from"], sale.data["to"]) == (SELLER, BUYER)
    listing_filled = deepcopy(SOLD)
    listing_filled["payload"]["payload"]["protocol_data"] = {
        "parameters": {"offer": [{"itemType": 2, "token": CONTRACT, "identifierOrCriteria": "7"}]}
    }
    assert (mapped(listing_filled).data["from"], mapped(listing_filled).data["to"]) == (SELLER, BUYER)


def test_ids_are_derived_from_the_payload_and_ignore_moving_rates() -> None:
    again = deepcopy(LISTED)
    again["payload"]["sent_at"] = "2022-12-01T17:00:00Z"
    again["payload"]["payload"]["payment_token"]["usd_price"] = "1301.5"
    assert mapped(again).id == mapped(LISTED).id
    other = deepcopy(LISTED)
    other["payload"]["payload"]["base_price"] = "6000000000000000"
    assert mapped(other).id != mapped(LISTED).id
    ids = [
        mapped(m).id for m in (MINT, METADATA, LISTED, BID, OFFER, COLLECTION_OFFER, TRAIT_OFFER, SOLD, MOVED)
    ]
    assert len(set(ids)) == len(ids) and all(len(i) <= 200 for i in ids)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.pop("maker"), "payload.maker.address"),
        (lambda b: b.update(base_price="0.5"), "payload.base_price"),
        (lambda b: b["payment_token"].update(decimals="18"), "payload.payment_token.decimals"),
        (lambda b: b["item"].update(nft_id="ethereum/0xnope/7"), "payload.item.nft_id"),
        (lambda b: b["maker"].update(address="0x1234"), "payload.maker.address"),
        (lambda b: b.update(base_price="1" + "0" * 40), "payload.base_price"),
    ],
)
def test_malformed_payloads_name_the_field(change: Any, field: str) -> None:
    bad = deepcopy(LISTED)
    change(bad["payload"]["payload"])
    with pytest.raises(DecodeError) as caught:
        opensea.map_message(bad)
    assert caught.value.field == field


def test_the_key_goes_in_the_token_query_parameter() -> None:
    url = stream_url("wss://stream-api.opensea.io/socket/websocket", "k&y")
    assert url == "wss://stream-api.opensea.io/socket/websocket?token=k%26y&vsn=1.0.0"


# -- the client against a local Phoenix server ------------------------------------------------------------

FIRST = [MINT, METADATA, LISTED, BID, OFFER]
#: After the reconnection the server sends the last two again (duplicates), then the rest.
SECOND = [BID, OFFER, COLLECTION_OFFER, TRAIT_OFFER, SOLD, MOVED, CANCELLED, INVALIDATED]


class PhoenixServer:
    """Speaks Phoenix channels v1 JSON: answers joins and heartbeats with ``phx_reply`` ok, pushes the
    connection's messages once a collection is joined, and drops the first connection after its pushes."""

    def __init__(self) -> None:
        self.connections = 0
        self.heartbeats = 0
        self.joins: list[str] = []
        self.tokens: list[str] = []
        self.pushed_all = asyncio.Event()

    def check(self, connection: ServerConnection, request: Request) -> Response | None:
        token = dict(p.split("=", 1) for p in request.path.partition("?")[2].split("&") if "=" in p).get(
            "token"
        )
        self.tokens.append(str(token))
        if token != KEY:
            return Response(403, "Forbidden", Headers(), b"invalid token")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        number = self.connections
        async for raw in ws:
            msg = orjson.loads(raw)
            reply = {
                "topic": msg["topic"],
                "event": "phx_reply",
                "payload": {"status": "ok", "response": {}},
                "ref": msg["ref"],
            }
            if msg["event"] == "heartbeat":
                assert msg["topic"] == "phoenix"
                self.heartbeats += 1
                await ws.send(orjson.dumps(reply).decode())
            elif msg["event"] == "phx_join":
                self.joins.append(msg["topic"])
                await ws.send(orjson.dumps(reply).decode())
                if msg["topic"] != "collection:boredfrens":
                    continue
                for push in FIRST if number == 1 else SECOND:
                    await ws.send(orjson.dumps(push).decode())
                if number == 1:
                    await asyncio.sleep(0.3)  # a heartbeat or two first
                    ws.transport.abort()  # dropped, not closed: no close frame
                    return
                self.pushed_all.set()


@contextlib.asynccontextmanager
async def phoenix_server() -> AsyncIterator[tuple[PhoenixServer, str]]:
    phoenix = PhoenixServer()
    async with serve(phoenix.handler, "127.0.0.1", 0, process_request=phoenix.check) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield phoenix, f"ws://127.0.0.1:{port}/socket/websocket"


async def test_stream_reconnects_and_ingests_each_event_once(pulse: RunningPulse) -> None:
    # The USDC offer is valued in ETH through a rate known before it.
    tick = {
        "id": "usdc-eth-1",
        "source": "market",
        "type": "price_tick",
        "occurred_at": "2022-12-01T00:00:00Z",
        "chain": "ethereum",
        "contract": CONTRACT,
        "data": {"pair": "USDC/ETH", "rate": "0.0008"},
    }
    assert (await pulse.post([tick])).status_code == 202
    async with phoenix_server() as (phoenix, url):
        settings = pulse.settings.model_copy(
            update={"opensea_api_key": SecretStr(KEY), "opensea_stream_url": url}
        )
        client = OpenSeaStream(
            settings, pulse.db, ["boredfrens", "otherfrens"], heartbeat_s=0.1, backoff_base_s=0.05
        )
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        await asyncio.wait_for(phoenix.pushed_all.wait(), timeout=30)
        expected = len(FIRST) + len(SECOND)
        for _ in range(300):
            if client.report.messages >= expected:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # heartbeats on the second connection
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    assert phoenix.connections == 2 and set(phoenix.tokens) == {KEY}
    assert phoenix.joins.count("collection:boredfrens") == 2 and "collection:otherfrens" in phoenix.joins
    assert phoenix.heartbeats >= 2
    report = client.report
    assert (report.connections, report.messages) == (2, expected)
    assert (report.accepted, report.duplicates, report.skipped, report.malformed) == (10, 2, 1, 0)

    ids = [mapped(m).id for m in (*FIRST, *SECOND[2:-1])]
    final = await pulse.wait_final([("opensea", i) for i in ids] + [("market", "usdc-eth-1")])
    assert set(final.values()) == {"processed"}, final
    assert sum(event_log.status_counts(pulse.db).values()) == 11

    nft = await pulse.http.get(f"/v1/nfts/ethereum/{CONTRACT}/7", headers=pulse.keys.auth("read"))
    assert nft.status_code == 200, nft.text
    view = nft.json()
    assert view["owner"] == OTHER
    assert view["traits"] == {"Eyes": "Laser", "Level": 3}
    assert view["last_sale"]["price"] == "0.75"


async def test_a_refused_key_is_retried_with_backoff(pulse: RunningPulse) -> None:
    async with phoenix_server() as (phoenix, url):
        settings = pulse.settings.model_copy(
            update={"opensea_api_key": SecretStr("wrong"), "opensea_stream_url": url}
        )
        client = OpenSeaStream(settings, pulse.db, ["boredfrens"], backoff_base_s=0.05, backoff_max_s=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        for _ in range(200):
            if len(phoenix.tokens) >= 3:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert len(phoenix.tokens) >= 3 and phoenix.connections == 0 and client.report.accepted == 0


async def test_pulse_stream_opensea_command(tmp_path: Path) -> None:
    """The command itself: it streams the collections it is given into the event log and stops cleanly
    on SIGTERM."""
    db = Database(f"sqlite:///{tmp_path / 'pulse.db'}")
    schema.upgrade(db)
    async with phoenix_server() as (phoenix, url):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        env |= {"PULSE_DATABASE_URL": db.url, "PULSE_OPENSEA_API_KEY": KEY, "PULSE_OPENSEA_STREAM_URL": url}
        pulse_cli = str(Path(sys.executable).with_name("pulse"))
        proc = await asyncio.create_subprocess_exec(
            pulse_cli,
            "stream",
            "opensea",
            "--collection",
            "boredfrens",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await asyncio.wait_for(phoenix.pushed_all.wait(), timeout=60)
            deadline = asyncio.get_running_loop().time() + 30
            while sum(event_log.status_counts(db).values()) < 10:
                assert proc.returncode is None, await proc.communicate()
                assert asyncio.get_running_loop().time() < deadline, event_log.status_counts(db)
                await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert phoenix.joins == ["collection:boredfrens", "collection:boredfrens"]
    assert sum(event_log.status_counts(db).values()) == 10
    db.dispose()


@pytest.mark.parametrize(
    "url", ["http://stream.example/socket", "ws://127.0.0.1:port/socket", "wss:///socket"]
)
def test_a_malformed_stream_url_is_refused_at_start(url: str) -> None:
    settings = Settings(opensea_api_key=SecretStr("os-secret-key"), opensea_stream_url=url)
    with pytest.raises(ValueError, match="PULSE_OPENSEA_STREAM_URL") as refused:
        OpenSeaStream(settings, Database("sqlite://"), ["boredfrens"])
    assert "os-secret-key" not in str(refused.value)
