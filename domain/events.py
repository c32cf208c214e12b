"""Pulse's own event schema (version 1): the contract between producers, the event log and the engines.

Pure: pydantic models and helpers only, no I/O. Every adapter (OpenSea, Alchemy, raw logs, fraud and
market feeds) converts its payload into :class:`Event` before it reaches the log.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
MAX_BATCH = 1000

# -- bounds: what the engines, the event log and both databases hold ------------------------------------
#: Block numbers, log indexes and quantities: a signed 64-bit column on either database.
INT64_MAX = 2**63 - 1
#: Amounts and rates: at most 15 integer and 18 fractional digits (wei), no exponent. The engines quantize
#: prices to 1e-12 within a 28-digit context, which a larger integer part would overflow.
MAX_INT_DIGITS, MAX_FRACTION_DIGITS = 15, 18
#: Timestamps: from the Unix epoch to the end of 2199 (UTC). Both databases, Python's datetime and the
#: engines' microsecond clocks hold this range with room on either side for any time zone offset.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
#: One event as JSON, one string anywhere in its ``data`` (keys too), and how deep ``data`` may nest.
MAX_EVENT_BYTES = 64 * 1024
MAX_STRING_CHARS = 4096
MAX_DATA_DEPTH = 16

_WALLET = re.compile(r"^0x[0-9a-fA-F]{40}$")
_DECIMAL_STR = re.compile(rf"^[0-9]{{1,{MAX_INT_DIGITS}}}(\.[0-9]{{1,{MAX_FRACTION_DIGITS}}})?$")
_TOKEN_ID = re.compile(r"^[0-9]{1,78}$")
ZERO_ADDRESS = "0x" + "0" * 40
_AMOUNT_RULE = (
    f"a non-negative decimal string such as '1.25': at most {MAX_INT_DIGITS} digits before the point "
    f"and {MAX_FRACTION_DIGITS} after it, no exponent"
)
_TIME_RULE = "must lie between 1970-01-01T00:00:00Z and 2200-01-01T00:00:00Z"


def _time_in_range(v: datetime) -> datetime:
    """A timestamp the engines and databases hold; naive ones are read as UTC."""
    # The year is checked before any conversion: year 1 minus an offset does not exist (OverflowError).
    if not EARLIEST.year - 1 <= v.year <= LATEST.year:
        raise ValueError(_TIME_RULE)
    if not EARLIEST <= (v if v.tzinfo is not None else v.replace(tzinfo=UTC)) < LATEST:
        raise ValueError(_TIME_RULE)
    return v


#: A timestamp within :data:`EARLIEST` .. :data:`LATEST`.
BoundedTime = Annotated[datetime, AfterValidator(_time_in_range)]


#: Unicode's control characters (category Cc) exactly: one regex pass instead of a lookup per character,
#: which was a third of decoding a chain log.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def normalize_id(value: Any) -> Any:
    """Ids compare as Unicode NFC: the NFD and NFC spellings of one id are one id."""
    if not isinstance(value, str):
        return value
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value if value.isascii() else unicodedata.normalize("NFC", value)


def check_json_value(value: Any, depth: int = 0) -> tuple[tuple[str | int, ...], str] | None:
    """Where and why a free-form JSON value (an event's ``data``) cannot be stored, or None: strings
    longer than :data:`MAX_STRING_CHARS` or holding NUL (which Postgres text refuses), non-finite
    numbers, nesting deeper than :data:`MAX_DATA_DEPTH`. Keys are checked as strings are."""
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            return (), f"at most {MAX_STRING_CHARS} characters"
        if "\x00" in value:
            return (), "must not contain NUL characters"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else ((), "must be a finite number")
    if isinstance(value, dict | list):
        if depth >= MAX_DATA_DEPTH:
            return (), f"nested deeper than {MAX_DATA_DEPTH} levels"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            bad = check_json_value(key, depth + 1) if isinstance(key, str) else None
            if bad is not None:
                return (), f"a key {bad[1]}"
            bad = check_json_value(item, depth + 1)
            if bad is not None:
                return (key, *bad[0]), bad[1]
    return None


class DataFieldError(ValueError):
    """A part of an event's ``data`` that cannot be stored; ``path`` leads to it from ``data``."""

    def __init__(self, path: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


class EventType(StrEnum):
    MINT = "mint"
    TRANSFER = "transfer"
    BURN = "burn"
    SALE = "sale"
    LISTING = "listing"
    LISTING_CANCELLED = "listing_cancelled"
    BID = "bid"
    METADATA_UPDATE = "metadata_update"
    FRAUD_FINDING = "fraud_finding"
    SOCIAL_SIGNAL = "social_signal"
    PRICE_TICK = "price_tick"
    #: Time passing for a collection: Pulse's clock appends one at each instant a figure moves with no
    #: event (a listing expires, the time-weighted floor's window slides, a new day).
    CLOCK = "clock"
    RETRACTION = "retraction"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


def _wallet(value: str) -> str:
    if not _WALLET.match(value):
        raise ValueError("must be a 0x-prefixed 20-byte hex address")
    return value.lower()


Wallet = Annotated[str, Field(min_length=42, max_length=42)]


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Price(BaseModel):
    """An amount in a currency, as a decimal string so that no precision is lost on the way in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: str
    currency: str = Field(min_length=2, max_length=12)

    @field_validator("amount")
    @classmethod
    def _amount(cls, v: str) -> str:
        if not _DECIMAL_STR.match(v):
            raise ValueError(f"must be {_AMOUNT_RULE}")
        try:
            Decimal(v)
        except InvalidOperation as exc:  # pragma: no cover - the regex already excludes this
            raise ValueError("must be a decimal string") from exc
        return v

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if not v.isalnum():
            raise ValueError("must be a currency symbol such as ETH or USDC")
        return v.upper()

    @property
    def value(self) -> Decimal:
        return Decimal(self.amount)


class _Transferish(_Data):
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    quantity: int = Field(default=1, ge=1, le=INT64_MAX)
    #: ``erc1155`` (or any quantity other than 1) makes the token's state balances per wallet, moved by
    #: ``quantity``; otherwise the token has one owner (ERC-721).
    standard: Literal["erc721", "erc1155"] | None = None

    @field_validator("from_", "to")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        return None if v is None else _wallet(v)


TraitValue = str | int | float | bool


class Attribute(BaseModel):
    """One entry of standard token metadata's ``attributes`` (OpenSea's metadata standard)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    trait_type: str | None = Field(default=None, max_length=200)
    value: TraitValue
    display_type: str | None = Field(default=None, max_length=64)


def traits_of(attributes: list[Attribute]) -> dict[str, TraitValue]:
    """The ``traits`` mapping that standard ``attributes`` describe: entries without a ``trait_type`` name
    no trait and are left out; of repeated trait types the last one counts."""
    return {a.trait_type: a.value for a in attributes if a.trait_type}


class _WithTraits(_Data):
    """Traits as Pulse's mapping (``traits``) or as standard metadata ``attributes``; given attributes and no
    mapping, the mapping is derived from them, so rarity reads one shape."""

    traits: dict[str, TraitValue] | None = None
    attributes: list[Attribute] | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _derive_traits(self) -> _WithTraits:
        if self.traits is None and self.attributes is not None:
            object.__setattr__(self, "traits", traits_of(self.attributes))
        return self


class MintData(_Transferish, _WithTraits):
    to: str


class TransferData(_Transferish):
    from_: str = Field(alias="from")
    to: str


class BurnData(_Transferish):
    from_: str = Field(alias="from")


class SaleData(_Transferish):
    from_: str = Field(alias="from")
    to: str
    price: Price
    marketplace: str | None = None


class ListingData(_Data):
    seller: str
    price: Price
    expires_at: BoundedTime | None = None
    marketplace: str | None = None

    _seller = field_validator("seller")(lambda cls, v: _wallet(v))


class ListingCancelledData(_Data):
    seller: str

    _seller = field_validator("seller")(lambda cls, v: _wallet(v))


class TraitCriteria(BaseModel):
    """The trait a trait offer asks for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(min_length=1, max_length=200)
    value: str = Field(max_length=MAX_STRING_CHARS)


class BidData(_Data):
    """An offer on a token (``token_id`` set), on any token of the collection (a collection offer) or on
    the tokens with a trait (``trait``). A bidder's newer offer replaces its older one; an amount of 0
    withdraws it. ``price`` is for ``quantity`` items (default 1)."""

    bidder: str
    price: Price
    expires_at: BoundedTime | None = None
    quantity: int | None = Field(default=None, ge=1, le=INT64_MAX)
    trait: TraitCriteria | None = None

    _bidder = field_validator("bidder")(lambda cls, v: _wallet(v))


class MetadataUpdateData(_WithTraits):
    @model_validator(mode="after")
    def _some_traits(self) -> MetadataUpdateData:
        if self.traits is None:
            raise ValueError("traits or attributes is required")
        return self


class FraudFindingData(_Data):
    finding_id: str = Field(min_length=1, max_length=200)
    kind: str = Field(min_length=1, max_length=64, description="wash_trading, stolen, plagiarism, ...")
    severity: Severity
    status: Literal["open", "resolved"] = "open"
    wallets: list[str] = Field(default_factory=list)
    evidence: dict[str, Any] = Field(default_factory=dict)
    detector: str | None = None

    @field_validator("wallets")
    @classmethod
    def _wallets(cls, v: list[str]) -> list[str]:
        return [_wallet(w) for w in v]


class SocialSignalData(_Data):
    platform: str = Field(min_length=1, max_length=64)
    metric: str = Field(min_length=1, max_length=64, description="mentions, sentiment, followers, ...")
    value: float = Field(allow_inf_nan=False)
    #: What the signal adds to the collection's ``attention`` (see ``domain.attention``); default 1.
    weight: float = Field(default=1.0, ge=0, le=1e9, allow_inf_nan=False)


class PriceTickData(_Data):
    """A market-feed quote. ``pair`` is BASE/QUOTE: ``USDC/ETH`` at ``rate`` converts USDC into ETH."""

    pair: str = Field(pattern=r"^[A-Za-z0-9]{2,12}/[A-Za-z0-9]{2,12}$")
    rate: str

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str) -> str:
        if not _DECIMAL_STR.match(v) or Decimal(v) <= 0:
            raise ValueError(f"must be positive, {_AMOUNT_RULE}")
        return v

    @field_validator("pair")
    @classmethod
    def _pair(cls, v: str) -> str:
        return v.upper()


class ClockData(_Data):
    """A clock event carries nothing but its instant (``occurred_at``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RetractedEvent(BaseModel):
    """The event a retraction takes back, by the (source, id) it was accepted under."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="the retracted event's source; absent: the retraction's own",
    )
    id: str = Field(min_length=1, max_length=200)

    _id = field_validator("id", mode="before")(lambda cls, v: normalize_id(v))


class RetractionData(_Data):
    """Takes back an event of the same collection (a log of an orphaned block, a delivery an Alchemy
    webhook re-sent with ``removed: true``): the state becomes what it would be had the event never been
    accepted. Retracting twice, or an event not seen yet, is harmless; the latter arrives as a no-op."""

    retracts: RetractedEvent
    reason: str | None = Field(default=None, max_length=200)


DATA_MODELS: dict[EventType, type[_Data]] = {
    EventType.MINT: MintData,
    EventType.TRANSFER: TransferData,
    EventType.BURN: BurnData,
    EventType.SALE: SaleData,
    EventType.LISTING: ListingData,
    EventType.LISTING_CANCELLED: ListingCancelledData,
    EventType.BID: BidData,
    EventType.METADATA_UPDATE: MetadataUpdateData,
    EventType.FRAUD_FINDING: FraudFindingData,
    EventType.SOCIAL_SIGNAL: SocialSignalData,
    EventType.PRICE_TICK: PriceTickData,
    EventType.CLOCK: ClockData,
    EventType.RETRACTION: RetractionData,
}

#: Event types that concern one token and therefore need ``token_id``.
TOKEN_EVENTS = frozenset(
    {
        EventType.MINT,
        EventType.TRANSFER,
        EventType.BURN,
        EventType.SALE,
        EventType.LISTING,
        EventType.LISTING_CANCELLED,
        EventType.METADATA_UPDATE,
    }
)


class Event(BaseModel):
    """One event as a producer sends it (schema version 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    id: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    type: EventType
    occurred_at: BoundedTime
    chain: str = Field(min_length=1, max_length=32, pattern=r"^[a-z0-9-]+$")
    contract: str
    token_id: str | None = None
    block_number: int | None = Field(default=None, ge=0, le=INT64_MAX)
    log_index: int | None = Field(default=None, ge=0, le=INT64_MAX)
    tx_hash: str | None = Field(default=None, max_length=80)
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v: Any) -> Any:
        return normalize_id(v)

    @field_validator("data")
    @classmethod
    def _storable(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = check_json_value(v)
        if bad is not None:
            raise DataFieldError(*bad)
        return v

    @field_validator("contract")
    @classmethod
    def _contract(cls, v: str) -> str:
        return _wallet(v)

    @field_validator("token_id")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        if v is not None and not _TOKEN_ID.match(v):
            raise ValueError("must be a decimal string of at most 78 digits")
        return None if v is None else str(int(v))

    @field_validator("occurred_at")
    @classmethod
    def _tz(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("must be an RFC 3339 timestamp with a time zone offset")
        return v.astimezone(UTC)

    @model_validator(mode="after")
    def _typed_data(self) -> Event:
        if self.type in TOKEN_EVENTS and self.token_id is None:
            raise ValueError(f"token_id is required for {self.type.value} events")
        try:
            parsed = DATA_MODELS[self.type].model_validate(self.data)
        except ValidationError as exc:
            # Re-raise with the path under ``data`` so the API can name the exact field.
            raise DataValidationError(exc) from None
        object.__setattr__(self, "data", parsed.model_dump(by_alias=True, mode="json", exclude_none=True))
        return self

    @property
    def typed_data(self) -> Any:
        return DATA_MODELS[self.type].model_validate(self.data)

    @property
    def collection_key(self) -> str:
        return collection_key(self.chain, self.contract)

    @property
    def nft_key(self) -> str | None:
        return None if self.token_id is None else nft_key(self.chain, self.contract, self.token_id)

    @property
    def order_key(self) -> tuple[int, int, str]:
        """Chain order where known (block, log index), else time: how events for one entity sort."""
        block = self.block_number if self.block_number is not None else -1
        log = self.log_index if self.log_index is not None else -1
        return (block, log, self.occurred_at.isoformat())


class DataValidationError(ValueError):
    """Wraps the errors of an event's ``data`` so that their locations can be prefixed with ``data``."""

    def __init__(self, inner: ValidationError) -> None:
        self.inner = inner
        super().__init__(
            "; ".join(f"data.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in inner.errors())
        )


def retraction_target(event: Event) -> tuple[str, str] | None:
    """The (source, id) a retraction takes back; None for any other event."""
    if event.type is not EventType.RETRACTION:
        return None
    ref = event.data["retracts"]
    return (ref.get("source") or event.source, normalize_id(ref["id"]))


def collection_key(chain: str, contract: str) -> str:
    return f"collection:{chain}:{contract.lower()}"


def nft_key(chain: str, contract: str, token_id: str) -> str:
    return f"nft:{chain}:{contract.lower()}:{token_id}"


def wallet_key(address: str) -> str:
    """A wallet's entity key: watched by wallet and portfolio subscriptions."""
    return f"wallet:{address.lower()}"


def creator_key(chain: str, address: str) -> str:
    """A creator's entity key (``creator:<chain>:<address>``), as creator subscriptions name it."""
    return f"creator:{chain}:{address.lower()}"


def field_errors(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Flatten a pydantic error (including nested ``data`` errors) into ``{loc, reason}`` items."""
    items: list[dict[str, Any]] = []
    for err in exc.errors():
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, DataValidationError):
            for sub in inner.inner.errors():
                items.append(
                    {
                        "field": ".".join(map(str, (*prefix, "data", *sub["loc"]))),
                        "reason": sub["msg"].removeprefix("Value error, "),
                    }
                )
            continue
        if isinstance(inner, DataFieldError):
            field = ".".join(map(str, (*prefix, "data", *inner.path)))
            items.append({"field": field, "reason": inner.reason})
            continue
        loc = tuple(x for x in err["loc"] if x not in ("function-after[_typed_data(), Event]",))
        field = ".".join(map(str, (*prefix, *loc))) or ".".join(map(str, prefix))
        msg = err["msg"].removeprefix("Value error, ")
        items.append({"field": field, "reason": msg})
    return items


def utcnow() -> datetime:
    return datetime.now(UTC)
