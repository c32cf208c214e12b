"""Pulse's own event schema (version 1): the contract between producers, the event log and the engines.

Pure: pydantic models and helpers only, no I/O. Every adapter (OpenSea, Alchemy, raw logs, fraud and
market feeds) converts its payload into :class:`Event` before it reaches the log.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1
MAX_BATCH = 1000

_WALLET = re.compile(r"^0x[0-9a-fA-F]{40}$")
_DECIMAL_STR = re.compile(r"^\d+(\.\d+)?$")
_TOKEN_ID = re.compile(r"^\d{1,78}$")
ZERO_ADDRESS = "0x" + "0" * 40


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
            raise ValueError("must be a non-negative decimal string such as '1.25'")
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
    quantity: int = Field(default=1, ge=1)

    @field_validator("from_", "to")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        return None if v is None else _wallet(v)


class MintData(_Transferish):
    to: str
    traits: dict[str, str | int | float | bool] | None = None


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
    expires_at: datetime | None = None
    marketplace: str | None = None

    _seller = field_validator("seller")(lambda cls, v: _wallet(v))


class ListingCancelledData(_Data):
    seller: str

    _seller = field_validator("seller")(lambda cls, v: _wallet(v))


class BidData(_Data):
    bidder: str
    price: Price
    expires_at: datetime | None = None

    _bidder = field_validator("bidder")(lambda cls, v: _wallet(v))


class MetadataUpdateData(_Data):
    traits: dict[str, str | int | float | bool]


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
    value: float


class PriceTickData(_Data):
    """A market-feed quote. ``pair`` is BASE/QUOTE: ``USDC/ETH`` at ``rate`` converts USDC into ETH."""

    pair: str = Field(pattern=r"^[A-Za-z0-9]{2,12}/[A-Za-z0-9]{2,12}$")
    rate: str

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str) -> str:
        if not _DECIMAL_STR.match(v) or Decimal(v) <= 0:
            raise ValueError("must be a positive decimal string")
        return v

    @field_validator("pair")
    @classmethod
    def _pair(cls, v: str) -> str:
        return v.upper()


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
    occurred_at: datetime
    chain: str = Field(min_length=1, max_length=32, pattern=r"^[a-z0-9-]+$")
    contract: str
    token_id: str | None = None
    block_number: int | None = Field(default=None, ge=0)
    log_index: int | None = Field(default=None, ge=0)
    tx_hash: str | None = Field(default=None, max_length=80)
    data: dict[str, Any] = Field(default_factory=dict)

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
        loc = tuple(x for x in err["loc"] if x not in ("function-after[_typed_data(), Event]",))
        field = ".".join(map(str, (*prefix, *loc))) or ".".join(map(str, prefix))
        msg = err["msg"].removeprefix("Value error, ")
        items.append({"field": field, "reason": msg})
    return items


def utcnow() -> datetime:
    return datetime.now(UTC)
