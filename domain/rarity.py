"""OpenRarity, maintained incrementally. Pure: no I/O.

The standard (https://openrarity.gitbook.io): for a collection of ``N`` live tokens and the set ``A`` of
attributes any of them carries (plus the synthetic ``meta_trait:trait_count``), a token's information
content is ``IC(t) = sum over a in A of -log2(count(a, value_t(a)) / N)``, where a token without ``a``
falls into that attribute's null bucket. The score is ``IC(t) / H`` with ``H`` the collection entropy
``sum over a, v of -p log2 p``; the mean score is therefore exactly 1.

Rank, as OpenRarity's ranker: first by the number of *unique attributes* a token has (its values no other
token shares: buckets of one, the trait count included, null buckets not), more first; then by score.
A token's rank is ``1 +`` the tokens ahead of it: those with more unique attributes, and those with as
many and a score greater beyond ``1e-9`` relative (scores within that share a rank, like OpenRarity's
``math.isclose``).

Exactness, not tolerance: ``IC(t) = |A| log2 N - log2 P(t)`` where ``P(t)`` is the *integer* product of
the counts of the buckets the token sits in. Incremental updates multiply and divide ``P`` exactly, so
an incrementally maintained index holds the same integers as one built from scratch and every float
derived from it (score, entropy via ``math.fsum`` over the histogram of bucket sizes) is bit-identical.
Ranking by ``P`` (ascending) is ranking by IC (descending) without rounding ties apart; the tolerance of
``1e-9`` is applied as a threshold on ``P`` when a rank is read (:meth:`RarityIndex.rank`), so it never
touches the stored integers. (For products beyond ``2**1000`` the threshold is the product itself:
exact ties only.)

Cost: one token's trait change moves only the buckets it leaves and joins (its old and new value of
each changed attribute, null buckets included, and the trait-count bucket when the number of traits
changes); ``N`` and ``|A|`` appear only in the uniform term, and the entropy comes from a histogram of
bucket sizes. Values are compared as canonical strings: ``True`` -> ``"true"``, ``2.0`` -> ``"2"``;
an empty string counts as missing.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TRAIT_COUNT = "meta_trait:trait_count"
"""The synthetic attribute OpenRarity adds: how many (non-null) attributes a token has."""

Traits = dict[str, str]
Bucket = tuple[str, str | None]


def canonical_traits(raw: Mapping[str, Any] | None) -> Traits:
    """Canonical string values plus the trait-count attribute: what the index buckets tokens by."""
    out: Traits = {}
    for name, value in (raw or {}).items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float) and value.is_integer():
            text = str(int(value))
        else:
            text = str(value).strip()
        if text != "":
            out[str(name)] = text
    out[TRAIT_COUNT] = str(len(out))
    return out


def entropy_of(n: int, attributes: int, hist: Mapping[int, int]) -> float:
    """Collection entropy from the number of tokens, attributes and the histogram of bucket sizes."""
    if n <= 0:
        return 0.0
    # fsum is correctly rounded whatever the iteration order, so equal histograms give equal floats.
    weighted = math.fsum(k * c * math.log2(c) for c, k in hist.items() if k and c > 1)
    return attributes * math.log2(n) - weighted / n


#: Scores within this relative difference share a rank (OpenRarity's ``math.isclose`` default).
RANK_REL_TOLERANCE = 1e-9


def ahead_threshold(p: int, n: int, attributes: int, entropy: float) -> int:
    """The products of tokens ranked ahead of one whose product is ``p`` (with as many unique attributes)
    are those below this: a score greater than ``p``'s beyond :data:`RANK_REL_TOLERANCE`.

    ``score_s <= score_t / (1 - tol)`` is ``log2 P_s >= log2 P_t - IC_t * tol / (1 - tol)``."""
    if n <= 0 or entropy <= 1e-12:
        return 0  # every score is 0: all tie
    ic = attributes * math.log2(n) - math.log2(p)
    limit = math.log2(p) - ic * RANK_REL_TOLERANCE / (1 - RANK_REL_TOLERANCE)
    if limit >= 1000:
        return p
    return min(p, math.ceil(2.0**limit))


def score_of(p: int, n: int, attributes: int, entropy: float) -> float:
    """The normalised OpenRarity score of a token whose bucket-count product is ``p``."""
    if n <= 0 or entropy <= 1e-12:
        # Every token is identical (or there is one): no information, no rarity.
        return 0.0
    return (attributes * math.log2(n) - math.log2(p)) / entropy


class SortedInts:
    """A sorted multiset of ints in bounded sublists: O(sqrt n) insert/remove, cheap ``count_less``."""

    LOAD = 256

    def __init__(self, values: Iterable[int] = ()) -> None:
        self._lists: list[list[int]] = []
        self._maxes: list[int] = []
        self._len = 0
        self._flat: list[int] | None = None
        self.rebuild(values)

    def rebuild(self, values: Iterable[int]) -> None:
        """Replace the contents (one C-level sort: cheaper than many single moves)."""
        ordered = sorted(values)
        self._lists = [ordered[i : i + self.LOAD] for i in range(0, len(ordered), self.LOAD)]
        self._maxes = [chunk[-1] for chunk in self._lists]
        self._len = len(ordered)
        self._flat = ordered

    def flat(self) -> list[int]:
        """All values in order (cached until the next change)."""
        if self._flat is None:
            self._flat = [v for chunk in self._lists for v in chunk]
        return self._flat

    def __len__(self) -> int:
        return self._len

    def add(self, value: int) -> None:
        """Insert one occurrence of ``value``."""
        self._len += 1
        self._flat = None
        if not self._lists:
            self._lists.append([value])
            self._maxes.append(value)
            return
        i = bisect_left(self._maxes, value)
        if i == len(self._maxes):
            i -= 1
            self._lists[i].append(value)
            self._maxes[i] = value
        else:
            insort(self._lists[i], value)
        chunk = self._lists[i]
        if len(chunk) > 2 * self.LOAD:
            half = len(chunk) // 2
            self._lists[i : i + 1] = [chunk[:half], chunk[half:]]
            self._maxes[i : i + 1] = [chunk[half - 1], chunk[-1]]

    def remove(self, value: int) -> None:
        """Remove one occurrence of ``value`` (which must be present)."""
        self._flat = None
        i = bisect_left(self._maxes, value)
        chunk = self._lists[i]
        j = bisect_left(chunk, value)
        if chunk[j] != value:  # pragma: no cover - a caller bug, never a data condition
            raise KeyError(value)
        del chunk[j]
        self._len -= 1
        if chunk:
            self._maxes[i] = chunk[-1]
        else:
            del self._lists[i]
            del self._maxes[i]

    def count_less(self, value: int) -> int:
        """How many stored values are strictly smaller than ``value``."""
        if self._flat is not None:
            return bisect_left(self._flat, value)
        i = bisect_left(self._maxes, value)
        below = sum(len(chunk) for chunk in self._lists[:i])
        if i < len(self._lists):
            below += bisect_left(self._lists[i], value)
        return below

    def first(self) -> int | None:
        """The smallest value, None when empty."""
        return self._lists[0][0] if self._lists else None

    def last(self) -> int | None:
        """The largest value, None when empty."""
        return self._lists[-1][-1] if self._lists else None


@dataclass
class RarityPlan:
    """What one token's transition does to the index, computed without mutating it."""

    token_id: str
    old: Traits | None
    new: Traits | None
    old_p: int | None
    new_p: int | None
    #: Other tokens whose bucket-count product changes: ``token -> (old P, new P)``.
    movers: dict[str, tuple[int, int]]
    #: The buckets whose size changes: ``bucket -> (old size, new size)``.
    buckets: dict[Bucket, tuple[int, int]]
    n: tuple[int, int]
    attributes: tuple[int, int]
    entropy: tuple[float, float]
    #: Upper bound on how far any non-moving token's score moves (uniform term and entropy).
    uniform_drift: float
    #: Upper bound on how many positions any non-moving token's rank moves.
    rank_drift: int
    #: Unique-attribute counts: the token's before and after, and other tokens' that change.
    old_u: int | None = None
    new_u: int | None = None
    unique: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def touched(self) -> set[str]:
        """Every token whose information content changes, the transitioning token included."""
        return set(self.movers) | {self.token_id}


@dataclass
class RarityIndex:
    """Buckets, per-token products, the sorted products and the bucket-size histogram."""

    traits: dict[str, Traits] = field(default_factory=dict)
    holders: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    nulls: dict[str, set[str]] = field(default_factory=dict)
    p: dict[str, int] = field(default_factory=dict)
    hist: dict[int, int] = field(default_factory=dict)
    order: SortedInts = field(default_factory=SortedInts)
    #: Unique attributes per live token, and the products of the tokens with each count.
    uniq: dict[str, int] = field(default_factory=dict)
    groups: dict[int, SortedInts] = field(default_factory=dict)
    _entropy: tuple[int, float] | None = field(default=None, repr=False, compare=False)
    _version: int = field(default=0, repr=False, compare=False)
    #: Token ids in (roughly) ascending product order: makes re-sorting after many moves cheap.
    _hint: list[str] = field(default_factory=list, repr=False, compare=False)
    _hint_age: int = field(default=0, repr=False, compare=False)

    # -- reads -------------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Live tokens indexed."""
        return len(self.traits)

    @property
    def attributes(self) -> int:
        """|A|: attributes carried by any live token, the trait count included."""
        return len(self.holders)

    @property
    def entropy(self) -> float:
        """The collection entropy H (cached per state)."""
        if self._entropy is None or self._entropy[0] != self._version:
            self._entropy = (self._version, entropy_of(self.n, self.attributes, self.hist))
        return self._entropy[1]

    def size(self, bucket: Bucket) -> int:
        """Tokens in a bucket (value None: the null bucket)."""
        name, value = bucket
        if name not in self.holders:
            return 0
        if value is None:
            return len(self.nulls.get(name, ()))
        return len(self.holders[name].get(value, ()))

    def score(self, token_id: str, entropy: float | None = None) -> float | None:
        """The normalised score of a live token, None otherwise."""
        p = self.p.get(token_id)
        if p is None:
            return None
        return score_of(p, self.n, self.attributes, self.entropy if entropy is None else entropy)

    def rank(self, token_id: str, entropy: float | None = None) -> int | None:
        """1 + the tokens ahead (more unique attributes, or as many and a greater score beyond the
        tolerance); None for tokens not live."""
        p = self.p.get(token_id)
        if p is None:
            return None
        u = self.uniq[token_id]
        ahead = sum(len(group) for count, group in self.groups.items() if count > u)
        h = self.entropy if entropy is None else entropy
        return 1 + ahead + self.groups[u].count_less(ahead_threshold(p, self.n, self.attributes, h))

    def unique_of(self, traits: Traits) -> int:
        """How many of an indexed token's values no other token shares."""
        holders = self.holders
        return sum(1 for name, value in traits.items() if len(holders[name][value]) == 1)

    def _regroup(self) -> None:
        by_count: dict[int, list[int]] = {}
        p = self.p
        for tid, u in self.uniq.items():
            by_count.setdefault(u, []).append(p[tid])
        self.groups = {u: SortedInts(values) for u, values in by_count.items()}

    def members(self, bucket: Bucket) -> set[str]:
        """A copy of the tokens in a bucket (value None: tokens missing the attribute)."""
        name, value = bucket
        if name not in self.holders:
            return set()
        if value is None:
            return set(self.nulls.get(name, ()))
        return set(self.holders[name].get(value, ()))

    # -- building ----------------------------------------------------------------------------------

    @classmethod
    def build(cls, tokens: Mapping[str, Mapping[str, Any]], *, canonical: bool = False) -> RarityIndex:
        """The from-scratch twin: index live tokens' raw traits in one pass (``canonical``: the traits
        are already :func:`canonical_traits`, as an index's own ``traits`` are)."""
        index = cls()
        for tid, raw in tokens.items():
            traits = dict(raw) if canonical else canonical_traits(raw)
            index.traits[tid] = traits
            for name, value in traits.items():
                index.holders.setdefault(name, {}).setdefault(value, set()).add(tid)
        live = set(index.traits)
        for name, values in index.holders.items():
            having = set().union(*values.values())
            missing = live - having
            if missing:
                index.nulls[name] = missing
        for name, values in index.holders.items():
            for members in values.values():
                index.hist[len(members)] = index.hist.get(len(members), 0) + 1
            nulls = index.nulls.get(name)
            if nulls:
                index.hist[len(nulls)] = index.hist.get(len(nulls), 0) + 1
        for tid, traits in index.traits.items():
            index.p[tid] = index._product(traits)
            index.uniq[tid] = index.unique_of(traits)
        index.order = SortedInts(index.p.values())
        index._regroup()
        return index

    def _product(self, traits: Traits) -> int:
        product = 1
        for name, values in self.holders.items():
            value = traits.get(name)
            product *= len(values[value]) if value is not None else len(self.nulls[name])
        return product

    # -- planning and committing a transition ------------------------------------------------------

    def plan(self, token_id: str, new_raw: Mapping[str, Any] | None, *, live: bool) -> RarityPlan:
        """The effect of ``token_id`` becoming ``new_raw`` (or leaving the collection when not live)."""
        old = self.traits.get(token_id)
        new = canonical_traits(new_raw) if live else None
        n0 = self.n
        n1 = n0 - (old is not None) + (new is not None)
        names = set(self.holders) | set(new or ())
        having1: dict[str, int] = {}
        for name in names:
            count = sum(len(s) for s in self.holders.get(name, {}).values())
            count += (new is not None and name in new) - (old is not None and name in old)
            having1[name] = count
        attrs1 = {name for name, count in having1.items() if count > 0} if n1 > 0 else set()

        buckets: dict[Bucket, tuple[int, int]] = {}
        for name in names:
            was = name in self.holders
            stays = name in attrs1
            old_v = None if old is None else old.get(name)
            new_v = None if new is None else new.get(name)
            affected: set[Bucket] = set()
            if old is not None or new is not None:
                if old is not None and was:
                    affected.add((name, old_v))
                if new is not None and stays:
                    affected.add((name, new_v))
            if was != stays:
                # The attribute appears or disappears: its null bucket appears or disappears with it.
                affected.add((name, None))
            for bucket in affected:
                before = self.size(bucket) if was else 0
                after = 0
                if stays:
                    if bucket[1] is None:
                        after = n1 - having1[name]
                    else:
                        after = (len(self.holders.get(name, {}).get(bucket[1], ())) if was else 0) + (
                            (new_v == bucket[1]) - (old_v == bucket[1] and was)
                        )
                if before != after:
                    buckets[bucket] = (before, after)
        for bucket in [b for b, (x, y) in buckets.items() if x == y]:
            del buckets[bucket]

        groups: list[tuple[int, int, set[str]]] = []
        for bucket, (before, after) in buckets.items():
            name, value = bucket
            # A new attribute's null bucket holds every other live token.
            members = set(self.traits) if value is None and name not in self.holders else self.members(bucket)
            members.discard(token_id)
            groups.append((before or 1, after or 1, members))
        seen: set[str] = set()
        shared: set[str] = set()
        for _, _, members in groups:
            shared |= seen & members
            seen |= members
        p = self.p
        movers: dict[str, tuple[int, int]] = {}
        windows: list[tuple[int, int]] = []
        rank_drift = 0
        for before, after, members in groups:
            alone = members - shared if shared else members
            movers.update({t: (p[t], p[t] * after // before) for t in alone})
            rank_drift += _band_count(
                sorted(map(p.__getitem__, alone)), min(before, after), max(before, after)
            )
        # Each shared token's product moves by the ratio of every changed bucket it is in: gathered group
        # by group (a set intersection each) rather than token by token over all groups.
        ratios = {t: [1, 1] for t in shared}
        for before, after, members in groups:
            for t in members & shared:
                ratio = ratios[t]
                ratio[0] *= after
                ratio[1] *= before
        for t, (num, den) in ratios.items():
            old_t = p[t]
            new_t = old_t * num // den
            # Kept even when the product does not move: its buckets changed size, so did its IC terms.
            movers[t] = (old_t, new_t)
            if new_t != old_t:
                windows.append((min(old_t, new_t), max(old_t, new_t)))

        hist1 = dict(self.hist)
        for before, after in buckets.values():
            if before:
                hist1[before] -= 1
            if after:
                hist1[after] = hist1.get(after, 0) + 1
        a0, a1 = self.attributes, len(attrs1)
        h0, h1 = self.entropy, entropy_of(n1, a1, hist1)

        new_p: int | None = None
        if new is not None:
            new_p = 1
            for name in attrs1:
                value = new.get(name)
                if value is None:
                    size = n1 - having1[name]
                else:
                    size = buckets.get((name, value), (0, self.size((name, value))))[1]
                new_p *= size
        old_p = self.p.get(token_id)

        # Unique attributes move only in buckets that become or stop being one token's: few members.
        unique: dict[str, tuple[int, int]] = {}
        for bucket, (before, after) in buckets.items():
            if bucket[1] is None or (before == 1) == (after == 1):
                continue
            step = (after == 1) - (before == 1)
            for t in self.members(bucket) - {token_id}:
                was_u, now_u = unique.get(t, (self.uniq[t], self.uniq[t]))
                unique[t] = (was_u, now_u + step)
        unique = {t: moved for t, moved in unique.items() if moved[0] != moved[1]}
        new_u: int | None = None
        if new is not None:
            new_u = 0
            for name, value in new.items():
                size = buckets.get((name, value), (0, self.size((name, value))))[1]
                new_u += size == 1
        old_u = self.uniq.get(token_id)
        # A token changing its count of unique attributes passes over, at most, everyone once.
        group_moves = len(unique) + (old_u != new_u and old_u is not None and new_u is not None)

        uniform = 0.0
        low, high = self.order.first(), self.order.last()
        if low is not None and high is not None and n1 > 0:
            for extreme in (low, high):
                uniform = max(uniform, abs(score_of(extreme, n1, a1, h1) - score_of(extreme, n0, a0, h0)))
        top = max(high or 0, new_p or 0) + 1
        if old_p is not None and new_p is not None:
            if old_p != new_p:
                windows.append((min(old_p, new_p), max(old_p, new_p)))
        elif old_p is not None or new_p is not None:
            # Entering or leaving shifts every token above it by one position.
            windows.append((old_p if old_p is not None else new_p or 0, top))
        return RarityPlan(
            token_id=token_id,
            old=old,
            new=new,
            old_p=old_p,
            new_p=new_p,
            movers=movers,
            buckets=buckets,
            n=(n0, n1),
            attributes=(a0, a1),
            entropy=(h0, h1),
            uniform_drift=uniform,
            rank_drift=rank_drift + _max_overlap(windows) + group_moves,
            old_u=old_u,
            new_u=new_u,
            unique=unique,
        )

    def commit(self, plan: RarityPlan) -> None:
        """Apply a plan made against the current state."""
        self._version += 1
        tid, old, new = plan.token_id, plan.old, plan.new
        if old is not None:
            for name, value in old.items():
                self.holders[name][value].discard(tid)
                if not self.holders[name][value]:
                    del self.holders[name][value]
            for name in self.holders:
                if name not in old and name in self.nulls:
                    self.nulls[name].discard(tid)
            del self.traits[tid]
            old_p = self.p.pop(tid)
            self.order.remove(old_p)
            self.groups[self.uniq.pop(tid)].remove(old_p)
        if new is not None:
            for name, value in new.items():
                if name not in self.holders:
                    others = set(self.traits)
                    if others:
                        self.nulls[name] = others
                self.holders.setdefault(name, {}).setdefault(value, set()).add(tid)
            for name in self.holders:
                if name not in new:
                    self.nulls.setdefault(name, set()).add(tid)
            self.traits[tid] = new
        for name in [name for name, values in self.holders.items() if not values]:
            del self.holders[name]
            self.nulls.pop(name, None)
        for name in [name for name, members in self.nulls.items() if not members]:
            del self.nulls[name]
        for before, after in plan.buckets.values():
            if before:
                self.hist[before] -= 1
                if not self.hist[before]:
                    del self.hist[before]
            if after:
                self.hist[after] = self.hist.get(after, 0) + 1
        if plan.old_p is None or plan.new_p is None:
            self._hint = []  # membership changed: the order hint names the wrong tokens
        uniq = self.uniq
        if len(plan.movers) > 256:
            # Many moves: one C-level sort beats hundreds of single removals and insertions. Listing
            # the values in the last known order of the tokens hands timsort a nearly sorted input.
            p = self.p
            for mover, (_, new_p) in plan.movers.items():
                p[mover] = new_p
            for mover, (_, now_u) in plan.unique.items():
                uniq[mover] = now_u
            if plan.new_p is not None and plan.new_u is not None:
                p[tid] = plan.new_p
                uniq[tid] = plan.new_u
            hint = self._hint
            if len(hint) != len(p) or self._hint_age > 64:
                hint = self._hint = sorted(p, key=p.__getitem__)
                self._hint_age = 0
            self._hint_age += 1
            self.order.rebuild(list(map(p.__getitem__, hint)))
            self._regroup()
            return
        groups = self.groups
        for mover, (old_p, new_p) in plan.movers.items():
            self.order.remove(old_p)
            self.order.add(new_p)
            self.p[mover] = new_p
            was_u, now_u = plan.unique.get(mover, (uniq[mover], uniq[mover]))
            groups[was_u].remove(old_p)
            groups.setdefault(now_u, SortedInts()).add(new_p)
            uniq[mover] = now_u
        if plan.new_p is not None and plan.new_u is not None:
            self.p[tid] = plan.new_p
            self.order.add(plan.new_p)
            uniq[tid] = plan.new_u
            groups.setdefault(plan.new_u, SortedInts()).add(plan.new_p)
        for count in [count for count, group in groups.items() if not group]:
            del groups[count]


def _band_count(ordered: list[int], low: int, high: int) -> int:
    """Most values of ``ordered`` within one band ``[x, x * high / low]``: how many of a group scaled by
    ``low/high`` (or ``high/low``) can cross one point."""
    best = j = 0
    for i, value in enumerate(ordered):
        while value * low > ordered[j] * high:
            j += 1
        if i - j + 1 > best:
            best = i - j + 1
    return best


def _max_overlap(windows: list[tuple[int, int]]) -> int:
    """The largest number of closed intervals covering one point: a bound on any rank shift.

    The deepest point is a left end ``x``: the intervals starting at or before it, less those ending
    before it. The two ends are sorted as plain ints: sorting tagged tuples had made this a third of the
    cost of a rarity plan."""
    if not windows:
        return 0
    starts = sorted([lo for lo, _ in windows])
    ends = sorted([hi for _, hi in windows])
    best = ended = 0
    for started, x in enumerate(starts, 1):
        while ends[ended] < x:
            ended += 1
        if started - ended > best:
            best = started - ended
    return best
