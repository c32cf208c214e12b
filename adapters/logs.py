"""Raw EVM logs (``eth_getLogs`` records) into Pulse events.

Decoded here: ERC-721 ``Transfer`` (mint, transfer, burn), ERC-1155 ``TransferSingle`` and
``TransferBatch``, Seaport 1.5/1.6 ``OrderFulfilled`` (a sale, priced from its payment items) and
ERC-4906 ``MetadataUpdate``/``BatchMetadataUpdate`` (a refresh signal: the log names tokens whose metadata
changed but not the traits, so it becomes a :class:`MetadataRefresh` for a metadata fetcher, never an
event that would overwrite the traits with nothing).

Every event's id is ``<chain>:<transaction hash>:<log index>`` (``:<item>`` added for each entry of a
``TransferBatch``), so decoding the same log twice, from any source, yields the same id and the event log's
``(source, id)`` key makes the second ingest a duplicate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_hash.auto import keccak

from nftpulse.domain.book import quote_currency
from nftpulse.domain.events import ZERO_ADDRESS, Event, EventType

#: What the event log holds: quantities in a signed 64-bit column; amounts with at most 15 integer and 18
#: fractional digits (wei). A log beyond these is skipped with its reason rather than refused downstream.
INT64_MAX = 2**63 - 1
MAX_INT_DIGITS, MAX_FRACTION_DIGITS = 15, 18

#: The source every chain-derived event is ingested under, whichever adapter read the log (the follower or
#: a provider's webhook): one log is one event.
CHAIN_SOURCE = "chain"


def topic_of(signature: str) -> str:
    """An event signature's topic0: Keccak-256 (not SHA3-256) of its canonical text."""
    return "0x" + keccak(signature.encode()).hex()


TRANSFER = topic_of("Transfer(address,address,uint256)")
TRANSFER_SINGLE = topic_of("TransferSingle(address,address,address,uint256,uint256)")
TRANSFER_BATCH = topic_of("TransferBatch(address,address,address,uint256[],uint256[])")
METADATA_UPDATE = topic_of("MetadataUpdate(uint256)")
BATCH_METADATA_UPDATE = topic_of("BatchMetadataUpdate(uint256,uint256)")
_SPENT_ITEM = "(uint8,address,uint256,uint256)"
_RECEIVED_ITEM = "(uint8,address,uint256,uint256,address)"
ORDER_FULFILLED = topic_of(
    f"OrderFulfilled(bytes32,address,address,address,{_SPENT_ITEM}[],{_RECEIVED_ITEM}[])"
)
_ORDER_FULFILLED_DATA = ["bytes32", "address", f"{_SPENT_ITEM}[]", f"{_RECEIVED_ITEM}[]"]

#: Topics whose logs come from NFT contracts (what a follower asks the node for, per contract).
NFT_TOPICS = (TRANSFER, TRANSFER_SINGLE, TRANSFER_BATCH, METADATA_UPDATE, BATCH_METADATA_UPDATE)

#: Seaport deployments (the same address on every chain). Anyone can emit a log with OrderFulfilled's
#: signature, so only these addresses (and those a caller adds) are believed.
SEAPORT = {
    "0x00000000000000adc04c56bf30ac9d3c0aaf14dc": "seaport-1.5",
    "0x0000000000000068f116a894984e2db1123eb395": "seaport-1.6",
}

# Seaport's ItemType.
_NATIVE, _ERC20, _ERC721, _ERC1155, _ERC721_CRITERIA, _ERC1155_CRITERIA = range(6)
_NFT_ITEMS = frozenset({_ERC721, _ERC1155, _ERC721_CRITERIA, _ERC1155_CRITERIA})


@dataclass(frozen=True, slots=True)
class Erc20:
    symbol: str
    decimals: int


#: ERC-20 payment tokens known without asking the chain, per chain. A sale in another token is priced
#: once its symbol and decimals are known (the follower reads them with eth_call).
KNOWN_TOKENS: dict[str, dict[str, Erc20]] = {
    "ethereum": {
        "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2": Erc20("WETH", 18),
        "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48": Erc20("USDC", 6),
        "0xdac17f958d2ee523a2206206994597c13d831ec7": Erc20("USDT", 6),
        "0x6b175474e89094c44da98b954eedeac495271d0f": Erc20("DAI", 18),
    },
    "polygon": {
        "0x7ceb23fd6bc0add59e62ac25578270cff1b9f619": Erc20("WETH", 18),
        "0x0d500b1d8e8ef31e21c99d1db9a6444d3adf1270": Erc20("WPOL", 18),
        "0x3c499c542cef5e3811e1192ce70d8cc03d5c3359": Erc20("USDC", 6),
    },
    "base": {
        "0x4200000000000000000000000000000000000006": Erc20("WETH", 18),
        "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913": Erc20("USDC", 6),
    },
    "optimism": {"0x4200000000000000000000000000000000000006": Erc20("WETH", 18)},
    "arbitrum": {"0x82af49447d8a07e3bd95d0f9a8f3bd6d0e6a4a4f": Erc20("WETH", 18)},
}

#: ``(chain, token address) -> Erc20 or None``: how a sale's ERC-20 payment is priced.
TokenLookup = Callable[[str, str], Erc20 | None]


def known_token(chain: str, address: str) -> Erc20 | None:
    return KNOWN_TOKENS.get(chain, {}).get(address)


class DecodeError(ValueError):
    """A record that is not what its source documents; ``field`` names where (dotted path)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def hex_int(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value[:2] in ("0x", "0X") and len(value) > 2:
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise DecodeError(where, "must be a 0x-prefixed hex quantity")


_HEX = re.compile(r"0[xX](?:[0-9a-fA-F]{2})*")


def hex_str(value: Any, where: str, nbytes: int | None = None) -> str:
    if (
        isinstance(value, str)
        and (nbytes is None or len(value) == 2 + 2 * nbytes)
        and _HEX.fullmatch(value) is not None
    ):
        return "0x" + value[2:].lower()
    size = f"{nbytes}-byte " if nbytes else ""
    raise DecodeError(where, f"must be 0x-prefixed {size}hex")


@dataclass(frozen=True, slots=True)
class RawLog:
    """One log as ``eth_getLogs`` (or a provider's webhook) returns it."""

    address: str
    topics: tuple[str, ...]
    data: bytes
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    removed: bool = False

    @classmethod
    def from_json(cls, obj: Any, where: str = "log") -> RawLog:
        """Parse a JSON-RPC log object; a field that is missing or malformed raises :class:`DecodeError`."""
        if not isinstance(obj, dict):
            raise DecodeError(where, "must be an object")

        def need(key: str) -> Any:
            if obj.get(key) is None:
                raise DecodeError(f"{where}.{key}", "is required")
            return obj[key]

        topics = need("topics")
        if not isinstance(topics, list) or len(topics) > 4:
            raise DecodeError(f"{where}.topics", "must be a list of at most 4 topics")
        removed = obj.get("removed", False)
        if not isinstance(removed, bool):
            raise DecodeError(f"{where}.removed", "must be true or false")
        return cls(
            address=hex_str(need("address"), f"{where}.address", 20),
            topics=tuple(hex_str(t, f"{where}.topics.{i}", 32) for i, t in enumerate(topics)),
            data=bytes.fromhex(hex_str(obj.get("data", "0x"), f"{where}.data")[2:]),
            block_number=hex_int(need("blockNumber"), f"{where}.blockNumber"),
            block_hash=hex_str(need("blockHash"), f"{where}.blockHash", 32),
            tx_hash=hex_str(need("transactionHash"), f"{where}.transactionHash", 32),
            log_index=hex_int(need("logIndex"), f"{where}.logIndex"),
            removed=removed,
        )


@dataclass(frozen=True, slots=True)
class MetadataRefresh:
    """ERC-4906: the metadata of tokens ``first``..``last`` (inclusive) of ``contract`` changed."""

    chain: str
    contract: str
    first: int
    last: int
    block_number: int
    log_index: int
    tx_hash: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A log that yields no event, and why (an ERC-20 transfer, a bundle sale, a zero-quantity move...)."""

    block_number: int
    log_index: int
    reason: str


@dataclass
class Decoded:
    events: list[Event] = field(default_factory=list)
    refreshes: list[MetadataRefresh] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def extend(self, other: Decoded) -> None:
        self.events.extend(other.events)
        self.refreshes.extend(other.refreshes)
        self.skipped.extend(other.skipped)


def event_id(chain: str, tx_hash: str, log_index: int, item: int | None = None) -> str:
    base = f"{chain}:{tx_hash.lower()}:{log_index}"
    return base if item is None else f"{base}:{item}"


def _address(topic: str) -> str:
    return "0x" + topic[-40:]


def _word(data: bytes, i: int) -> int:
    return int.from_bytes(data[32 * i : 32 * i + 32], "big")


def units_to_amount(units: int, decimals: int) -> str | None:
    """``units`` of a token with ``decimals`` as the schema's decimal string, or None when it does not fit
    (more than 15 integer digits). Digits past 18 decimals are cut, never rounded up."""
    if decimals <= MAX_FRACTION_DIGITS:
        whole, frac = divmod(units, 10**decimals)
        digits = decimals
    else:
        whole, frac = divmod(units // 10 ** (decimals - MAX_FRACTION_DIGITS), 10**MAX_FRACTION_DIGITS)
        digits = MAX_FRACTION_DIGITS
    if len(str(whole)) > MAX_INT_DIGITS:
        return None
    text = str(whole)
    if frac and digits:
        text += "." + str(frac).rjust(digits, "0").rstrip("0")
    return text


@dataclass(frozen=True, slots=True)
class LogRef:
    """Where an event comes from on the chain: what its id and chain order are made of."""

    chain: str
    contract: str
    tx_hash: str
    block_number: int
    log_index: int
    item: int | None = None


def move_event(
    where: LogRef,
    source: str,
    at: datetime,
    sender: str,
    receiver: str,
    token: int,
    quantity: int,
    standard: str | None = None,
) -> Event | str:
    """A token moving ``quantity`` from ``sender`` to ``receiver``: a mint (from the zero address), a burn
    (to it) or a transfer; or why it yields no event."""
    if not 1 <= quantity <= INT64_MAX:
        return "a zero-quantity move" if quantity == 0 else "a quantity out of range"
    if token >= 10**78:
        return "a token id out of range"
    if sender == ZERO_ADDRESS and receiver == ZERO_ADDRESS:
        return "from and to are both the zero address"
    data: dict[str, Any]
    if sender == ZERO_ADDRESS:
        kind, data = EventType.MINT, {"to": receiver}
    elif receiver == ZERO_ADDRESS:
        kind, data = EventType.BURN, {"from": sender}
    else:
        kind, data = EventType.TRANSFER, {"from": sender, "to": receiver}
    if quantity != 1:
        data["quantity"] = quantity
    if standard is not None:
        # ERC-1155: the books keep balances per wallet, even of a single unit.
        data["standard"] = standard
    return Event(
        id=event_id(where.chain, where.tx_hash, where.log_index, where.item),
        source=source,
        type=kind,
        occurred_at=at,
        chain=where.chain,
        contract=where.contract,
        token_id=str(token),
        block_number=where.block_number,
        log_index=where.log_index,
        tx_hash=where.tx_hash,
        data=data,
    )


class LogDecoder:
    """Decodes logs of one chain. ``tokens`` prices ERC-20 payments; ``marketplaces`` adds Seaport-compatible
    addresses to :data:`SEAPORT` (address -> marketplace name)."""

    def __init__(
        self,
        chain: str,
        *,
        source: str = CHAIN_SOURCE,
        tokens: TokenLookup = known_token,
        marketplaces: Mapping[str, str] | None = None,
    ) -> None:
        self.chain = chain
        self.source = source
        self.tokens = tokens
        self.native = quote_currency(chain)
        self.marketplaces = {**SEAPORT, **{a.lower(): n for a, n in (marketplaces or {}).items()}}

    def decode(self, logs: Iterable[RawLog], block_times: Mapping[int, datetime]) -> Decoded:
        """Decode ``logs``; ``block_times`` maps each log's block number to its block's timestamp."""
        out = Decoded()
        for log in logs:
            self._one(log, block_times, out)
        return out

    def _one(self, log: RawLog, block_times: Mapping[int, datetime], out: Decoded) -> None:
        topics = log.topics
        if not topics:
            return
        if log.removed:
            out.skipped.append(Skipped(log.block_number, log.log_index, "removed by a reorganisation"))
            return
        t0 = topics[0]
        if t0 in (METADATA_UPDATE, BATCH_METADATA_UPDATE):
            self._metadata(log, out)
            return
        if t0 not in (TRANSFER, TRANSFER_SINGLE, TRANSFER_BATCH, ORDER_FULFILLED):
            return
        at = block_times.get(log.block_number)
        if at is None:
            raise DecodeError("blockNumber", f"no timestamp known for block {log.block_number}")
        if t0 == TRANSFER:
            if len(topics) != 4:  # ERC-20's Transfer shares topic0 with three topics: not an NFT
                return
            self._move(log, at, _address(topics[1]), _address(topics[2]), int(topics[3], 16), 1, None, out)
        elif t0 == TRANSFER_SINGLE:
            if len(topics) != 4 or len(log.data) < 64:
                out.skipped.append(Skipped(log.block_number, log.log_index, "malformed TransferSingle"))
                return
            token, value = _word(log.data, 0), _word(log.data, 1)
            self._move(log, at, _address(topics[2]), _address(topics[3]), token, value, None, out)
        elif t0 == TRANSFER_BATCH:
            self._batch(log, at, out)
        elif log.address in self.marketplaces:
            self._order_fulfilled(log, at, out)

    def _move(
        self,
        log: RawLog,
        at: datetime,
        sender: str,
        receiver: str,
        token: int,
        quantity: int,
        item: int | None,
        out: Decoded,
    ) -> None:
        where = LogRef(self.chain, log.address, log.tx_hash, log.block_number, log.log_index, item)
        standard = "erc1155" if log.topics[0] in (TRANSFER_SINGLE, TRANSFER_BATCH) else None
        made = move_event(where, self.source, at, sender, receiver, token, quantity, standard)
        if isinstance(made, str):
            out.skipped.append(Skipped(log.block_number, log.log_index, made))
        else:
            out.events.append(made)

    def _batch(self, log: RawLog, at: datetime, out: Decoded) -> None:
        if len(log.topics) != 4:
            out.skipped.append(Skipped(log.block_number, log.log_index, "malformed TransferBatch"))
            return
        try:
            ids, values = abi_decode(["uint256[]", "uint256[]"], log.data)
        except (DecodingError, OverflowError, ValueError):
            out.skipped.append(Skipped(log.block_number, log.log_index, "malformed TransferBatch data"))
            return
        if len(ids) != len(values):
            why = "TransferBatch ids and values differ"
            out.skipped.append(Skipped(log.block_number, log.log_index, why))
            return
        sender, receiver = _address(log.topics[2]), _address(log.topics[3])
        for item, (token, value) in enumerate(zip(ids, values, strict=True)):
            self._move(log, at, sender, receiver, token, value, item, out)

    def _metadata(self, log: RawLog, out: Decoded) -> None:
        single = log.topics[0] == METADATA_UPDATE
        if len(log.data) >= (32 if single else 64):
            first, last = _word(log.data, 0), _word(log.data, 1 if not single else 0)
        elif single and len(log.topics) == 2:  # a token id declared indexed
            first = last = int(log.topics[1], 16)
        else:
            out.skipped.append(Skipped(log.block_number, log.log_index, "malformed metadata update"))
            return
        out.refreshes.append(
            MetadataRefresh(
                self.chain, log.address, first, last, log.block_number, log.log_index, log.tx_hash
            )
        )

    def _order_fulfilled(self, log: RawLog, at: datetime, out: Decoded) -> None:
        def skip(reason: str) -> None:
            out.skipped.append(Skipped(log.block_number, log.log_index, reason))

        if len(log.topics) != 3:
            return skip("malformed OrderFulfilled")
        try:
            _order_hash, recipient, offer, consideration = abi_decode(_ORDER_FULFILLED_DATA, log.data)
        except (DecodingError, OverflowError, ValueError):
            return skip("malformed OrderFulfilled data")
        offerer = _address(log.topics[1])
        recipient = recipient.lower()
        offered_nfts = [i for i in offer if i[0] in _NFT_ITEMS]
        wanted_nfts = [i for i in consideration if i[0] in _NFT_ITEMS]
        if offered_nfts and not wanted_nfts:
            # A listing filled: the offerer sells, the fulfiller (recipient) buys, the consideration pays
            # the seller and the fees, which together are the price.
            nfts, payments, seller, buyer = offered_nfts, consideration, offerer, recipient
        elif wanted_nfts and not offered_nfts:
            # An offer (bid) accepted: the offerer buys with what it offered, the fulfiller sells.
            nfts, payments, seller, buyer = wanted_nfts, offer, recipient, offerer
        else:
            return skip("OrderFulfilled without exactly one NFT side")
        if buyer == ZERO_ADDRESS or seller == ZERO_ADDRESS:
            # Matched orders carry no recipient; their NFT moves are still read from the Transfer logs.
            return skip("OrderFulfilled of matched orders (no recipient)")
        if len(nfts) != 1:
            return skip("a bundle: no single NFT's price")
        paid = [i for i in payments if i[0] in (_NATIVE, _ERC20)]
        if not paid or len({(i[0], i[1].lower()) for i in paid}) != 1:
            return skip("OrderFulfilled not paid in one currency")
        kind, token_address = paid[0][0], paid[0][1].lower()
        if kind == _NATIVE:
            currency, decimals = self.native, 18
        else:
            erc20 = self.tokens(self.chain, token_address)
            if erc20 is None:
                return skip(f"payment token {token_address} unknown")
            currency, decimals = erc20.symbol, erc20.decimals
        amount = units_to_amount(sum(i[3] for i in paid), decimals)
        if amount is None:
            return skip("price out of range")
        nft = nfts[0]
        quantity = nft[3]
        if not 1 <= quantity <= INT64_MAX:
            return skip("a quantity out of range")
        data: dict[str, Any] = {
            "from": seller,
            "to": buyer,
            "price": {"amount": amount, "currency": currency},
            "marketplace": self.marketplaces[log.address],
        }
        if quantity != 1:
            data["quantity"] = quantity
        if nft[0] in (_ERC1155, _ERC1155_CRITERIA):
            data["standard"] = "erc1155"
        sale = Event(
            id=event_id(self.chain, log.tx_hash, log.log_index),
            source=self.source,
            type=EventType.SALE,
            occurred_at=at,
            chain=self.chain,
            contract=nft[1].lower(),
            token_id=str(nft[2]),
            block_number=log.block_number,
            log_index=log.log_index,
            tx_hash=log.tx_hash,
            data=data,
        )
        out.events.append(sale)
        return None


def erc20_payments(logs: Iterable[RawLog], marketplaces: Mapping[str, str] = SEAPORT) -> set[str]:
    """The ERC-20 tokens that Seaport logs among ``logs`` pay in: what a follower must know to price them."""
    found: set[str] = set()
    for log in logs:
        if log.topics and log.topics[0] == ORDER_FULFILLED and log.address in marketplaces:
            try:
                _h, _r, offer, consideration = abi_decode(_ORDER_FULFILLED_DATA, log.data)
            except (DecodingError, OverflowError, ValueError):
                continue
            found.update(i[1].lower() for i in (*offer, *consideration) if i[0] == _ERC20)
    return found
