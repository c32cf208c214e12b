"""Alerts that need no rule: a fraud finding (opened, updated or resolved) and a wallet's trades, listings
and transfers. Recalculation turns the batch's applied events into such changes (:func:`alert_changes`),
saved with the batch's metric changes; detection notifies them to everyone watching (or holding) what they
concern (``activities.notify.detection``).

A finding's change is keyed by its subject (the NFT, else the collection) with metric
``domain.rules.FINDING_METRIC``; an activity's change by the wallet (``wallet:<address>``) with metric
``domain.rules.ACTIVITY_METRIC``. Their ``after`` is a JSON object naming what happened; ``before`` is the
finding's status ahead of the batch (None for a new finding).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nftpulse.domain.book import CollectionBook
from nftpulse.domain.changes import MetricChange
from nftpulse.domain.events import ZERO_ADDRESS, Event, EventType, creator_key, wallet_key
from nftpulse.domain.rules import ACTIVITY_METRIC, FINDING_METRIC

#: Evidence items shown per finding; a producer may send far more than a message can carry.
MAX_EVIDENCE = 10

_SIDES: dict[EventType, tuple[tuple[str, str, str | None], ...]] = {
    # (data field naming the wallet, its role, data field naming the counterparty)
    EventType.SALE: (("from", "seller", "to"), ("to", "buyer", "from")),
    EventType.TRANSFER: (("from", "sender", "to"), ("to", "recipient", "from")),
    EventType.MINT: (("to", "recipient", None),),
    EventType.BURN: (("from", "sender", None),),
    EventType.LISTING: (("seller", "lister", None),),
    EventType.LISTING_CANCELLED: (("seller", "lister", None),),
}


def alert_changes(
    book: CollectionBook, events: Iterable[Event], before: Mapping[str, str | None]
) -> list[MetricChange]:
    """The finding and wallet-activity changes of ``events`` (applied to ``book``, in order).

    ``before``: each finding's status ahead of the batch (:func:`finding_statuses`). A finding event that
    lost its race (an older report arriving after a newer one) says nothing: the book kept the newer.
    """
    out: list[MetricChange] = []
    for event in events:
        if event.type == EventType.FRAUD_FINDING:
            change = _finding(book, event, before)
            if change is not None:
                out.append(change)
        elif event.type in _SIDES and event.nft_key is not None:
            out += _activity(event, event.nft_key)
    return out


def finding_statuses(book: CollectionBook, events: Iterable[Event]) -> dict[str, str | None]:
    """The current status of each finding the events name (None: not known yet); read before applying."""
    out: dict[str, str | None] = {}
    for event in events:
        if event.type == EventType.FRAUD_FINDING:
            fid = str(event.data.get("finding_id"))
            if fid not in out:
                current = book.findings.get(fid)
                out[fid] = None if current is None else current.status
    return out


def _finding(book: CollectionBook, event: Event, before: Mapping[str, str | None]) -> MetricChange | None:
    data = event.data
    fid = str(data["finding_id"])
    uid = f"{event.source}:{event.id}"
    if book.finding_uids.get(fid) != uid:
        return None
    subject = event.nft_key or event.collection_key
    after: dict[str, Any] = {
        "finding_id": fid,
        "kind": str(data["kind"]),
        "severity": str(data["severity"]),
        "status": str(data.get("status", "open")),
        "detector": data.get("detector") or event.source,
        "wallets": [str(w) for w in data.get("wallets") or ()],
        "evidence": evidence_lines(data.get("evidence") or {}),
        "event": f"{event.source}/{event.id}",
        "collection": event.collection_key,
        "creator": creator_key(event.chain, book.creator) if book.creator else None,
    }
    return MetricChange(subject, FINDING_METRIC, before.get(fid), after)


def evidence_lines(evidence: Mapping[str, Any]) -> list[str]:
    """A finding's evidence object as short lines (``key: value``), at most :data:`MAX_EVIDENCE`."""
    lines = []
    for key, value in list(evidence.items())[:MAX_EVIDENCE]:
        text = value if isinstance(value, str) else str(value)
        lines.append(f"{key.replace('_', ' ')}: {text}"[:300])
    return lines


def _activity(event: Event, nft: str) -> list[MetricChange]:
    data = event.data
    price = data.get("price") if isinstance(data.get("price"), dict) else None
    out = []
    for field, role, other in _SIDES[event.type]:
        wallet = data.get(field)
        if not isinstance(wallet, str) or wallet == ZERO_ADDRESS:
            continue
        counterparty = data.get(other) if other else None
        after = {
            "type": event.type.value,
            "role": role,
            "wallet": wallet,
            "nft_key": nft,
            "counterparty": counterparty if counterparty != ZERO_ADDRESS else None,
            "price": price["amount"] if price else None,
            "currency": price["currency"] if price else None,
            "event_id": f"{event.source}/{event.id}",
        }
        out.append(MetricChange(wallet_key(wallet), ACTIVITY_METRIC, None, after))
    return out
