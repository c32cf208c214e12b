"""Folding events into a collection book: ``apply`` and ``apply_batch``, what they report as moved past
the epsilons (:class:`~nftpulse.domain.book.state.Change`), and each event type's handler. Pure."""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Sequence
from decimal import Decimal, localcontext
from typing import Any

from nftpulse.domain import attention as attention_engine
from nftpulse.domain.book.state import (
    EVENT_ERRORS,
    NFT_DRIVERS,
    Change,
    InconsistentEventError,
    RateLookup,
    Stamp,
    Token,
    _entry_sort_key,
    _newer,
    _sale_order,
    canonical_amount,
    listing_rank,
    stamp,
)
from nftpulse.domain.book.views import BookViews
from nftpulse.domain.events import ZERO_ADDRESS, Event, EventType
from nftpulse.domain.rarity import RarityIndex, RarityPlan, Traits, canonical_traits
from nftpulse.domain.significance import moved
from nftpulse.domain.stats import (
    DAY_US,
    Interval,
    ListingEntry,
    first_difference,
    listing_interval,
    to_us,
    utc_iso,
)
from nftpulse.domain.trust import Finding, SaleRecord

#: Headline metrics and the epsilon rule each is compared with (None: any change).
_COLLECTION_RULES: dict[str, tuple[str | None, str | None]] = {
    "floor": ("rel", "floor_rel"),
    "twap_floor": ("rel", "twap_rel"),
    "volume": ("rel", "volume_rel"),
    "sales_count": (None, None),
    "holders_count": (None, None),
    "supply": (None, None),
    "listed_count": (None, None),
    "top10_share": ("abs", "share_abs"),
    "gini": ("abs", "share_abs"),
    "wash_share": ("abs", "share_abs"),
    "trust": ("abs", "trust_abs"),
    "risk": (None, None),
    "trend": (None, None),
    "anomaly": (None, None),
    "anomaly_z": ("zmap", "z_abs"),
    "trust_factors": ("zmap", "trust_abs"),
    "risk_reasons": (None, None),
    "open_findings": (None, None),
    "age_days": (None, None),
    "clean_sales": (None, None),
    "verified_creator": (None, None),
    "rarity_entropy": ("rel", "entropy_rel"),
    "best_offer": ("rel", "floor_rel"),
    "best_offer_id": (None, None),
    "trait_offers": (None, None),
    "attention": ("rel", "attention_rel"),
    "day": (None, None),
}
#: Cost of indexing one (token, attribute) pair in a rebuild against moving one token in a plan, and a
#: plan's own cost whatever it moves, in the same unit. Measured (``bench/rarity_choice.py``): a rebuild
#: of 10,000 tokens takes about as long as 1.5 whole-token reveals planned, or 5 one-trait updates; in a
#: collection of 10 a rebuild takes half a plan.
REBUILD_WEIGHT = 0.75
PLAN_OVERHEAD = 100

_HIDDEN_METRICS = frozenset(
    {
        "best_offer_id",
        "trait_offers",
        "day",
        "anomaly_z",
        "trust_factors",
        "risk_reasons",
        "open_findings",
        "age_days",
        "clean_sales",
    }
)


class BookFold(BookViews):
    """Events folded into a book's state."""

    # -- applying events ---------------------------------------------------------------------------

    def apply(self, event: Event, rates: RateLookup) -> Change:
        """Fold one event in and report what moved past the epsilons; raises what the event raises.

        The book is left as it was when the event raises one of :data:`EVENT_ERRORS`.
        """
        if self._bulk:
            self._fold(event, rates)
            return Change()
        change, failed = self.apply_batch([event], rates)
        if failed:
            raise failed[0][1]
        return change

    def apply_batch(
        self, events: Sequence[Event], rates: RateLookup
    ) -> tuple[Change, list[tuple[Event, Exception]]]:
        """Fold ``events`` in the given order and report what the whole batch moved past the epsilons.

        Returns the merged :class:`Change` and the events that raised one of :data:`EVENT_ERRORS`
        (a price without a rate, an event of another collection, malformed data) with their errors.
        Such an event is read in full before anything is changed, so it leaves the book exactly as
        if it had never been applied, and the rest of the batch goes on.

        The headline metrics are compared once per batch rather than once per event: the collection
        headline and the rarity publisher after the last event, each NFT's headline before the first
        and after the last. ``before`` in ``Change.metrics`` is the value ahead of the batch; a move
        that a later event of the batch undoes is not reported. With one event this is exactly
        :meth:`apply`.
        """
        failed: list[tuple[Event, Exception]] = []
        if self._bulk:
            for event in events:
                try:
                    self._fold(event, rates)
                except EVENT_ERRORS as exc:
                    failed.append((event, exc))
            return Change(), failed
        # Every token whose own inputs the batch may change, read against the book as it is now: a
        # token an earlier event moves into a wallet a later finding names is an event's token itself.
        owns = [self._own_tokens(event) for event in events]
        candidates = set().union(*owns)
        before = {tid: self._nft_headline(tid) for tid in candidates if tid in self.tokens}
        # Listings and tokens' own offers the batch's clock will pass (a clock event's whole point): their
        # tokens' views show them, so they are rewritten although no event names them.
        latest = max((event.occurred_at.isoformat() for event in events), default=None)
        lapsing = (
            self.lapsing_by(latest)
            if latest is not None and (self.clock is None or latest > self.clock)
            else {}
        )
        # Rarity is brought up to date once, after the batch: the tokens whose liveness or traits an
        # event changed, in order, and the live-token counts the batch passed through (rank epsilons).
        pending: dict[str, None] = {}
        self._rarity_pending = pending
        sizes = [self._d.rarity.n]
        live_now = sizes[0]
        # Only the tokens of events that were folded are compared: a batch with a failing event then
        # reports exactly what the batch without it reports.
        own: set[str] = set()
        try:
            for event, mine in zip(events, owns, strict=True):
                try:
                    moved_live = self._fold(event, rates)
                except EVENT_ERRORS as exc:
                    failed.append((event, exc))
                    continue
                if moved_live:
                    live_now += moved_live
                    sizes.append(live_now)
                own |= mine
                if event.type == EventType.FRAUD_FINDING:
                    # A finding that lost its race leaves the winner's wallets: their holders are own too.
                    own |= self._own_tokens(event)
        finally:
            self._rarity_pending = None
        eps = self.epsilons
        plans, examine_all = self._update_rarity(pending)
        change = Change()
        if len(failed) == len(events):
            return change, failed

        after = self._collection_headline()
        if not self.published:
            self.published = {k: None for k in after}
        drivers = False
        for metric, value in after.items():
            kind, name = _COLLECTION_RULES[metric]
            threshold = None if name is None else getattr(eps, name)
            shown = self.published.get(metric)
            if moved(
                shown,
                value,
                rel=threshold if kind == "rel" else None,
                abs_=threshold if kind == "abs" else None,
            ):
                self.published[metric] = value
                change.collection = True
                drivers |= metric in NFT_DRIVERS
                if metric not in _HIDDEN_METRICS:
                    change.note(self.key, metric, shown, value)
        if drivers:
            # Every NFT view derives its driven figures (trust, risk, price estimate, best offer) from the
            # collection's factors when it is read, so none is rewritten for this; what each last reported
            # is no longer what it shows.
            change.all_nfts = True
            self._d.nft_shown.clear()
        factors = self.nft_factors()
        if factors != self._d.factors_written:
            # The collection's row carries the factors: rewritten whenever they change at all, so a read
            # derives each NFT's figures exactly as the book holds them.
            change.collection = True
            self._d.factors_written = factors
        # Only what the clock the batch reached lapsed: a failed event's later time moved nothing.
        reached = self.clock or ""
        change.nfts |= {t for t, at in lapsing.items() if at <= reached and t not in own and t in self.tokens}
        if self._d.whole_rows:
            change.nfts |= set(self.tokens)
            self._d.whole_rows = False

        rarity = self._d.rarity
        # The smallest rank epsilon of any size the batch passed through: the drift bound stays an upper
        # bound, and the publication threshold does not depend on how rarity was brought up to date.
        rank_eps = min(eps.rank_eps(n) for n in [*sizes, rarity.n])
        settled = self._d.publisher.settle_batch(
            rarity, plans, eps.rarity_score_abs, rank_eps, examine_all=examine_all
        )
        for token_id, (shown_r, now_r) in settled.items():
            change.nfts.add(token_id)
            change.note(self.nft_key(token_id), "rarity_rank", shown_r and shown_r[1], now_r and now_r[1])
            change.note(self.nft_key(token_id), "rarity_score", shown_r and shown_r[0], now_r and now_r[0])

        for token_id in own:
            if token_id not in self.tokens:
                continue
            now_h = self._nft_headline(token_id)
            was = before.get(token_id)
            entity = self.nft_key(token_id)
            dirty = was is None or was["_core"] != now_h["_core"]
            # What the token's written view shows, when known: small moves batch after batch add up
            # against it, not only against the figures ahead of this batch.
            seen = self._d.nft_shown.get(token_id)
            for metric in ("owner", "trust", "risk", "price_estimate", "rarity_rank"):
                old = None if was is None else was[metric]
                new = now_h[metric]
                if metric == "trust":
                    hit = moved(old, new, abs_=eps.trust_abs)
                    if not hit and seen is not None and moved(seen[0], new, abs_=eps.trust_abs):
                        hit, old = True, seen[0]
                elif metric == "price_estimate":
                    hit = moved(old, new, rel=eps.price_rel)
                    if not hit and seen is not None and moved(seen[2], new, rel=eps.price_rel):
                        hit, old = True, seen[2]
                elif metric == "rarity_rank":
                    hit = False  # the publisher above decides rank significance
                else:
                    hit = moved(old, new)
                    if not hit and metric == "risk" and seen is not None and seen[1] != new:
                        hit, old = True, seen[1]
                if hit:
                    dirty = True
                    change.note(entity, metric, old, new)
            if dirty:
                change.nfts.add(token_id)
                # What is reported of the token now: later small moves add up against it until one
                # passes its epsilon.
                self._d.nft_shown[token_id] = (now_h["trust"], now_h["risk"], now_h["price_estimate"])
        return change, failed

    def _own_tokens(self, event: Event) -> set[str]:
        """Tokens whose own inputs an event may change (the token, holdings of wallets a finding names)."""
        own: set[str] = set()
        if event.token_id is not None:
            own.add(event.token_id)
        if event.type == EventType.FRAUD_FINDING:
            holdings = self._d.holdings
            previous = self.findings.get(str(event.data.get("finding_id")))
            if previous is not None:
                if previous.token_id is not None:
                    own.add(previous.token_id)
                for wallet in previous.wallets:
                    if isinstance(wallet, str):
                        own |= holdings.get(wallet, set())
            wallets = event.data.get("wallets") or ()
            # Only strings can name a holder; anything else is left to the fold to reject.
            for wallet in wallets if isinstance(wallets, list | tuple) else ():
                if isinstance(wallet, str):
                    own |= holdings.get(wallet, set())
        return own

    def _update_rarity(self, pending: dict[str, None]) -> tuple[list[RarityPlan], bool]:
        """Bring the rarity index up to date with the tokens a batch changed: token by token (a plan
        each) or, when that costs more, rebuilt from the live tokens. Returns the plans committed and
        whether the index was rebuilt (then every token is examined for publication).

        A plan moves every token sharing a bucket with the changed one, and commits with a re-sort once
        hundreds move: in a mint-out nearly every token shares the trait-count bucket, so per-token
        plans made a mint-out quadratic. A rebuild costs one pass over the live tokens whatever the
        number of changes, so a batch of many changes in a big collection costs what one does. Both
        give the same integers (see ``domain.rarity``), hence the same reads and publications.
        """
        rarity = self._d.rarity
        changed: list[Token] = []
        canonical: dict[str, dict[str, str]] = {}
        for tid in pending:
            token = self.tokens[tid]
            indexed = rarity.traits.get(tid)
            if token.live:
                canonical[tid] = now = canonical_traits(token.traits)
                if now != indexed:
                    changed.append(token)
            elif indexed is not None:
                changed.append(token)
        if not changed:
            return [], False
        # Costs in tokens moved, against the collection as it will be after the batch (a mint-out's
        # first batch starts from an empty index).
        n1 = rarity.n + sum(token.live - (token.token_id in rarity.traits) for token in changed)
        attributes = max([rarity.attributes, *map(len, canonical.values())])
        rebuild_cost = max(1, n1) * (attributes + 2) * REBUILD_WEIGHT
        plan_cost = 0.0
        for token in changed:
            moves = _plan_moves(rarity, rarity.traits.get(token.token_id), canonical.get(token.token_id), n1)
            plan_cost += PLAN_OVERHEAD + moves + (n1 if moves > 256 else 0)
            if plan_cost > rebuild_cost:
                known = rarity.traits
                self._d.rarity = RarityIndex.build(
                    {tid: canonical.get(tid) or known[tid] for tid, t in self.tokens.items() if t.live},
                    canonical=True,
                )
                return [], True
        plans: list[RarityPlan] = []
        for token in changed:
            plan = rarity.plan(token.token_id, token.traits, live=token.live)
            rarity.commit(plan)
            plans.append(plan)
        return plans, False

    def _fold(self, event: Event, rates: RateLookup) -> int:
        """Fold the event's facts; maintain indexes unless in bulk mode. Returns how the number of live
        tokens moved (-1, 0 or +1).

        Everything that can raise on the event's data (a missing field, a price without a rate, a
        malformed timestamp) is read first by the type's ``_PREPARE`` step; only then is anything
        changed, so a failing event leaves no trace and no snapshot is needed.
        """
        if event.chain != self.chain or event.contract != self.contract:
            raise InconsistentEventError(f"event for {event.collection_key} applied to {self.key}")
        if event.type is EventType.RETRACTION:
            # Folded, it would move the clock: a retraction acts on the log (``retract.plan_batch``).
            raise InconsistentEventError("a retraction is not folded; its collection is refolded without")
        prepare = _PREPARE.get(event.type)
        prepared = None if prepare is None else prepare(self, event, rates)
        self._d.state_version += 1
        stamp = event.occurred_at.isoformat()
        if self.clock is None or stamp > self.clock:
            self.clock = stamp
        if self.first_seen is None or stamp < self.first_seen:
            self.first_seen = stamp
        self._note_creator(event)
        token = self.tokens.get(event.token_id) if event.token_id is not None else None
        was_live = token is not None and token.live
        was_traits = token.traits if token is not None else None
        held = [] if token is None else token.holders()
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event, prepared)
        token = self.tokens.get(event.token_id) if event.token_id is not None else None
        if token is not None:
            # Only the event's own token changes state in a fold: what a save stores of the tokens.
            self._appended.tokens.add(token.token_id)
            if event.type in _MOVES and _multi(event):
                _move_units(self, token, event)
            # Who holds the token is a function of its facts (owner, or ERC-1155 balances): the holder
            # counts follow the difference, whatever moved it.
            now_held = token.holders()
            if now_held != held:
                # Lists of one (an owner) compare cheaper than sets; an ERC-1155 id's holders are many.
                was, now = (set(held), set(now_held)) if token.multi else (held, now_held)
                for wallet in held:
                    if wallet not in now:
                        self._count_holder(wallet, -1, token.token_id)
                for wallet in now_held:
                    if wallet not in was:
                        self._count_holder(wallet, +1, token.token_id)
        if self._bulk:
            return 0
        moved_live = 0
        if token is not None:
            if token.live != was_live or (token.live and token.traits != was_traits):
                moved_live = token.live - was_live
                if self._rarity_pending is not None:
                    self._rarity_pending[token.token_id] = None
                else:
                    plan = self._d.rarity.plan(token.token_id, token.traits, live=token.live)
                    self._d.rarity.commit(plan)
            self._sync_listing(token)
        self._d.listings.expire(self.clock)
        return moved_live

    def _note_creator(self, event: Event) -> None:
        uid = f"{event.source}:{event.id}"
        stamp = (event.order_key, uid)
        verified = event.data.get("verified_creator")
        if isinstance(verified, bool) and (self.verified_at is None or stamp > self.verified_at):
            self.verified, self.verified_at = verified, stamp
        creator = event.data.get("creator")
        if isinstance(creator, str) and (self.creator_at is None or stamp > self.creator_at):
            self.creator, self.creator_at = creator.lower(), stamp

    def _token(self, token_id: str) -> Token:
        token = self.tokens.get(token_id)
        if token is None:
            token = self.tokens[token_id] = Token(token_id)
        return token

    def _history(self, token_id: str, entry: ListingEntry) -> None:
        entries = self.listing_history.setdefault(token_id, [])
        # Kept sorted by _entry_sort_key: a binary search finds the place and any duplicate, where a
        # membership test and a sort per event grew with a busy token's history.
        key = _entry_sort_key(entry)
        at = bisect_left(entries, key, key=_entry_sort_key)
        while at < len(entries) and _entry_sort_key(entries[at]) == key:
            if entries[at] == entry:
                return
            at += 1
        entries.insert(at, entry)
        self._appended.listings.append((token_id, entry))
        if self._bulk:
            return
        # An entry's interval depends only on it and the token's next entry: inserting one changes the
        # interval of the entry before it and adds its own, nothing else of the (possibly long) history.
        following = entries[at + 1] if at + 1 < len(entries) else None
        removed: list[Interval | None] = []
        added: list[Interval | None] = []
        if at > 0:
            removed.append(listing_interval(entries[at - 1], following))
            added.append(listing_interval(entries[at - 1], entry))
        added.append(listing_interval(entry, following))
        # A token's intervals have distinct starts, so these differences are those of its whole set.
        gone = [i for i in removed if i is not None and i not in added]
        came = [i for i in added if i is not None and i not in removed]
        if not gone and not came:
            return  # most ownership changes concern tokens that were not listed: the series stays
        everything = self._d.by_end
        for start, end, price in gone:
            del everything[bisect_left(everything, (end, start, price))]
        for start, end, price in came:
            insort(everything, (end, start, price))
        self._d.dirty_since = min(self._d.dirty_since, first_difference(gone, came))
        self._d.history_version += 1

    def _set_owner(self, token: Token, owner: str | None, key: Stamp) -> None:
        # Every ownership change ends a listing in the history, whether or not it wins the LWW race.
        self._history(token.token_id, (key[:3], "end", None, None))
        if not _newer(key, token.owner_key):
            return
        token.owner_key = key
        token.owner = None if owner in (None, ZERO_ADDRESS) else owner
        token.burned = token.owner is None
        # An ownership change ends any listing the previous owner had made before it: strictly before, by
        # chain position, as in the history (a listing at its very position stands, in any arrival order).
        if token.listing is not None and token.listing_key is not None and key[:3] > token.listing_key[:3]:
            token.listing = None
            token.listing_key = key

    def _count_holder(self, wallet: str | None, delta: int, token_id: str) -> None:
        if wallet is None:
            return
        before = self.holder_counts.get(wallet, 0)
        count = before + delta
        if count > 0:
            self.holder_counts[wallet] = count
        else:
            self.holder_counts.pop(wallet, None)
        if self._bulk:
            return
        hist = self._d.hold_hist
        for size, step in ((before, -1), (max(count, 0), +1)):
            if size > 0:
                hist[size] = hist.get(size, 0) + step
                if not hist[size]:
                    del hist[size]
        held = self._d.holdings.setdefault(wallet, set())
        if delta > 0:
            held.add(token_id)
        else:
            held.discard(token_id)
            if not held:
                del self._d.holdings[wallet]


#: Event types that move a token between wallets (and, for ERC-1155, move units).
_MOVES = frozenset({EventType.MINT, EventType.TRANSFER, EventType.BURN, EventType.SALE})


def _plan_moves(rarity: RarityIndex, old: Traits | None, new: Traits | None, n1: int) -> int:
    """How many tokens a plan moves: the members of every bucket the token leaves or joins. A value that
    stays puts it in the same bucket, moving no one (a metadata update of one trait in a big collection
    moves that trait's two buckets, not the trait count's, which holds nearly every token); an attribute
    no token had yet gives every other token its null bucket."""
    old, new = old or {}, new or {}
    moves = 0
    for name in old.keys() | new.keys():
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if name not in rarity.holders:
            moves += n1
            continue
        moves += rarity.size((name, before)) + rarity.size((name, after))
    if not old or not new:
        # Entering or leaving the index: the null buckets of the attributes it lacks change too.
        moves += sum(
            rarity.size((name, None)) for name in rarity.holders if name not in old and name not in new
        )
    return moves


def _multi(event: Event) -> bool:
    """An ERC-1155 move: said so, or a quantity other than 1."""
    return event.data.get("standard") == "erc1155" or int(event.data.get("quantity", 1)) != 1


def _party(value: Any) -> str | None:
    return None if value in (None, ZERO_ADDRESS) else str(value)


def _move_key(event: Event, sender: str | None, receiver: str | None, quantity: int) -> str:
    """One ERC-1155 move's identity. Within a transaction, a move of ``quantity`` units of the token from
    ``sender`` to ``receiver`` is one move however many reports of it arrive (the ``TransferSingle`` log
    and the ``OrderFulfilled`` sale of it, a stream's ``item_sold`` and ``item_transferred``); without a
    transaction hash, the event is the move."""
    if event.tx_hash:
        return f"{event.tx_hash}:{event.token_id}:{sender}:{receiver}:{quantity}"
    return f"{event.source}:{event.id}"


def _move_units(book: BookFold, token: Token, event: Event) -> None:
    """Fold an ERC-1155 move into the token's balances: sums of a set of moves, so any order and any
    repetition give the same balances."""
    data = event.data
    sender = None if event.type == EventType.MINT else _party(data.get("from"))
    receiver = None if event.type == EventType.BURN else _party(data.get("to"))
    quantity = int(data.get("quantity", 1))
    key = _move_key(event, sender, receiver, quantity)
    token.multi = True
    if key in token.moves:
        return
    move = token.moves[key] = [sender, receiver, quantity]
    # History, like sales: a busy ERC-1155 id's moves are stored in segments, not with every save.
    book._appended.moves.append((token.token_id, key, move))
    apply_move(token, sender, receiver, quantity)


def apply_move(token: Token, sender: str | None, receiver: str | None, quantity: int) -> None:
    """Add one move to the derived balances (a negative ``quantity`` takes it back)."""
    for wallet, delta in ((sender, -quantity), (receiver, quantity)):
        if wallet is None:
            # The zero address: units leave it when minted and enter it when burned.
            token.units -= delta
            continue
        balance = token.balances.get(wallet, 0) + delta
        if balance:
            token.balances[wallet] = balance
        else:
            token.balances.pop(wallet, None)


def _hashable(value: Any) -> Any:
    """``value`` itself; a TypeError now (before any change) if it cannot be a dictionary key."""
    hash(value)
    return value


def _prep_mint(book: BookFold, event: Event, rates: RateLookup) -> tuple[Any, dict[str, Any] | None]:
    traits = event.data.get("traits")
    return _hashable(event.data["to"]), None if traits is None else dict(traits)


def _mint(book: BookFold, event: Event, prepared: tuple[Any, dict[str, Any] | None]) -> None:
    to, traits = prepared
    token = book._token(event.token_id or "")
    token.minted = True
    key = stamp(event)
    book._set_owner(token, to, key)
    if traits is not None and _newer(key, token.traits_key):
        token.traits, token.traits_key = traits, key


def _prep_transfer(book: BookFold, event: Event, rates: RateLookup) -> tuple[bool, Any]:
    if event.data.get("from") == ZERO_ADDRESS:
        return True, _prep_mint(book, event, rates)
    return False, _hashable(event.data["to"])


def _transfer(book: BookFold, event: Event, prepared: tuple[bool, Any]) -> None:
    is_mint, value = prepared
    if is_mint:
        return _mint(book, event, value)
    token = book._token(event.token_id or "")
    book._set_owner(token, None if value == ZERO_ADDRESS else value, stamp(event))


def _prep_none(book: BookFold, event: Event, rates: RateLookup) -> None:
    return None


def _burn(book: BookFold, event: Event, prepared: None) -> None:
    token = book._token(event.token_id or "")
    book._set_owner(token, None, stamp(event))


def _prep_sale(book: BookFold, event: Event, rates: RateLookup) -> tuple[SaleRecord, dict[str, Any]] | None:
    uid = f"{event.source}:{event.id}"
    if uid in book._d.sale_uids:
        return None  # the same sale twice: the log dedupes, this keeps the sums honest if it did not
    data = event.data
    price = book.to_quote(event, data["price"], rates)
    at = event.occurred_at.isoformat()
    record = SaleRecord(
        key=event.order_key,
        uid=uid,
        at_us=to_us(at),
        token_id=event.token_id or "",
        seller=_hashable(data["from"]),
        buyer=_hashable(data["to"]),
        price=price,
        buyer_funder=_wallet_or_none(data.get("buyer_funder")),
        seller_funder=_wallet_or_none(data.get("seller_funder")),
    )
    last_sale = {
        "price": str(price),
        "currency": book.currency,
        "paid": data["price"],
        "buyer": data["to"],
        "seller": data["from"],
        "at": at,
    }
    return record, last_sale


def _sale(book: BookFold, event: Event, prepared: tuple[SaleRecord, dict[str, Any]] | None) -> None:
    if prepared is None:
        return
    record, last_sale = prepared
    token = book._token(record.token_id)
    price = record.price
    with localcontext() as ctx:
        ctx.prec = 80
        book.volume += price
        day = record.at_us // DAY_US
        book.daily_volume[day] = book.daily_volume.get(day, Decimal(0)) + price
    book.sales_count += 1
    book._d.sale_uids.add(record.uid)
    # Sorted on insertion (a bisection), where appending and sorting grew with a busy token's sales.
    sales = book.sales.setdefault(token.token_id, [])
    at = bisect_right(sales, record.sort_key, key=_sale_order)
    sales.insert(at, record)
    book._appended.sales.append(record)
    rows = book._d.sale_rows.get(token.token_id)
    if rows is not None:
        rows.insert(at, record.to_list())
    book._d.sales_version += 1
    key = stamp(event)
    if _newer(key, token.last_sale_key):
        token.last_sale, token.last_sale_key = last_sale, key
    book._set_owner(token, record.buyer, key)
    if not book._bulk:
        book._d.wash.add(record)


def _wallet_or_none(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) and value else None


def _prep_listing(book: BookFold, event: Event, rates: RateLookup) -> tuple[str, dict[str, Any]]:
    data = event.data
    expires = data.get("expires_at")
    expires_iso = None if expires is None else utc_iso(expires)
    price = str(book.to_quote(event, data["price"], rates))
    if expires_iso is not None:
        to_us(expires_iso)  # the listing's interval reads it: fail here, not half-way through the fold
    listing = {
        "price": price,
        "currency": book.currency,
        "asked": data["price"],
        "seller": data["seller"],
        "at": event.occurred_at.isoformat(),
        "expires_at": expires_iso,
    }
    return price, listing


def _listing(book: BookFold, event: Event, prepared: tuple[str, dict[str, Any]]) -> None:
    price, listing = prepared
    token = book._token(event.token_id or "")
    book._history(token.token_id, (event.order_key, "list", price, listing["expires_at"]))
    key = stamp(event)
    if not _outranks(token, key, listing):
        return
    # An ownership change at a later position has ended it already (one at its own position has not).
    if token.owner_key is not None and event.order_key < token.owner_key[:3]:
        return
    token.listing = listing
    token.listing_key = key


def _listing_cancelled(book: BookFold, event: Event, prepared: None) -> None:
    token = book._token(event.token_id or "")
    book._history(token.token_id, (event.order_key, "end", None, None))
    key = stamp(event)
    if not _outranks(token, key, None):
        return
    token.listing, token.listing_key = None, key


def _outranks(token: Token, key: Stamp, listing: dict[str, Any] | None) -> bool:
    """Whether a write of ``listing`` (None: its end) stamped ``key`` wins the token's listing slot."""
    current = token.listing_key
    return current is None or listing_rank(key, listing) > listing_rank(current, token.listing)


def _prep_metadata_update(book: BookFold, event: Event, rates: RateLookup) -> dict[str, Any]:
    return dict(event.data["traits"])


def _metadata_update(book: BookFold, event: Event, prepared: dict[str, Any]) -> None:
    token = book._token(event.token_id or "")
    key = stamp(event)
    if not _newer(key, token.traits_key):
        return
    token.traits, token.traits_key = prepared, key


def _prep_fraud_finding(book: BookFold, event: Event, rates: RateLookup) -> tuple[Finding, str]:
    data = event.data
    finding = Finding(
        finding_id=str(data["finding_id"]),
        key=event.order_key,
        kind=str(data["kind"]),
        severity=str(data["severity"]),
        status=str(data.get("status", "open")),
        token_id=event.token_id,
        wallets=tuple(data.get("wallets") or ()),
    )
    return finding, f"{event.source}:{event.id}"


def _fraud_finding(book: BookFold, event: Event, prepared: tuple[Finding, str]) -> None:
    finding, uid = prepared
    fid = finding.finding_id
    current = book.findings.get(fid)
    if current is not None and (event.order_key, uid) <= (current.key, book.finding_uids.get(fid, "")):
        return
    if current is not None:
        book._index_finding(current, -1)
    book.findings[fid] = finding
    book.finding_uids[fid] = uid
    book._index_finding(finding, +1)


def _prep_bid(book: BookFold, event: Event, rates: RateLookup) -> tuple[str, dict[str, Any]]:
    data = event.data
    expires = data.get("expires_at")
    bidder = str(data["bidder"])
    # An offer for several items (a collection offer of quantity n) offers its price / n for each.
    quantity = int(data.get("quantity", 1))
    if quantity < 1:
        raise ValueError("an offer's quantity must be at least 1")
    offer: dict[str, Any] = {
        "price": str(canonical_amount(book.to_quote(event, data["price"], rates) / quantity)),
        "currency": book.currency,
        "offered": data["price"],
        "bidder": bidder,
        "at": event.occurred_at.isoformat(),
        "expires_at": None if expires is None else utc_iso(expires),
        "key": [*event.order_key, f"{event.source}:{event.id}"],
    }
    if quantity != 1:
        offer["quantity"] = quantity
    slot = bidder
    trait = data.get("trait")
    if trait is not None and event.token_id is None:
        # A trait offer: for the tokens with that trait only; a bidder may have one per trait.
        kind, value = str(trait["type"]), str(trait["value"])
        offer["trait"] = {"type": kind, "value": value}
        slot = f"{bidder}|{kind}={value}"
    return slot, offer


def _bid(book: BookFold, event: Event, prepared: tuple[str, dict[str, Any]]) -> None:
    bidder, offer = prepared
    # A token's offers, or the collection's when the bid names no token (a collection offer).
    offers = book.collection_offers if event.token_id is None else book._token(event.token_id).offers
    current = offers.get(bidder)
    # Last writer wins per bidder, by chain position then event uid: a bidder has one standing offer.
    if current is None or tuple(offer["key"]) > tuple(current["key"]):
        offers[bidder] = offer
        if not book._bulk:
            book._index_offer(event.token_id, bidder, offer)


def _prep_signal(book: BookFold, event: Event, rates: RateLookup) -> tuple[str, int, float]:
    weight = float(event.data.get("weight", 1.0))
    if not 0 <= weight < float("inf"):
        raise ValueError("a social signal's weight must be a finite non-negative number")
    return f"{event.source}:{event.id}", to_us(event.occurred_at.isoformat()), weight


def _signal(book: BookFold, event: Event, prepared: tuple[str, int, float]) -> None:
    uid, at, weight = prepared
    book.signals[uid] = (at, weight)
    attention_engine.prune(book.signals, book.clock_us)


_PREPARE: dict[EventType, Callable[[BookFold, Event, RateLookup], Any]] = {
    EventType.MINT: _prep_mint,
    EventType.TRANSFER: _prep_transfer,
    EventType.BURN: _prep_none,
    EventType.SALE: _prep_sale,
    EventType.LISTING: _prep_listing,
    EventType.LISTING_CANCELLED: _prep_none,
    EventType.METADATA_UPDATE: _prep_metadata_update,
    EventType.FRAUD_FINDING: _prep_fraud_finding,
    EventType.BID: _prep_bid,
    EventType.SOCIAL_SIGNAL: _prep_signal,
}

_HANDLERS: dict[EventType, Callable[[BookFold, Event, Any], None]] = {
    EventType.MINT: _mint,
    EventType.TRANSFER: _transfer,
    EventType.BURN: _burn,
    EventType.SALE: _sale,
    EventType.LISTING: _listing,
    EventType.LISTING_CANCELLED: _listing_cancelled,
    EventType.METADATA_UPDATE: _metadata_update,
    EventType.FRAUD_FINDING: _fraud_finding,
    EventType.BID: _bid,
    EventType.SOCIAL_SIGNAL: _signal,
}
