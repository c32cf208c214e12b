"""Signed webhooks from sources, through the API on SQLite and Postgres: Alchemy Notify deliveries shaped as
Alchemy documents them (NFT Activity and Address Activity), and a producer posting Pulse's schema signed
with Standard Webhooks (signed here by the ``standardwebhooks`` package, not by Pulse's own code)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from standardwebhooks.webhooks import Webhook

from nftpulse.adapters import alchemy
from nftpulse.adapters.logs import TRANSFER, TRANSFER_BATCH, event_id
from nftpulse.api.app import create_app
from nftpulse.core.settings import Settings
from nftpulse.store import events as event_log
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database

KEYS = ("whsk_first_webhook_key", "whsk_second_webhook_key")
FRAUD_SECRET = "whsec_" + base64.b64encode(b"fraud-detector-secret-bytes!").decode()
BAYC = "0xbc4ca0eda7647a8ab7c2061c2e118a18a936f13d"
ITEMS = "0x88b48f654c30e99bc2e4a1559b4dcf1ad93fa656"
SELLER = "0x715af6b6c6e3aefb97f1f6811ce52db563b38896"
BUYER = "0x29469395eaf6f95920e59f858042f0e28d98a20b"
TX = "0xe6385e8896aa5de1147f8d324ebeb79640f7a0e6fc87f3685d5e39a531f14ea4"
TX2 = "0x" + "ab" * 32


def pad(address: str) -> str:
    return "0x" + address[2:].rjust(64, "0")


def nft_activity() -> dict[str, Any]:
    """An NFT Activity delivery as in Alchemy's documentation: one ERC-721 transfer and one ERC-1155 batch."""
    return {
        "webhookId": "wh_5dzeea0ikdnzgq6w",
        "id": "whevt_awxsragnkmh182tl",
        "createdAt": "2024-05-31T21:38:13.912Z",
        "type": "NFT_ACTIVITY",
        "event": {
            "network": "ETH_MAINNET",
            "activity": [
                {
                    "fromAddress": SELLER,
                    "toAddress": BUYER,
                    "contractAddress": BAYC,
                    "blockNum": "0x1310fe1",
                    "hash": TX,
                    "erc721TokenId": "0x1eeb",
                    "category": "erc721",
                    "log": {
                        "address": BAYC,
                        "topics": [TRANSFER, pad(SELLER), pad(BUYER), "0x" + "1eeb".rjust(64, "0")],
                        "data": "0x",
                        "blockNumber": "0x1310fe1",
                        "transactionHash": TX,
                        "transactionIndex": "0x5e",
                        "blockHash": "0x" + "cd" * 32,
                        "logIndex": "0x10d",
                        "removed": False,
                    },
                },
                {
                    "fromAddress": SELLER,
                    "toAddress": BUYER,
                    "contractAddress": ITEMS,
                    "blockNum": "0x1310fe2",
                    "hash": TX2,
                    "erc1155Metadata": [
                        {"tokenId": "0x2", "value": "0x3"},
                        {"tokenId": "0x5", "value": "0x1"},
                    ],
                    "category": "erc1155",
                    "log": {
                        "address": ITEMS,
                        "topics": [TRANSFER_BATCH, pad(SELLER), pad(SELLER), pad(BUYER)],
                        "data": "0x",
                        "blockNumber": "0x1310fe2",
                        "transactionHash": TX2,
                        "transactionIndex": "0x1",
                        "blockHash": "0x" + "ce" * 32,
                        "logIndex": "0x7",
                        "removed": False,
                    },
                },
            ],
        },
    }


def address_activity() -> dict[str, Any]:
    """An Address Activity delivery: an ETH payment (not NFT data) and an ERC-721 mint."""
    body = nft_activity()
    body["type"] = "ADDRESS_ACTIVITY"
    mint = body["event"]["activity"][0]
    del mint["contractAddress"]
    mint.update(
        fromAddress="0x" + "0" * 40,
        rawContract={"rawValue": "0x", "address": BAYC},
        erc721TokenId="0x01",
        log={**mint["log"], "logIndex": "0x3"},
    )
    eth = {
        "fromAddress": BUYER,
        "toAddress": SELLER,
        "blockNum": "0x1310fe1",
        "hash": TX,
        "value": 1.5,
        "asset": "ETH",
        "category": "external",
        "rawContract": {"rawValue": "0x14d1120d7b160000", "decimals": 18},
    }
    body["event"]["activity"] = [eth, mint]
    return body


@pytest_asyncio.fixture
async def http(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        alchemy_signing_key=",".join(KEYS), source_secrets=f"fraudwatch={FRAUD_SECRET},other=whsec_b3RoZXI="
    )
    app = create_app(settings, db, NoCache(), None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://pulse.test") as client:
        yield client


def signed(body: bytes, key: str = KEYS[1]) -> dict[str, str]:
    return {"X-Alchemy-Signature": alchemy.sign(body, key), "Content-Type": "application/json"}


def count(db: Database) -> int:
    return sum(event_log.status_counts(db).values())


async def test_alchemy_nft_activity_is_ingested_once(http: httpx.AsyncClient, db: Database) -> None:
    raw = orjson.dumps(nft_activity())
    first = await http.post("/v1/sources/alchemy", content=raw, headers=signed(raw))
    assert first.status_code == 202, first.text
    assert first.json()["accepted"] == 3 and first.json()["duplicates"] == 0
    ids = {ref["id"] for ref in first.json()["accepted_ids"]}
    assert ids == {
        event_id("ethereum", TX, 0x10D),
        event_id("ethereum", TX2, 7, 0),
        event_id("ethereum", TX2, 7, 1),
    }
    row = event_log.get(db, "chain", event_id("ethereum", TX, 0x10D))
    assert row is not None and row.type == "transfer" and row.token_id == str(0x1EEB)
    assert (row.block_number, row.log_index, row.contract) == (0x1310FE1, 0x10D, BAYC)
    assert row.occurred_at.replace(tzinfo=UTC) == datetime(2024, 5, 31, 21, 38, 13, 912000, tzinfo=UTC)
    batch = event_log.get(db, "chain", event_id("ethereum", TX2, 7, 0))
    assert batch is not None and batch.data["quantity"] == 3
    # Alchemy retries a delivery it thinks failed: nothing changes.
    again = await http.post("/v1/sources/alchemy", content=raw, headers=signed(raw, KEYS[0]))
    assert again.status_code == 202 and again.json()["accepted"] == 0 and again.json()["duplicates"] == 3
    assert count(db) == 3


async def test_alchemy_removed_log_is_a_retraction_of_its_event(
    http: httpx.AsyncClient, db: Database
) -> None:
    raw = orjson.dumps(nft_activity())
    assert (await http.post("/v1/sources/alchemy", content=raw, headers=signed(raw))).json()["accepted"] == 3
    # The same logs re-sent with removed: true (their block left the chain), in a delivery of its own.
    body = nft_activity()
    body["id"] = "whevt_removed"
    for item in body["event"]["activity"]:
        item["log"]["removed"] = True
    removed = orjson.dumps(body)
    answer = await http.post("/v1/sources/alchemy", content=removed, headers=signed(removed))
    assert answer.status_code == 202 and answer.json()["accepted"] == 3, answer.text
    for original in (
        event_id("ethereum", TX, 0x10D),
        event_id("ethereum", TX2, 7, 0),
        event_id("ethereum", TX2, 7, 1),
    ):
        row = event_log.get(db, "chain", original + "~retracted")
        assert row is not None and row.type == "retraction", original
        assert row.data["retracts"] == {"source": "chain", "id": original}
    # Re-sent again (Alchemy retries): one retraction per event still.
    again = await http.post("/v1/sources/alchemy", content=removed, headers=signed(removed))
    assert again.json()["accepted"] == 0 and count(db) == 6
    # The original delivery retried late (the retracted logs, from their block): duplicates still.
    late = await http.post("/v1/sources/alchemy", content=raw, headers=signed(raw))
    assert late.json()["accepted"] == 0 and count(db) == 6
    # The transaction included again in the new branch (another block): a new event, not the retracted one.
    body = nft_activity()
    body["id"], body["event"]["activity"] = "whevt_again", body["event"]["activity"][:1]
    body["event"]["activity"][0]["log"]["blockHash"] = "0x" + "ee" * 32
    back = orjson.dumps(body)
    answer = await http.post("/v1/sources/alchemy", content=back, headers=signed(back))
    original = event_id("ethereum", TX, 0x10D)
    assert [ref["id"] for ref in answer.json()["accepted_ids"]] == [original + "@0x" + "ee" * 8]
    # And that one removed in turn: its retraction names it, not the original.
    body["id"] = "whevt_again_removed"
    body["event"]["activity"][0]["log"]["removed"] = True
    gone = orjson.dumps(body)
    answer = await http.post("/v1/sources/alchemy", content=gone, headers=signed(gone))
    (ref,) = answer.json()["accepted_ids"]
    row = event_log.get(db, "chain", ref["id"])
    assert row is not None and row.data["retracts"]["id"] == original + "@0x" + "ee" * 8


async def test_alchemy_address_activity_keeps_only_nfts(http: httpx.AsyncClient, db: Database) -> None:
    raw = orjson.dumps(address_activity())
    answer = await http.post("/v1/sources/alchemy", content=raw, headers=signed(raw))
    assert answer.status_code == 202 and answer.json()["accepted"] == 1
    row = event_log.get(db, "chain", event_id("ethereum", TX, 3))
    assert row is not None and row.type == "mint" and row.data["to"] == BUYER


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Alchemy-Signature": "00" * 32},
        {"X-Alchemy-Signature": alchemy.sign(b"another body", KEYS[0])},
        {"X-Alchemy-Signature": alchemy.sign(orjson.dumps(nft_activity()), "not-a-configured-key")},
    ],
)
async def test_alchemy_unsigned_or_wrongly_signed_is_401(
    http: httpx.AsyncClient, db: Database, headers: dict[str, str]
) -> None:
    answer = await http.post("/v1/sources/alchemy", content=orjson.dumps(nft_activity()), headers=headers)
    assert answer.status_code == 401 and "X-Alchemy-Signature" in answer.json()["detail"]
    assert count(db) == 0


async def test_alchemy_is_refused_when_no_key_is_configured(db: Database) -> None:
    app = create_app(Settings(), db, NoCache(), None)
    raw = orjson.dumps(nft_activity())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        answer = await client.post("/v1/sources/alchemy", content=raw, headers=signed(raw))
    assert answer.status_code == 401 and "PULSE_ALCHEMY_SIGNING_KEY" in answer.json()["detail"]


def _broken_token(body: dict[str, Any]) -> None:
    body["event"]["activity"][1]["erc1155Metadata"][1]["value"] = "three"


@pytest.mark.parametrize(
    ("breaks", "field"),
    [
        (lambda b: b.pop("createdAt"), "createdAt"),
        (lambda b: b["event"].pop("activity"), "event.activity"),
        (lambda b: b["event"]["activity"][0]["log"].update(logIndex=None), "event.activity.0.log.logIndex"),
        (lambda b: b["event"]["activity"][0].update(toAddress="0x12"), "event.activity.0.toAddress"),
        (_broken_token, "event.activity.1.erc1155Metadata.1.value"),
    ],
)
async def test_alchemy_malformed_is_422_naming_the_field_and_nothing_ingested(
    http: httpx.AsyncClient, db: Database, breaks: Any, field: str
) -> None:
    body = nft_activity()
    breaks(body)
    raw = orjson.dumps(body)
    answer = await http.post("/v1/sources/alchemy", content=raw, headers=signed(raw))
    assert answer.status_code == 422, answer.text
    assert [e["field"] for e in answer.json()["errors"]] == [field]
    assert count(db) == 0  # the first, valid activity was not ingested either


def finding(source: str = "fraudwatch") -> dict[str, Any]:
    return {
        "id": "finding-7",
        "source": source,
        "type": "fraud_finding",
        "occurred_at": "2026-11-27T08:00:00Z",
        "chain": "ethereum",
        "contract": BAYC,
        "data": {"finding_id": "f-7", "kind": "wash_trading", "severity": "high", "wallets": [SELLER]},
    }


def standard_headers(body: bytes, secret: str = FRAUD_SECRET, at: float | None = None) -> dict[str, str]:
    stamp = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC)
    signature = Webhook(secret).sign("msg_1", stamp, body.decode())
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


async def test_standard_webhooks_source_ingests_its_own_events(http: httpx.AsyncClient, db: Database) -> None:
    raw = orjson.dumps({"events": [finding()]})
    answer = await http.post("/v1/sources/fraudwatch", content=raw, headers=standard_headers(raw))
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 1
    again = await http.post("/v1/sources/fraudwatch", content=raw, headers=standard_headers(raw))
    assert again.json()["duplicates"] == 1 and count(db) == 1
    assert (row := event_log.get(db, "fraudwatch", "finding-7")) is not None and row.type == "fraud_finding"


@pytest.mark.parametrize(
    ("path", "headers", "reason"),
    [
        ("/v1/sources/fraudwatch", {}, "webhook-id, webhook-timestamp and webhook-signature are required"),
        ("/v1/sources/unknown", None, "no secret is configured for source 'unknown'"),
        ("/v1/sources/other", None, "no signature matches"),  # signed with fraudwatch's secret
        ("/v1/sources/fraudwatch", "old", "more than five minutes"),
    ],
)
async def test_standard_webhooks_refusals_are_401(
    http: httpx.AsyncClient, db: Database, path: str, headers: Any, reason: str
) -> None:
    raw = orjson.dumps(finding(path.rsplit("/", 1)[1]))
    if headers is None:
        headers = standard_headers(raw)
    elif headers == "old":
        headers = standard_headers(raw, at=time.time() - 600)
    answer = await http.post(path, content=raw, headers=headers)
    assert answer.status_code == 401 and reason in answer.json()["detail"]
    assert count(db) == 0


async def test_a_source_speaks_only_for_itself(http: httpx.AsyncClient, db: Database) -> None:
    raw = orjson.dumps({"events": [finding(), finding("chain")]})
    answer = await http.post("/v1/sources/fraudwatch", content=raw, headers=standard_headers(raw))
    assert answer.status_code == 422
    assert answer.json()["errors"] == [
        {"index": 1, "field": "source", "reason": "must be 'fraudwatch', the source this was posted to"}
    ]
    assert count(db) == 0
