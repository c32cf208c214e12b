"""Collection statistics: floor, holder concentration and the time-weighted floor. Pure: no I/O.

Every figure here is a function of order-independent facts (the set of listings and their history,
holder counts), so an incrementally maintained value equals the one a full recompute derives:

* floor: the cheapest active listing, kept in a price-sorted list; expired listings leave it through a
  heap keyed by expiry as the book's clock passes them (the clock never goes back);
* unique holders, top-10 share and Gini from a histogram ``tokens held -> number of wallets``, so a
  transfer costs O(1) and a read O(distinct holding sizes), computed in exact integers;
* time-weighted floor: the floor is a step function of time given by listing intervals (a listing is
  live from its event until the next listing-state event of the token in chain order, or its expiry);
  prefix integrals over the steps give the average over any window in O(log n).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from fractions import Fraction
from operator import itemgetter
from typing import Generic, TypeVar

DAY_US = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(iso: str) -> int:
    """Microseconds since the epoch of an ISO 8601 timestamp (naive values are taken as UTC)."""
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def utc_iso(value: str | datetime) -> str:
    """Normalise a timestamp to the UTC ``isoformat`` the book compares as strings."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


# -- holders -------------------------------------------------------------------------------------------


def gini(hist: Mapping[int, int]) -> float:
    """Gini coefficient of holdings given ``{tokens held: wallets holding that many}``.

    ``G = 2 * sum(i * x_(i)) / (n * sum x) - (n + 1) / n`` over the holdings sorted ascending, computed
    with exact integers per group of equal holdings.
    """
    n = sum(count for size, count in hist.items() if size > 0)
    total = sum(size * count for size, count in hist.items() if size > 0)
    if n == 0 or total == 0:
        return 0.0
    position = 0
    weighted = 0
    for size in sorted(s for s in hist if s > 0):
        count = hist[size]
        # positions position+1 .. position+count all hold ``size``
        weighted += size * (count * position + count * (count + 1) // 2)
        position += count
    return float(Fraction(2 * weighted, n * total) - Fraction(n + 1, n))


def top_share(hist: Mapping[int, int], top: int = 10) -> float:
    """Share of all held tokens that the ``top`` largest holders hold."""
    total = sum(size * count for size, count in hist.items() if size > 0)
    if total == 0:
        return 0.0
    left, held = top, 0
    for size in sorted((s for s in hist if s > 0), reverse=True):
        take = min(left, hist[size])
        held += take * size
        left -= take
        if left == 0:
            break
    return float(Fraction(held, total))


def holding_hist(counts: Iterable[int]) -> dict[int, int]:
    """Histogram of holding sizes from per-wallet counts (the from-scratch twin)."""
    hist: dict[int, int] = {}
    for size in counts:
        if size > 0:
            hist[size] = hist.get(size, 0) + 1
    return hist


# -- floor ---------------------------------------------------------------------------------------------


K = TypeVar("K", str, tuple[int, str, str])
"""What an expiring fact belongs to (a listing's token id, an offer's ``(scope, token_id, slot)``):
comparable, so heap items of equal expiry still order."""
ExpiryKey = tuple[int, str, str]


@dataclass
class ExpiryIndex(Generic[K]):
    """When each of a set of standing facts (listings, offers) lapses, by key, with a heap by expiry: the
    next expiry after the clock and what a clock would lapse cost what the answer costs, not the number of
    entries.

    Lazy: a replaced or withdrawn entry's heap item is passed over and dropped once it reaches the top,
    and what the clock has passed is dropped as it is met (the clock never goes back; a book whose clock
    did would be rebuilt). When stale items outnumber the entries the heap is rebuilt, so a bidder
    re-bidding all day does not grow it without bound."""

    entries: dict[K, str] = field(default_factory=dict)
    _heap: list[tuple[str, K]] = field(default_factory=list)

    def put(self, key: K, expires: str | None) -> None:
        """Make ``key``'s standing fact lapse at ``expires`` (None: it stands for good, or not at all)."""
        if expires is None:
            self.entries.pop(key, None)
        elif self.entries.get(key) != expires:
            self.entries[key] = expires
            heapq.heappush(self._heap, (expires, key))
        if len(self._heap) > 2 * len(self.entries) + 64:
            self._heap = [(at, k) for k, at in self.entries.items()]
            heapq.heapify(self._heap)

    def _settle(self, clock: str | None) -> None:
        """Pop the top items that are stale or that ``clock`` has reached (forgetting those entries)."""
        heap = self._heap
        while heap:
            expires, key = heap[0]
            current = self.entries.get(key)
            if current == expires and (clock is None or expires > clock):
                return
            heapq.heappop(heap)
            if current == expires:
                del self.entries[key]

    def pop_through(self, clock: str) -> set[K]:
        """Forget the entries ``clock`` has reached (their facts lapsed); returns their keys."""
        gone: set[K] = set()
        heap = self._heap
        while heap and heap[0][0] <= clock:
            expires, key = heapq.heappop(heap)
            if self.entries.get(key) == expires:
                del self.entries[key]
                gone.add(key)
        return gone

    def next_after(self, clock: str | None) -> str | None:
        """The earliest expiry after ``clock`` of a standing entry, or None."""
        self._settle(clock)
        return self._heap[0][0] if self._heap else None

    def lapsing(self, clock: str | None, until: str) -> set[K]:
        """The entries standing at ``clock`` that a clock of ``until`` lapses. Walks only the part of the
        heap at or below ``until`` (a heap's subtree never holds a smaller key than its root)."""
        self._settle(clock)
        out: set[K] = set()
        heap, stack = self._heap, [0] if self._heap else []
        while stack:
            at = stack.pop()
            expires, key = heap[at]
            if expires > until:
                continue
            if self.entries.get(key) == expires:
                out.add(key)
            stack.extend(child for child in (2 * at + 1, 2 * at + 2) if child < len(heap))
        return out

    def __len__(self) -> int:
        return len(self.entries)


@dataclass
class ListingIndex:
    """Active listings sorted by price, with expiry handled lazily as the clock advances."""

    entries: dict[str, tuple[Decimal, str | None]] = field(default_factory=dict)
    _sorted: list[tuple[Decimal, str]] = field(default_factory=list)
    _expiries: ExpiryIndex[str] = field(default_factory=ExpiryIndex)

    def put(self, token_id: str, price: Decimal | None, expires: str | None) -> bool:
        """Make ``token_id``'s active listing ``price`` (None: not listed). True if anything changed."""
        current = self.entries.get(token_id)
        wanted = None if price is None else (price, expires)
        if current == wanted:
            return False
        if current is not None:
            self._sorted.pop(self._position(current[0], token_id))
            del self.entries[token_id]
        if wanted is not None:
            self.entries[token_id] = wanted
            insort(self._sorted, (wanted[0], token_id))
        self._expiries.put(token_id, None if wanted is None else expires)
        return True

    def _position(self, price: Decimal, token_id: str) -> int:
        return bisect_left(self._sorted, (price, token_id))

    def expire(self, clock: str | None) -> set[str]:
        """Drop listings whose expiry the clock has reached; returns the tokens that lost one."""
        gone = set() if clock is None else self._expiries.pop_through(clock)
        for token_id in gone:
            self.put(token_id, None, None)
        return gone

    def expiring(self, clock: str) -> set[str]:
        """Tokens whose active listing a clock of ``clock`` would expire (read-only)."""
        return self._expiries.lapsing(None, clock)

    def next_expiry(self) -> str | None:
        """The earliest expiry of an active listing: the next moment the floor can move with no event."""
        return self._expiries.next_after(None)

    @property
    def floor(self) -> Decimal | None:
        """The cheapest active listing."""
        return self._sorted[0][0] if self._sorted else None

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, token_id: object) -> bool:
        return token_id in self.entries


# -- time-weighted floor -------------------------------------------------------------------------------

ListingEntry = tuple[tuple[int, int, str], str, str | None, str | None]
"""``(order_key, kind, price, expires)``: kind ``list`` (price in quote currency) or ``end``."""


OPEN = 1 << 62
"""The end of a listing interval that has not ended (sorts after every real time)."""

Interval = tuple[int, int, Decimal]
"""``(start_us, end_us or OPEN, price)``."""


def listing_interval(entry: ListingEntry, following: ListingEntry | None) -> Interval | None:
    """The life of one history entry given the token's next entry in chain order (None: a non-listing,
    or a listing that ended before it began)."""
    key, kind, price, expires = entry
    if kind != "list" or price is None:
        return None
    start = to_us(key[2])
    end = to_us(following[0][2]) if following is not None else OPEN
    if expires is not None:
        end = min(end, to_us(expires))
    if end <= start:
        return None
    return (start, end, Decimal(price))


def listing_intervals(history: Mapping[str, list[ListingEntry]]) -> list[Interval]:
    """Each listing's life ``(start_us, end_us or OPEN, price)`` from per-token histories, sorted."""
    out: list[Interval] = []
    for entries in history.values():
        for i, entry in enumerate(entries):
            interval = listing_interval(entry, entries[i + 1] if i + 1 < len(entries) else None)
            if interval is not None:
                out.append(interval)
    out.sort()
    return out


def first_difference(old: list[Interval], new: list[Interval]) -> int:
    """The earliest time at which two interval sets can give a different floor (OPEN: never)."""
    old_set, new_set = set(old), set(new)
    gone = [i for i in old if i not in new_set]
    came = [i for i in new if i not in old_set]
    if not gone and not came:
        return OPEN
    if len(gone) == 1 and len(came) == 1 and gone[0][0] == came[0][0] and gone[0][2] == came[0][2]:
        # Only the end moved (an open listing ended, an expiry changed): nothing differs before it.
        return min(gone[0][1], came[0][1])
    return min(i[0] for i in gone + came)


@dataclass
class FloorSeries:
    """The floor as a step function of time, with prefix integrals for window averages."""

    times: list[int] = field(default_factory=list)
    prices: list[Decimal | None] = field(default_factory=list)
    integral: list[Decimal] = field(default_factory=list)
    covered: list[int] = field(default_factory=list)

    @classmethod
    def build(
        cls, intervals: list[Interval], base: FloorSeries | None = None, since: int = OPEN
    ) -> FloorSeries:
        """Sweep the intervals into steps with prefix integrals.

        With ``base`` (the series before a change) and ``since`` (the earliest time the change can
        affect), the steps before ``since`` are kept and only the tail is swept again: the same
        Decimal operations in the same order as a full build, so the same numbers.
        """
        series = cls()
        keep = 0 if base is None else bisect_left(base.times, since) - 1
        if base is not None and keep > 0:
            origin = base.times[keep]
            series.times, series.prices = base.times[:keep], base.prices[:keep]
            series.integral, series.covered = base.integral[:keep], base.covered[:keep]
            relevant = [(e, s, p) for s, e, p in intervals if e > origin]
            series._sweep(relevant, origin, base.integral[keep], base.covered[keep])
        else:
            series._sweep([(e, s, p) for s, e, p in intervals], None, Decimal(0), 0)
        return series

    def update(self, by_end: list[tuple[int, int, Decimal]], since: int) -> None:
        """Bring the series up to date in place after a change no earlier than ``since``.

        ``by_end`` holds every interval as ``(end, start, price)``, sorted: the intervals still live
        at the kept prefix's last step are a suffix of it, found by bisection. That keeps the cost of
        an update to the live listings plus the changed tail, where filtering every interval (and
        copying the kept prefix) grew with the whole listing history. Same steps and numbers as
        :meth:`build` over the same intervals.
        """
        keep = bisect_left(self.times, since) - 1
        if keep <= 0:
            for column in (self.times, self.prices, self.integral, self.covered):
                column.clear()
            self._sweep(by_end, None, Decimal(0), 0)
            return
        origin, total, span = self.times[keep], self.integral[keep], self.covered[keep]
        for column in (self.times, self.prices, self.integral, self.covered):
            del column[keep:]
        self._sweep(by_end[bisect_right(by_end, origin, key=itemgetter(0)) :], origin, total, span)

    def _sweep(
        self, relevant: list[tuple[int, int, Decimal]], origin: int | None, total: Decimal, span: int
    ) -> None:
        """Append the steps from ``origin`` (None: the first start) over ``(end, start, price)`` intervals.

        ``relevant`` must hold every interval that is live at or after ``origin``, in any order. The
        listings live at ``origin`` enter the heap in one ``heapify`` (most of a busy collection's
        listings are open); only later starts are sorted and pushed one by one. The cheapest live
        price at each bound is the same whichever of equal entries the heap holds.
        """
        if origin is None:
            live: list[tuple[Decimal, int]] = []
            later = relevant
            bounds = sorted({s for _, s, _ in relevant} | {e for e, _, _ in relevant if e < OPEN})
        else:
            live = [(p, e) for e, s, p in relevant if s <= origin]
            later = [iv for iv in relevant if iv[1] > origin]
            bounds = sorted({s for _, s, _ in later} | {e for e, _, _ in relevant if e < OPEN})
            bounds.insert(0, origin)
        if not bounds:
            return
        heapq.heapify(live)
        later = sorted(later, key=itemgetter(1))
        cursor = 0
        with localcontext() as ctx:
            ctx.prec = 60
            for i, moment in enumerate(bounds):
                while cursor < len(later) and later[cursor][1] <= moment:
                    end, _, price = later[cursor]
                    heapq.heappush(live, (price, end))
                    cursor += 1
                while live and live[0][1] <= moment:
                    heapq.heappop(live)
                floor = live[0][0] if live else None
                self.times.append(moment)
                self.prices.append(floor)
                self.integral.append(total)
                self.covered.append(span)
                if i + 1 < len(bounds) and floor is not None:
                    width = bounds[i + 1] - moment
                    total += floor * width
                    span += width

    def _at(self, moment: int) -> tuple[Decimal, int]:
        i = bisect_right(self.times, moment) - 1
        if i < 0:
            return Decimal(0), 0
        price = self.prices[i]
        if price is None:
            return self.integral[i], self.covered[i]
        with localcontext() as ctx:
            ctx.prec = 60
            return self.integral[i] + price * (moment - self.times[i]), self.covered[i] + moment - self.times[
                i
            ]

    def average(self, start: int, end: int) -> Decimal | None:
        """Time-weighted floor over ``[start, end]``, over the part of it where any listing was live."""
        if end <= start or not self.times:
            return None
        high, high_span = self._at(end)
        low, low_span = self._at(start)
        span = high_span - low_span
        if span <= 0:
            return None
        with localcontext() as ctx:
            ctx.prec = 60
            value = (high - low) / span
        return value.quantize(Decimal("1e-12"))
