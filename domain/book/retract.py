"""Retractions: what counts of a collection's log once some of its events are taken back. Pure.

A retraction (``EventType.RETRACTION``) names an event of its collection by (source, id). The state is
defined as the fold of the collection's *effective* events (:func:`effective`): every event no retraction
names, retractions themselves left out. That does not depend on the order in which an event and its
retraction arrive, nor on how often either arrives.

Applying a batch incrementally (:func:`plan_batch`): an event a retraction named earlier (or in the same
batch) is skipped; a retraction of an event whose effect is already in the state undoes it by refolding
the collection from its effective log, which is exact by construction and costs a recompute only when a
retraction actually meets an applied event, so ordinary batches pay one type check per event.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nftpulse.domain.book.state import Change
from nftpulse.domain.events import Event, EventType, retraction_target

if TYPE_CHECKING:
    from nftpulse.domain.book.views import BookViews

#: An event as the log knows it: (source, id).
EventRef = tuple[str, str]

#: The metrics of an NFT's headline a refold reports moves of (``Change.metrics``).
_NFT_METRICS = ("owner", "trust", "risk", "price_estimate", "rarity_rank")
#: Collection figures that are bookkeeping rather than something a reader is told about.
_QUIET = frozenset(
    {"day", "anomaly_z", "trust_factors", "risk_reasons", "open_findings", "age_days", "clean_sales"}
)


def ref(event: Event) -> EventRef:
    return (event.source, event.id)


def effective(events: Iterable[Event]) -> list[Event]:
    """The events that count: those no retraction among ``events`` names, retractions left out."""
    events = list(events)
    retracted = {target for e in events if (target := retraction_target(e)) is not None}
    if not retracted and all(e.type is not EventType.RETRACTION for e in events):
        return events
    return [e for e in events if e.type is not EventType.RETRACTION and ref(e) not in retracted]


@dataclass
class RetractionPlan:
    """How one batch of a collection's events meets the retractions."""

    #: Ordinary events to fold in, in the batch's order.
    apply: list[Event] = field(default_factory=list)
    #: Events a retraction named before they were applied: no-ops.
    skipped: list[Event] = field(default_factory=list)
    #: Events whose effect is in the state and that a retraction of this batch names: the collection is
    #: refolded without them.
    undone: list[EventRef] = field(default_factory=list)
    #: The batch's retractions, with the event each names.
    retractions: list[tuple[Event, EventRef]] = field(default_factory=list)

    @property
    def refold(self) -> bool:
        return bool(self.undone)


def plan_batch(
    batch: Sequence[Event], retracted: Collection[EventRef], applied: Collection[EventRef]
) -> RetractionPlan:
    """Sort a batch against what the store knows: ``retracted``, the events retractions named before this
    batch (arrived or not); ``applied``, those of the events the batch's retractions name whose effect is
    in the state (and not undone yet)."""
    plan = RetractionPlan()
    named: set[EventRef] = set()
    for event in batch:
        target = retraction_target(event)
        if target is not None:
            plan.retractions.append((event, target))
            named.add(target)
    if not named and not retracted:
        plan.apply = list(batch)
        return plan
    for event in batch:
        if event.type is EventType.RETRACTION:
            continue
        key = ref(event)
        if key in named or key in retracted:
            plan.skipped.append(event)
        else:
            plan.apply.append(event)
    plan.undone = sorted(t for t in named if t in applied and t not in retracted)
    return plan


def refold_change(before: BookViews, after: BookViews) -> Change:
    """What a refold moved: every view is rewritten (a refold may move any figure) and the headline
    metrics that differ are reported, so the change feed carries the reversal as it carries any move."""
    change = Change(collection=True, all_nfts=True)
    change.nfts = set(after.tokens)
    was, now = before._collection_headline(), after._collection_headline()
    for metric in sorted(set(was) | set(now)):
        if metric not in _QUIET:
            change.note(after.key, metric, was.get(metric), now.get(metric))
    for token_id in sorted(set(before.tokens) | set(after.tokens)):
        old = before._nft_headline(token_id) if token_id in before.tokens else {}
        new = after._nft_headline(token_id) if token_id in after.tokens else {}
        for metric in _NFT_METRICS:
            change.note(after.nft_key(token_id), metric, old.get(metric), new.get(metric))
    return change


#: What :func:`retraction_of` appends to the retracted event's id.
RETRACTION_SUFFIX = "~retracted"


def retraction_of(event: Event, reason: str, block_hash: str | None = None) -> Event:
    """The retraction of ``event``, under its source and an id derived from its own (``<id>~retracted``), so
    that retracting one event twice (a reorganisation seen twice) is one retraction. It names the event's
    collection and token, by which it is routed and its changes are attributed, and, when known, the hash
    of the block that left the chain (``data.block_hash``)."""
    data: dict[str, object] = {"retracts": {"source": event.source, "id": event.id}, "reason": reason}
    if block_hash:
        data["block_hash"] = block_hash
    return Event(
        id=event.id + RETRACTION_SUFFIX,
        source=event.source,
        type=EventType.RETRACTION,
        occurred_at=event.occurred_at,
        chain=event.chain,
        contract=event.contract,
        token_id=event.token_id,
        block_number=event.block_number,
        log_index=event.log_index,
        tx_hash=event.tx_hash,
        data=data,
    )
