"""OpenSea Stream API messages into Pulse events (pure: no I/O; the client is ``nftpulse/opensea.py``).

The Stream API is a Phoenix channel per collection (``collection:<slug>``, or ``collection:*``); each pushed
message's ``event`` is the event type and its ``payload`` is ``{event_type, sent_at, payload: {...}}`` as
OpenSea documents it (stream-js ``BaseStreamMessage``): the inner payload names the item
(``item.nft_id`` = ``<chain>/<contract>/<token id>``), the collection (``collection.slug``), the accounts
(``maker``, ``taker``, ``from_account``, ``to_account``), prices in the payment token's smallest unit
(``base_price``, ``sale_price``) with the token's ``decimals`` and ``symbol`` (``payment_token``), and
times (``event_timestamp``, ``expiration_date``).

Mapped: ``item_listed`` -> listing, ``item_sold`` -> sale, ``item_transferred`` -> transfer (mint or burn
from or to the zero address), ``item_metadata_updated`` -> metadata_update (its traits as standard
``attributes``), ``item_cancelled`` -> listing_cancelled, ``item_received_bid`` and ``item_received_offer``
-> a bid on the token, ``collection_offer`` -> a bid on the collection, ``trait_offer`` -> a bid on the
collection carrying the trait it asks for.

An event's id is derived from what the message says (its type and a digest of the inner payload without
the payment token's moving ETH and USD rates), so a message delivered again, after a reconnection or to a
second client, is the same event and the event log's ``(source, id)`` key makes it a duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from nftpulse.adapters.logs import DecodeError, units_to_amount
from nftpulse.domain.events import ZERO_ADDRESS, Event, EventType, field_errors

SOURCE = "opensea"
MARKETPLACE = "opensea"

#: The event types Pulse subscribes to and maps.
EVENT_TYPES = (
    "item_listed",
    "item_sold",
    "item_transferred",
    "item_metadata_updated",
    "item_cancelled",
    "item_received_bid",
    "item_received_offer",
    "collection_offer",
    "trait_offer",
)
#: Event types that the chain itself also reports (the follower, Alchemy).
CHAIN_EVENT_TYPES = frozenset({"item_sold", "item_transferred"})

#: OpenSea's chain names where they differ from Pulse's.
CHAINS = {"matic": "polygon", "arbitrum_nova": "arbitrum-nova", "base_sepolia": "base-sepolia"}


@dataclass(frozen=True)
class Mapped:
    """What one pushed message became: an event, or why none (an event type Pulse does not map, a
    non-EVM chain, a message that is not what OpenSea documents)."""

    event: Event | None
    skipped: str | None = None


def topic(slug: str) -> str:
    return f"collection:{slug}"


def _get(obj: Any, path: str) -> Any:
    """The value at a dotted ``path`` of nested objects, or None."""
    for part in path.split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _need(obj: Any, path: str) -> Any:
    value = _get(obj, path)
    if value is None or value == "":
        raise DecodeError(f"payload.{path}", "is required")
    return value


def _address(obj: Any, path: str) -> str:
    value = _need(obj, path)
    if not (isinstance(value, str) and len(value) == 42 and value[:2] in ("0x", "0X")):
        raise DecodeError(f"payload.{path}", "must be a 0x-prefixed 20-byte hex address")
    try:
        int(value[2:], 16)
    except ValueError:
        raise DecodeError(f"payload.{path}", "must be a 0x-prefixed 20-byte hex address") from None
    return value.lower()


def _chain(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise DecodeError("payload.item.chain.name", "is required")
    return CHAINS.get(name.lower(), name.lower().replace("_", "-"))


def _nft(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """(chain, contract, token id) of ``item.nft_id``."""
    nft_id = _need(body, "item.nft_id")
    parts = str(nft_id).split("/")
    if len(parts) != 3 or not parts[2].isdigit() or not parts[2].isascii():
        raise DecodeError("payload.item.nft_id", "must be <chain>/<contract>/<token id>")
    chain = _chain(parts[0])
    try:
        contract = _address({"item": {"nft_id": parts[1]}}, "item.nft_id")
    except DecodeError:
        raise DecodeError("payload.item.nft_id", "must be <chain>/<0x contract address>/<token id>") from None
    return chain, contract, str(int(parts[2]))


def _collection_target(body: Mapping[str, Any]) -> tuple[str, str]:
    """(chain, contract) of an offer on a collection or a trait: the criteria's contract, on the item's
    chain or the payload's (ethereum when neither says)."""
    contract = _address(body, "asset_contract_criteria.address")
    chain = _get(body, "item.chain.name") or _get(body, "chain") or "ethereum"
    return _chain(chain), contract


def price_of(body: Mapping[str, Any], field: str) -> dict[str, str]:
    """``body[field]`` (smallest units of the payment token) as a Pulse price: ``units / 10**decimals`` in
    the token's symbol."""
    raw = body.get(field)
    try:
        units = int(str(raw)) if raw is not None and not isinstance(raw, bool) else None
    except ValueError:
        units = None
    if units is None or units < 0:
        raise DecodeError(f"payload.{field}", "must be a whole number of the payment token's smallest unit")
    decimals = _get(body, "payment_token.decimals")
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 77:
        raise DecodeError("payload.payment_token.decimals", "must be a whole number from 0 to 77")
    symbol = "".join(ch for ch in str(_get(body, "payment_token.symbol") or "") if ch.isalnum()).upper()
    if len(symbol) < 2:
        if str(_get(body, "payment_token.address") or "").lower() != ZERO_ADDRESS:
            raise DecodeError("payload.payment_token.symbol", "is required")
        symbol = "ETH"
    amount = units_to_amount(units, decimals)
    if amount is None:
        raise DecodeError(f"payload.{field}", "is beyond what Pulse holds (15 integer digits)")
    return {"amount": amount, "currency": symbol[:12]}


def _quantity(body: Mapping[str, Any]) -> int:
    value = body.get("quantity", 1)
    if value is None:
        return 1
    try:
        quantity = int(value)
    except (TypeError, ValueError):
        raise DecodeError("payload.quantity", "must be a whole number") from None
    if quantity < 1:
        raise DecodeError("payload.quantity", "must be at least 1")
    return quantity


def _time(body: Mapping[str, Any], field: str) -> datetime | None:
    value = body.get(field)
    if value in (None, ""):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise DecodeError(f"payload.{field}", "must be a time") from None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise DecodeError(f"payload.{field}", "must be an ISO 8601 time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def event_id(event_type: str, body: Mapping[str, Any]) -> str:
    """A deterministic id: the event type and a digest of the inner payload, the payment token's ETH and
    USD rates left out (they move between two deliveries of one event)."""
    stable = dict(body)
    token = stable.get("payment_token")
    if isinstance(token, Mapping):
        stable["payment_token"] = {k: v for k, v in token.items() if k not in ("eth_price", "usd_price")}
    digest = hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{event_type}:{digest[:40]}"


def _traits(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    raw = body.get("traits")
    if raw is None:
        raw = _get(body, "item.metadata.traits")
    if not isinstance(raw, list):
        return None
    attributes = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            continue
        value = entry.get("value")
        if not isinstance(value, str | int | float | bool) or entry.get("trait_type") in (None, ""):
            continue
        attribute: dict[str, Any] = {"trait_type": str(entry["trait_type"]), "value": value}
        if isinstance(entry.get("display_type"), str):
            attribute["display_type"] = entry["display_type"]
        attributes.append(attribute)
    return attributes


#: Seaport item types that are NFTs (ERC-721, ERC-1155, and either with criteria).
_NFT_ITEM_TYPES = frozenset({2, 3, 4, 5})


def _maker_buys(body: Mapping[str, Any]) -> bool:
    """Whether the sold order was an offer (its maker pays and receives the NFT), which the Seaport order in
    ``protocol_data`` tells by what its maker gives: an NFT in a listing, currency in an offer. Without the
    order, the maker is taken for the seller (a listing filled, the usual case)."""
    offer = _get(body, "protocol_data.parameters.offer")
    if not isinstance(offer, list) or not offer:
        return False
    types = {item.get("itemType") for item in offer if isinstance(item, Mapping)}
    return bool(types) and not types & _NFT_ITEM_TYPES


def map_event(event_type: str, body: Mapping[str, Any], sent_at: Any = None) -> Mapped:
    """One Stream API event (its type and inner payload) as a Pulse event."""
    if event_type not in EVENT_TYPES:
        return Mapped(None, f"event type {event_type!r} is not mapped")
    at = _time(body, "event_timestamp") or _time({"sent_at": sent_at}, "sent_at")
    if at is None:
        raise DecodeError("payload.event_timestamp", "is required")
    token_id: str | None
    if event_type in ("collection_offer", "trait_offer"):
        chain, contract = _collection_target(body)
        token_id = None
    else:
        chain, contract, token_id = _nft(body)
    common: dict[str, Any] = {
        "id": event_id(event_type, body),
        "source": SOURCE,
        "occurred_at": at,
        "chain": chain,
        "contract": contract,
        "token_id": token_id,
    }
    tx = _get(body, "transaction.hash")
    if isinstance(tx, str) and tx:
        common["tx_hash"] = tx.lower()[:80]
    expires = _time(body, "expiration_date")
    order = body.get("order_hash")
    data: dict[str, Any]
    kind: EventType
    if event_type == "item_listed":
        kind = EventType.LISTING
        data = {"seller": _address(body, "maker.address"), "price": price_of(body, "base_price")}
        data["marketplace"] = MARKETPLACE
    elif event_type == "item_sold":
        kind = EventType.SALE
        seller, buyer = _address(body, "maker.address"), _address(body, "taker.address")
        if _maker_buys(body):
            seller, buyer = buyer, seller
        data = {
            "from": seller,
            "to": buyer,
            "price": price_of(body, "sale_price"),
            "quantity": _quantity(body),
            "marketplace": MARKETPLACE,
        }
    elif event_type == "item_transferred":
        sender, receiver = _address(body, "from_account.address"), _address(body, "to_account.address")
        if sender == receiver == ZERO_ADDRESS:
            return Mapped(None, "from and to are both the zero address")
        quantity = _quantity(body)
        if sender == ZERO_ADDRESS:
            kind, data = EventType.MINT, {"to": receiver}
        elif receiver == ZERO_ADDRESS:
            kind, data = EventType.BURN, {"from": sender}
        else:
            kind, data = EventType.TRANSFER, {"from": sender, "to": receiver}
        data["quantity"] = quantity
    elif event_type == "item_metadata_updated":
        attributes = _traits(body)
        if attributes is None:
            return Mapped(None, "a metadata update without traits")
        kind, data = EventType.METADATA_UPDATE, {"attributes": attributes}
    elif event_type == "item_cancelled":
        kind, data = EventType.LISTING_CANCELLED, {"seller": _address(body, "maker.address")}
    else:  # offers: on the item, on the collection, on a trait
        kind = EventType.BID
        data = {"bidder": _address(body, "maker.address"), "price": price_of(body, "base_price")}
        if event_type != "item_received_bid" and event_type != "item_received_offer":
            data["quantity"] = _quantity(body)
        if event_type == "trait_offer":
            trait_type = _get(body, "trait_criteria.trait_type")
            trait_value = _get(body, "trait_criteria.trait_name")
            if not trait_type or trait_value is None:
                raise DecodeError("payload.trait_criteria", "must name trait_type and trait_name")
            data["trait"] = {"type": str(trait_type), "value": str(trait_value)}
    if expires is not None and kind in (EventType.LISTING, EventType.BID):
        data["expires_at"] = expires
    if isinstance(order, str) and order and kind is not EventType.METADATA_UPDATE:
        data["order_hash"] = order[:80]
    try:
        return Mapped(Event(type=kind, data=data, **common))
    except ValidationError as exc:
        first = field_errors(exc)[0]
        raise DecodeError(str(first["field"]), str(first["reason"])) from None


def map_message(message: Mapping[str, Any]) -> Mapped:
    """A Phoenix message pushed on a collection's channel (``{topic, event, payload, ref}``) as a Pulse
    event; :class:`DecodeError` names what is not as documented."""
    event_type = message.get("event")
    envelope = message.get("payload")
    if not isinstance(event_type, str) or not isinstance(envelope, Mapping):
        raise DecodeError("payload", "a pushed message carries an event name and an object payload")
    body = envelope.get("payload")
    if not isinstance(body, Mapping):
        raise DecodeError("payload.payload", "must be the event's object")
    return map_event(str(envelope.get("event_type") or event_type), body, envelope.get("sent_at"))
