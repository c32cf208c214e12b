"""Alchemy Notify webhooks (NFT Activity and Address Activity) into Pulse events.

A delivery is ``{webhookId, id, createdAt, type, event: {network, activity: [...]}}``; each NFT activity
names ``fromAddress``, ``toAddress``, the contract (``contractAddress``, or ``rawContract.address`` in
Address Activity), ``erc721TokenId`` or ``erc1155Metadata: [{tokenId, value}]`` (hex), ``category``
(``erc721``/``erc1155``; Address Activity's ``external``, ``internal`` and ``token`` are not NFTs) and the
``log`` it came from (``transactionHash``, ``logIndex``, ``blockNumber``, ``removed``). Events get the same
ids as the chain follower's (:func:`nftpulse.adapters.logs.event_id`) under the same source, so a log that
both report is one event. A delivery carries no block time: events take its ``createdAt``. A log re-sent with
``removed: true`` (its block left the chain) becomes the retraction of the event it made, under the id the
follower would give that retraction, so that both reporting one reorganisation is one retraction.

The signature is ``X-Alchemy-Signature``: the hex HMAC-SHA256 of the raw body under the webhook's
signing key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from nftpulse.adapters.logs import (
    CHAIN_SOURCE,
    TRANSFER_BATCH,
    Decoded,
    DecodeError,
    LogRef,
    Skipped,
    hex_int,
    hex_str,
    move_event,
)
from nftpulse.domain.book.retract import retraction_of

SIGNATURE_HEADER = "X-Alchemy-Signature"

#: Alchemy's network names -> Pulse's chain names (others: lower case, ``_`` as ``-``).
NETWORKS = {
    "ETH_MAINNET": "ethereum",
    "ETH_SEPOLIA": "sepolia",
    "ETH_HOLESKY": "holesky",
    "MATIC_MAINNET": "polygon",
    "POLYGON_MAINNET": "polygon",
    "MATIC_AMOY": "polygon-amoy",
    "ARB_MAINNET": "arbitrum",
    "OPT_MAINNET": "optimism",
    "BASE_MAINNET": "base",
}
NFT_CATEGORIES = frozenset({"erc721", "erc1155"})


def signature_valid(body: bytes, signature: str | None, keys: Iterable[str]) -> bool:
    """Whether ``signature`` is the hex HMAC-SHA256 of ``body`` under one of ``keys`` (one per webhook)."""
    if not signature:
        return False
    given = signature.strip().lower()
    return any(
        hmac.compare_digest(hmac.new(key.encode(), body, hashlib.sha256).hexdigest(), given)
        for key in keys
        if key
    )


def sign(body: bytes, key: str) -> str:
    """What Alchemy puts in ``X-Alchemy-Signature`` for ``body`` (for tests and test deliveries)."""
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def chain_of(network: str) -> str:
    return NETWORKS.get(network.upper(), network.lower().replace("_", "-"))


def _time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise DecodeError(where, "must be an ISO 8601 timestamp")
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DecodeError(where, "must be an ISO 8601 timestamp") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def decode_delivery(body: Any, source: str = CHAIN_SOURCE) -> Decoded:
    """The events of one delivery; a malformed one raises :class:`DecodeError` naming the field, so that
    nothing of it is ingested."""
    if not isinstance(body, dict):
        raise DecodeError("body", "must be a JSON object")
    at = _time(body.get("createdAt"), "createdAt")
    event = body.get("event")
    if not isinstance(event, dict):
        raise DecodeError("event", "must be an object")
    network = event.get("network")
    if not isinstance(network, str) or not network:
        raise DecodeError("event.network", "must be a network name such as ETH_MAINNET")
    chain = chain_of(network)
    activity = event.get("activity")
    if not isinstance(activity, list):
        raise DecodeError("event.activity", "must be a list")
    out = Decoded()
    for i, item in enumerate(activity):
        _activity(item, f"event.activity.{i}", chain, source, at, out)
    return out


def block_hashes(body: Any) -> dict[tuple[str, int], str]:
    """(transaction hash, log index) -> the ``blockHash`` of each log of a delivery that names one: which
    block a log was in, to tell a transaction included again after a reorganisation from the retracted
    one (``store.retractions.reincluded``)."""
    out: dict[tuple[str, int], str] = {}
    activity = body.get("event", {}).get("activity", []) if isinstance(body, dict) else []
    for item in activity if isinstance(activity, list) else []:
        log = item.get("log") if isinstance(item, dict) else None
        if not isinstance(log, dict) or not isinstance(log.get("blockHash"), str):
            continue
        try:
            tx = hex_str(log.get("transactionHash") or item.get("hash"), "log.transactionHash", 32)
            index = hex_int(log.get("logIndex"), "log.logIndex")
        except DecodeError:
            continue
        out[(tx, index)] = str(_block_hash(log))
    return out


def _block_hash(log: dict[str, Any]) -> str | None:
    value = log.get("blockHash")
    return value.lower() if isinstance(value, str) else None


def _address(value: Any, where: str) -> str:
    return hex_str(value, where, 20)


def _activity(item: Any, where: str, chain: str, source: str, at: datetime, out: Decoded) -> None:
    if not isinstance(item, dict):
        raise DecodeError(where, "must be an object")
    category = item.get("category")
    if not isinstance(category, str):
        raise DecodeError(f"{where}.category", "is required")
    if category.lower() not in NFT_CATEGORIES:
        return  # ETH and ERC-20 movements of Address Activity: not NFTs
    log = item.get("log")
    if not isinstance(log, dict):
        raise DecodeError(f"{where}.log", "is required for NFT activity")
    tx = hex_str(log.get("transactionHash") or item.get("hash"), f"{where}.log.transactionHash", 32)
    log_index = hex_int(log.get("logIndex"), f"{where}.log.logIndex")
    block = hex_int(log.get("blockNumber") or item.get("blockNum"), f"{where}.log.blockNumber")
    removed = log.get("removed", False)
    if not isinstance(removed, bool):
        raise DecodeError(f"{where}.log.removed", "must be true or false")
    raw_contract = item.get("rawContract")
    contract_value = item.get("contractAddress") or (
        raw_contract.get("address") if isinstance(raw_contract, dict) else None
    )
    contract = _address(contract_value or log.get("address"), f"{where}.contractAddress")
    sender = _address(item.get("fromAddress"), f"{where}.fromAddress")
    receiver = _address(item.get("toAddress"), f"{where}.toAddress")
    moves: list[tuple[int, int, int | None]] = []
    if category.lower() == "erc721":
        moves.append((hex_int(item.get("erc721TokenId"), f"{where}.erc721TokenId"), 1, None))
    else:
        entries = item.get("erc1155Metadata")
        if not isinstance(entries, list) or not entries:
            raise DecodeError(f"{where}.erc1155Metadata", "must list {tokenId, value} for erc1155 activity")
        topics = log.get("topics")
        batch = len(entries) > 1 or (isinstance(topics, list) and topics[:1] == [TRANSFER_BATCH])
        for j, entry in enumerate(entries):
            at_entry = f"{where}.erc1155Metadata.{j}"
            if not isinstance(entry, dict):
                raise DecodeError(at_entry, "must be an object")
            token = hex_int(entry.get("tokenId"), f"{at_entry}.tokenId")
            value = hex_int(entry.get("value"), f"{at_entry}.value")
            moves.append((token, value, j if batch else None))
    for token, quantity, sub in moves:
        ref = LogRef(chain, contract, tx, block, log_index, sub)
        standard = "erc1155" if category.lower() == "erc1155" else None
        made = move_event(ref, source, at, sender, receiver, token, quantity, standard)
        if isinstance(made, str):
            out.skipped.append(Skipped(block, log_index, made))
        elif removed:
            # The log left the chain (a reorganisation): the event it made is retracted, by its id.
            reason = "removed by a reorganisation"
            out.events.append(retraction_of(made, reason, _block_hash(log)))
        else:
            out.events.append(made)
