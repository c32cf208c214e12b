"""Raw EVM logs into events: each standard's decoding, Seaport prices, and idempotent ids (a property test:
the same logs decoded twice, in any order, give the same events, and ingesting them twice adds nothing)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nftpulse.adapters.logs import (
    ORDER_FULFILLED,
    SEAPORT,
    TRANSFER,
    DecodeError,
    Erc20,
    LogDecoder,
    RawLog,
    erc20_payments,
    topic_of,
    units_to_amount,
)
from nftpulse.domain.events import EventType
from nftpulse.store import events as event_log
from nftpulse.store.db import Database
from tests.adapters import logs_factory as f

NFT = "0x00000000000000000000000000000000000000aa"
MULTI = "0x00000000000000000000000000000000000000bb"
WETH = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"
ALICE = "0x1111111111111111111111111111111111111111"
BOB = "0x2222222222222222222222222222222222222222"
FEES = "0x3333333333333333333333333333333333333333"
SEAPORT_16 = "0x0000000000000068f116a894984e2db1123eb395"
T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def times(*blocks: int) -> dict[int, datetime]:
    return {b: T0.replace(second=b % 60) for b in blocks}


def decode(*records: dict[str, Any], decoder: LogDecoder | None = None) -> Any:
    logs = [RawLog.from_json(r) for r in records]
    return (decoder or LogDecoder("ethereum")).decode(logs, times(*{log.block_number for log in logs}))


def test_topics_are_keccak_not_sha3() -> None:
    assert TRANSFER == "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
    assert ORDER_FULFILLED == "0x9d9af8e38d66c62e2c12f0225249fd9d721c54b83f48d9352c97c6cacdcb6f31"
    assert topic_of("MetadataUpdate(uint256)").endswith("8ce7")


def test_erc721_mint_transfer_burn_and_erc20_ignored() -> None:
    out = decode(
        f.erc721_transfer(NFT, f.ZERO, ALICE, 7, index=0),
        f.erc721_transfer(NFT, ALICE, BOB, 7, index=1),
        f.erc721_transfer(NFT, BOB, f.ZERO, 7, index=2),
        f.erc20_transfer(WETH, ALICE, BOB, 10**18, index=3),  # three topics: ERC-20
    )
    assert [e.type for e in out.events] == [EventType.MINT, EventType.TRANSFER, EventType.BURN]
    mint, transfer, burn = out.events
    assert mint.data == {"to": ALICE, "quantity": 1} and mint.token_id == "7" and mint.contract == NFT
    assert transfer.data == {"from": ALICE, "to": BOB, "quantity": 1}
    assert burn.data["from"] == BOB
    assert mint.id == "ethereum:0x" + (1).to_bytes(32, "big").hex() + ":0"
    assert (transfer.block_number, transfer.log_index, transfer.occurred_at) == (
        100,
        1,
        T0.replace(second=40),
    )
    assert transfer.tx_hash is not None and out.skipped == []


def test_erc1155_single_and_batch() -> None:
    out = decode(
        f.transfer_single(MULTI, ALICE, f.ZERO, ALICE, 5, 10, index=0),
        f.transfer_batch(MULTI, ALICE, ALICE, BOB, [5, 6, 7], [3, 0, 1], index=1),
    )
    assert [(e.type, e.token_id, e.data.get("quantity")) for e in out.events] == [
        (EventType.MINT, "5", 10),
        (EventType.TRANSFER, "5", 3),
        (EventType.TRANSFER, "7", 1),
    ]
    # Each batch entry has its own id: the log's id and the entry's position.
    assert [e.id.rsplit(":", 2)[-2:] for e in out.events[1:]] == [["1", "0"], ["1", "2"]]
    assert [s.reason for s in out.skipped] == ["a zero-quantity move"]


def test_erc4906_becomes_a_refresh_not_an_event() -> None:
    out = decode(f.metadata_update(NFT, 9, index=0), f.batch_metadata_update(NFT, 1, 100, index=1))
    assert out.events == []
    assert [(r.contract, r.first, r.last) for r in out.refreshes] == [(NFT, 9, 9), (NFT, 1, 100)]


def test_seaport_listing_filled_in_eth_prices_every_payment() -> None:
    out = decode(
        f.order_fulfilled(
            SEAPORT_16,
            offerer=ALICE,
            recipient=BOB,
            offer=[(f.ERC721, NFT, 7, 1)],
            consideration=[
                (f.NATIVE, f.ZERO, 0, 975 * 10**15, ALICE),
                (f.NATIVE, f.ZERO, 0, 25 * 10**15, FEES),
            ],
        )
    )
    (sale,) = out.events
    assert sale.type is EventType.SALE and sale.contract == NFT and sale.token_id == "7"
    assert sale.data == {
        "from": ALICE,
        "to": BOB,
        "quantity": 1,
        "price": {"amount": "1", "currency": "ETH"},
        "marketplace": "seaport-1.6",
    }


def test_seaport_offer_accepted_in_weth_and_unknown_token_skipped() -> None:
    accepted = f.order_fulfilled(
        SEAPORT_16,
        offerer=BOB,  # the bidder
        recipient=ALICE,  # the seller who accepted
        offer=[(f.ERC20, WETH, 0, 15 * 10**17)],
        consideration=[(f.ERC1155, MULTI, 5, 2, BOB), (f.ERC20, WETH, 0, 10**16, FEES)],
        index=0,
    )
    odd = "0x4444444444444444444444444444444444444444"
    unknown = f.order_fulfilled(
        SEAPORT_16, ALICE, BOB, [(f.ERC721, NFT, 8, 1)], [(f.ERC20, odd, 0, 5 * 10**6, ALICE)], index=1
    )
    out = decode(accepted, unknown)
    (sale,) = out.events
    assert (sale.contract, sale.token_id, sale.data["from"], sale.data["to"]) == (MULTI, "5", ALICE, BOB)
    assert sale.data["price"] == {"amount": "1.5", "currency": "WETH"} and sale.data["quantity"] == 2
    assert [s.reason for s in out.skipped] == [f"payment token {odd} unknown"]
    # The follower learns the token (eth_call decimals/symbol) and decodes again.
    assert erc20_payments([RawLog.from_json(unknown)]) == {odd}
    priced = decode(unknown, decoder=LogDecoder("ethereum", tokens=lambda c, a: Erc20("USDC", 6)))
    assert priced.events[0].data["price"] == {"amount": "5", "currency": "USDC"}


def test_seaport_lookalikes_bundles_and_matches_are_not_sales() -> None:
    impostor = "0x5555555555555555555555555555555555555555"
    eth = [(f.NATIVE, f.ZERO, 0, 10**18, ALICE)]
    out = decode(
        f.order_fulfilled(impostor, ALICE, BOB, [(f.ERC721, NFT, 1, 1)], eth, index=0),
        f.order_fulfilled(
            SEAPORT_16, ALICE, BOB, [(f.ERC721, NFT, 1, 1), (f.ERC721, NFT, 2, 1)], eth, index=1
        ),
        f.order_fulfilled(SEAPORT_16, ALICE, f.ZERO, [(f.ERC721, NFT, 3, 1)], eth, index=2),
    )
    assert out.events == []
    assert [s.reason for s in out.skipped] == [
        "a bundle: no single NFT's price",
        "OrderFulfilled of matched orders (no recipient)",
    ]
    trusted = LogDecoder("ethereum", marketplaces={impostor: "test-market"})
    sale = decode(f.order_fulfilled(impostor, ALICE, BOB, [(f.ERC721, NFT, 1, 1)], eth), decoder=trusted)
    assert sale.events[0].data["marketplace"] == "test-market"
    assert set(SEAPORT.values()) == {"seaport-1.5", "seaport-1.6"}


def test_native_currency_follows_the_chain() -> None:
    record = f.order_fulfilled(
        SEAPORT_16, ALICE, BOB, [(f.ERC721, NFT, 1, 1)], [(0, f.ZERO, 0, 10**18, ALICE)]
    )
    assert decode(record, decoder=LogDecoder("polygon")).events[0].data["price"]["currency"] == "POL"


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({**f.erc721_transfer(NFT, ALICE, BOB, 1), "logIndex": "12"}, "log.logIndex"),
        ({**f.erc721_transfer(NFT, ALICE, BOB, 1), "address": "0x12"}, "log.address"),
        ({**f.erc721_transfer(NFT, ALICE, BOB, 1), "topics": ["0x01"]}, "log.topics.0"),
        (
            {k: v for k, v in f.erc721_transfer(NFT, ALICE, BOB, 1).items() if k != "blockNumber"},
            "log.blockNumber",
        ),
    ],
)
def test_malformed_logs_name_the_field(record: dict[str, Any], field: str) -> None:
    with pytest.raises(DecodeError) as caught:
        RawLog.from_json(record)
    assert caught.value.field == field


def test_amounts_fit_the_schema() -> None:
    assert units_to_amount(1_250_000_000_000_000_000, 18) == "1.25"
    assert units_to_amount(123_456_789, 6) == "123.456789"
    assert units_to_amount(10**20 + 7, 20) == "1"  # digits past 18 decimals are cut
    assert units_to_amount(10**34, 18) is None  # 17 integer digits: more than the schema holds


def _random_logs(rng: random.Random, n: int) -> list[dict[str, Any]]:
    wallets = [ALICE, BOB, FEES, f.ZERO]
    out: list[dict[str, Any]] = []
    for i in range(n):
        kind = rng.randrange(4)
        kw: dict[str, Any] = {"block": 100 + i // 3, "index": i % 3, "tx": 1 + i}
        a, b = rng.sample(wallets, 2)
        if kind == 0:
            out.append(f.erc721_transfer(NFT, a, b, rng.randrange(5), **kw))
        elif kind == 1:
            out.append(f.transfer_single(MULTI, a, a, b, rng.randrange(5), rng.randrange(1, 4), **kw))
        elif kind == 2:
            ids = [rng.randrange(5) for _ in range(rng.randrange(1, 4))]
            out.append(f.transfer_batch(MULTI, a, a, b, ids, [1] * len(ids), **kw))
        else:
            price = [(f.NATIVE, f.ZERO, 0, rng.randrange(1, 10**19), ALICE)]
            out.append(
                f.order_fulfilled(SEAPORT_16, ALICE, BOB, [(f.ERC721, NFT, rng.randrange(5), 1)], price, **kw)
            )
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 30), data=st.data())
def test_decoding_twice_in_any_order_gives_the_same_events(seed: int, n: int, data: st.DataObject) -> None:
    records = _random_logs(random.Random(seed), n)
    again = data.draw(st.permutations(records + data.draw(st.lists(st.sampled_from(records), max_size=n))))
    first = {e.id: e for e in decode(*records).events}
    second = decode(*again).events
    assert {e.id: e for e in second} == first  # re-read logs give the same ids and the same events


def test_ingesting_decoded_logs_twice_adds_nothing(db: Database) -> None:
    records = _random_logs(random.Random(7), 40)
    batch = decode(*records).events
    first = event_log.append(db, batch, [(0.0, "low")] * len(batch))
    assert not any(o.duplicate for o in first)
    shuffled = decode(*random.Random(1).sample(records, len(records))).events
    second = event_log.append(db, shuffled, [(0.0, "low")] * len(shuffled))
    assert all(o.duplicate for o in second) and len(second) == len(batch)
