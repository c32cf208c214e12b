"""Event classification and priority. Pure: no I/O.

``classify(event, ctx)`` names the event's kind and category, the entities it touches (NFT, collection,
creator, wallets), its urgency, an impact estimate and a priority 0-100 whose parts are explained:

    priority = 100 * clamp(0.35 * urgency + 0.25 * impact + 0.15 * watchers + 0.10 * reliability
                           + boost + aging, 0, 1)

* urgency: by kind (fraud findings by severity; a resolution is less urgent than an opening);
* impact: value moved relative to the collection floor, ``0.5 * min(ratio, 2) / 2 + 0.5 * min(|ratio -
  1|, 1)`` with ``ratio = price / floor`` (a token-sized ownership change counts as one floor; without a
  floor a fixed small share); a collection-wide fraud finding is 1, one about a token 0.5;
* watchers: ``1 - 1 / (1 + watchers / 10)``, saturating as more users watch the touched entities;
* reliability: the source's reliability in [0, 1];
* boost: open critical (+0.25) or high (+0.15) fraud findings, and price moves of at least
  ``thresholds.large_move`` against the floor (+0.10);
* aging: ``+aging_step`` per ``aging_period_s`` waited, up to ``max_aging``, so that a waiting
  low-priority event always climbs and is never starved.

An event is ``significant`` when it is a fraud finding or its priority reaches
``thresholds.significant_priority``.

An event is classified once, when it is accepted; aging is the only part that moves afterwards, and
:func:`aged` adds it to the priority classified then (the dispatcher does, when it routes the event).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from nftpulse.domain.book import normalise_currency, quote_currency
from nftpulse.domain.events import (
    ZERO_ADDRESS,
    Event,
    EventType,
    collection_key,
    creator_key,
    nft_key,
    wallet_key,
)

URGENCY: dict[EventType, float] = {
    EventType.FRAUD_FINDING: 0.9,
    EventType.SALE: 0.6,
    EventType.LISTING: 0.45,
    EventType.BURN: 0.4,
    EventType.METADATA_UPDATE: 0.4,
    EventType.TRANSFER: 0.35,
    EventType.LISTING_CANCELLED: 0.35,
    EventType.MINT: 0.3,
    EventType.BID: 0.3,
    EventType.PRICE_TICK: 0.25,
    EventType.SOCIAL_SIGNAL: 0.2,
    EventType.CLOCK: 0.3,
    # As urgent as a sale: what it undoes may have been alerted on.
    EventType.RETRACTION: 0.6,
}
FRAUD_URGENCY = {"critical": 1.0, "high": 0.9, "medium": 0.6, "low": 0.4}
CATEGORY: dict[EventType, str] = {
    EventType.MINT: "ownership",
    EventType.TRANSFER: "ownership",
    EventType.BURN: "ownership",
    EventType.SALE: "trade",
    EventType.LISTING: "order",
    EventType.LISTING_CANCELLED: "order",
    EventType.BID: "order",
    EventType.METADATA_UPDATE: "metadata",
    EventType.FRAUD_FINDING: "fraud",
    EventType.SOCIAL_SIGNAL: "social",
    EventType.PRICE_TICK: "market_data",
    EventType.CLOCK: "time",
    EventType.RETRACTION: "correction",
}
WEIGHTS = {"urgency": 0.35, "impact": 0.25, "watchers": 0.15, "reliability": 0.10}


@dataclass(frozen=True)
class Thresholds:
    """Knobs of priority and significance.

    The two an operator tunes have no default here: their values are settings
    (``PULSE_SIGNIFICANT_PRIORITY``, ``PULSE_LARGE_MOVE``), which the entry points pass in.
    """

    #: Priority (0-100) from which an event is significant (a workflow of its own).
    significant_priority: float
    #: A price this far off the floor (relative) boosts an event's priority.
    large_move: float
    aging_period_s: float = 60.0
    aging_step: float = 0.02
    max_aging: float = 0.6


@dataclass(frozen=True)
class ClassifyContext:
    """What classification needs to know beyond the event itself."""

    thresholds: Thresholds
    floor: Decimal | None = None
    watchers: int = 0
    source_reliability: float = 1.0
    waited_s: float = 0.0
    #: Converts a price into the collection's quote currency (``RateLookup``); None: same currency only.
    rates: Callable[[str, str, datetime], Decimal | None] | None = None
    creator: str | None = None


@dataclass(frozen=True)
class Classification:
    """The verdict on one event, with every part of the priority explained."""

    kind: str
    category: str
    entities: dict[str, Any]
    urgency: float
    impact: float
    priority: float
    priority_class: str
    significant: bool
    parts: list[dict[str, Any]]

    @property
    def entity_keys(self) -> list[str]:
        """Every touched entity key (collection, NFT, creator, wallets)."""
        keys = [self.entities["collection"]]
        if self.entities.get("nft"):
            keys.append(self.entities["nft"])
        if self.entities.get("creator"):
            keys.append(self.entities["creator"])
        return keys + list(self.entities["wallets"])


def priority_class(score: float) -> str:
    """``critical`` from 80, ``high`` from 60, ``normal`` from 30, else ``low``."""
    if score >= 80:
        return "critical"
    if score >= 60:
        return "high"
    if score >= 30:
        return "normal"
    return "low"


def _wallets(event: Event) -> list[str]:
    data = event.data
    found: list[str] = []
    for name in ("from", "to", "seller", "bidder", "buyer_funder", "seller_funder"):
        value = data.get(name)
        if isinstance(value, str) and value.startswith("0x") and value.lower() != ZERO_ADDRESS:
            found.append(value.lower())
    found += [w.lower() for w in data.get("wallets", []) if isinstance(w, str)]
    return sorted({wallet_key(w) for w in found})


def _price_in_quote(event: Event, ctx: ClassifyContext) -> Decimal | None:
    price = event.data.get("price")
    if not isinstance(price, dict):
        return None
    amount = Decimal(price["amount"])
    currency, quote = normalise_currency(price["currency"]), quote_currency(event.chain)
    if currency == quote:
        return amount
    rate = None if ctx.rates is None else ctx.rates(currency, quote, event.occurred_at)
    return None if rate is None else amount * rate


def aging(waited_s: float, th: Thresholds) -> float:
    """The aging part (0 to ``max_aging``) of an event that has waited ``waited_s`` seconds."""
    return min(th.max_aging, max(0.0, waited_s) / th.aging_period_s * th.aging_step)


def aged(priority: float, waited_s: float, th: Thresholds) -> float:
    """The priority of an event classified (with no wait) at ``priority`` once it has waited ``waited_s``:
    the aging part added on, as :func:`classify` would add it (to the hundredth). It orders work within a
    path (which shard is woken first); it never decides significance (:func:`is_significant`)."""
    return round(min(100.0, max(0.0, priority) + 100.0 * aging(waited_s, th)), 2)


def is_significant(kind: str, priority: float, th: Thresholds) -> bool:
    """Fraud findings, and events whose priority *without aging* reaches ``significant_priority``: what
    an event is decides its path, not how long it waited (under a backlog every routine event would
    otherwise end up on the dearest path)."""
    return kind == EventType.FRAUD_FINDING.value or priority >= th.significant_priority


def classify(event: Event, ctx: ClassifyContext) -> Classification:
    """Kind, entities, urgency, impact and an explained priority for one event."""
    th = ctx.thresholds
    parts: list[dict[str, Any]] = []
    data = event.data

    urgency = URGENCY[event.type]
    severity = str(data.get("severity", "")) if event.type == EventType.FRAUD_FINDING else ""
    is_open = data.get("status", "open") == "open"
    if event.type == EventType.FRAUD_FINDING:
        urgency = FRAUD_URGENCY.get(severity, 0.6) if is_open else 0.5
    parts.append(
        _part(
            "urgency", urgency, WEIGHTS["urgency"], f"{event.type.value}{' ' + severity if severity else ''}"
        )
    )

    price = _price_in_quote(event, ctx)
    ratio: float | None = None
    if event.type == EventType.FRAUD_FINDING:
        impact = 1.0 if event.token_id is None and not data.get("wallets") else 0.5
        why = "collection-wide finding" if impact == 1.0 else "finding about a token or wallets"
    elif price is not None and ctx.floor is not None and ctx.floor > 0:
        ratio = float(price / ctx.floor)
        impact = 0.5 * min(ratio, 2.0) / 2.0 + 0.5 * min(abs(ratio - 1.0), 1.0)
        why = f"price is {ratio:.2f}x the floor"
    elif event.type in (EventType.MINT, EventType.TRANSFER, EventType.BURN):
        impact = 0.25 if ctx.floor is not None else 0.1
        why = "one token changes hands (about one floor)"
    elif event.type == EventType.METADATA_UPDATE:
        impact, why = 0.2, "traits change: rarity of the token's buckets moves"
    else:
        impact, why = 0.1, "no floor to compare with"
    parts.append(_part("impact", impact, WEIGHTS["impact"], why))

    watch = 1.0 - 1.0 / (1.0 + max(0, ctx.watchers) / 10.0)
    parts.append(
        _part("watchers", watch, WEIGHTS["watchers"], f"{ctx.watchers} watcher(s) of the touched entities")
    )
    reliability = min(1.0, max(0.0, ctx.source_reliability))
    parts.append(_part("reliability", reliability, WEIGHTS["reliability"], f"source {event.source}"))

    boost = 0.0
    if event.type == EventType.FRAUD_FINDING and is_open and severity in ("critical", "high"):
        boost += 0.25 if severity == "critical" else 0.15
        parts.append(
            _part("boost", 1.0, 0.25 if severity == "critical" else 0.15, f"open {severity} fraud finding")
        )
    if ratio is not None and abs(ratio - 1.0) >= th.large_move:
        boost += 0.10
        parts.append(_part("boost", 1.0, 0.10, f"price move of {ratio - 1.0:+.0%} against the floor"))

    parts.append(_part("aging", aging(ctx.waited_s, th), 1.0, f"waited {ctx.waited_s:.0f}s"))

    raw = sum(p["points"] for p in parts) / 100.0
    priority = round(100.0 * min(1.0, max(0.0, raw)), 2)
    unaged = round(100.0 * min(1.0, max(0.0, raw - aging(ctx.waited_s, th))), 2)
    entities = {
        "collection": collection_key(event.chain, event.contract),
        "nft": None if event.token_id is None else nft_key(event.chain, event.contract, event.token_id),
        "creator": None,
        "wallets": _wallets(event),
    }
    creator = data.get("creator") if isinstance(data.get("creator"), str) else ctx.creator
    if creator:
        entities["creator"] = creator_key(event.chain, creator)
    return Classification(
        kind=event.type.value,
        category=CATEGORY[event.type],
        entities=entities,
        urgency=urgency,
        impact=round(impact, 6),
        priority=priority,
        priority_class=priority_class(priority),
        significant=is_significant(event.type.value, unaged, th),
        parts=parts,
    )


def _part(name: str, value: float, weight: float, explanation: str) -> dict[str, Any]:
    return {
        "part": name,
        "value": round(value, 6),
        "weight": weight,
        "points": round(100.0 * value * weight, 4),
        "explanation": explanation,
    }
