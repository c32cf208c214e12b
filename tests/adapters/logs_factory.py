"""Builds EVM log records as ``eth_getLogs`` returns them (JSON-RPC hex), ABI-encoded with eth-abi."""

from __future__ import annotations

from typing import Any

from eth_abi import encode

from nftpulse.adapters.logs import (
    BATCH_METADATA_UPDATE,
    METADATA_UPDATE,
    ORDER_FULFILLED,
    TRANSFER,
    TRANSFER_BATCH,
    TRANSFER_SINGLE,
)

ZERO = "0x" + "0" * 40
NATIVE, ERC20, ERC721, ERC1155 = 0, 1, 2, 3


def topic(address_or_int: str | int) -> str:
    value = int(address_or_int, 16) if isinstance(address_or_int, str) else address_or_int
    return "0x" + value.to_bytes(32, "big").hex()


def log(
    address: str,
    topics: list[str],
    data: bytes = b"",
    *,
    block: int = 100,
    index: int = 0,
    tx: int = 1,
    removed: bool = False,
) -> dict[str, Any]:
    return {
        "address": address,
        "topics": topics,
        "data": "0x" + data.hex(),
        "blockNumber": hex(block),
        "blockHash": "0x" + block.to_bytes(32, "big").hex(),
        "transactionHash": "0x" + tx.to_bytes(32, "big").hex(),
        "transactionIndex": "0x0",
        "logIndex": hex(index),
        "removed": removed,
    }


def erc721_transfer(contract: str, sender: str, receiver: str, token: int, **kw: Any) -> dict[str, Any]:
    return log(contract, [TRANSFER, topic(sender), topic(receiver), topic(token)], **kw)


def erc20_transfer(contract: str, sender: str, receiver: str, amount: int, **kw: Any) -> dict[str, Any]:
    return log(contract, [TRANSFER, topic(sender), topic(receiver)], encode(["uint256"], [amount]), **kw)


def transfer_single(
    contract: str, operator: str, sender: str, receiver: str, token: int, value: int, **kw: Any
) -> dict[str, Any]:
    topics = [TRANSFER_SINGLE, topic(operator), topic(sender), topic(receiver)]
    return log(contract, topics, encode(["uint256", "uint256"], [token, value]), **kw)


def transfer_batch(
    contract: str, operator: str, sender: str, receiver: str, ids: list[int], values: list[int], **kw: Any
) -> dict[str, Any]:
    topics = [TRANSFER_BATCH, topic(operator), topic(sender), topic(receiver)]
    return log(contract, topics, encode(["uint256[]", "uint256[]"], [ids, values]), **kw)


def metadata_update(contract: str, token: int, **kw: Any) -> dict[str, Any]:
    return log(contract, [METADATA_UPDATE], encode(["uint256"], [token]), **kw)


def batch_metadata_update(contract: str, first: int, last: int, **kw: Any) -> dict[str, Any]:
    return log(contract, [BATCH_METADATA_UPDATE], encode(["uint256", "uint256"], [first, last]), **kw)


def order_fulfilled(
    seaport: str,
    offerer: str,
    recipient: str,
    offer: list[tuple[int, str, int, int]],
    consideration: list[tuple[int, str, int, int, str]],
    *,
    zone: str = ZERO,
    order_hash: bytes = b"\x11" * 32,
    **kw: Any,
) -> dict[str, Any]:
    data = encode(
        [
            "bytes32",
            "address",
            "(uint8,address,uint256,uint256)[]",
            "(uint8,address,uint256,uint256,address)[]",
        ],
        [order_hash, recipient, offer, consideration],
    )
    return log(seaport, [ORDER_FULFILLED, topic(offerer), topic(zone)], data, **kw)
