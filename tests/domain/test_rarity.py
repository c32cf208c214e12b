"""OpenRarity by hand on a four-token collection, and the incremental index against its twin."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nftpulse.domain.rarity import (
    TRAIT_COUNT,
    RarityIndex,
    SortedInts,
    _max_overlap,
    ahead_threshold,
    canonical_traits,
)

# t1 {bg: red, hat: cap}, t2 {bg: red}, t3 {bg: blue, hat: cap}, t4 {bg: red, hat: crown}
# Buckets (N = 4): bg red 3, blue 1; hat cap 2, crown 1, null 1; trait count "2" 3, "1" 1.
# IC(t1) = -log2(3/4) - log2(2/4) - log2(3/4) = 0.415037 + 1 + 0.415037 = 1.830075
# IC(t2) = -log2(3/4) - log2(1/4) - log2(1/4) = 0.415037 + 2 + 2       = 4.415037
# IC(t3) = -log2(1/4) - log2(2/4) - log2(3/4) = 2 + 1 + 0.415037       = 3.415037
# IC(t4) = -log2(3/4) - log2(1/4) - log2(3/4) = 0.415037 + 2 + 0.415037 = 2.830075
# H = bg 0.811278 + hat 1.5 + trait count 0.811278 = 3.122556 (the mean IC, as it must be)
TOKENS = {
    "1": {"bg": "red", "hat": "cap"},
    "2": {"bg": "red"},
    "3": {"bg": "blue", "hat": "cap"},
    "4": {"bg": "red", "hat": "crown"},
}
ENTROPY = 3.122556
SCORES = {"1": 1.830075 / ENTROPY, "2": 4.415037 / ENTROPY, "3": 3.415037 / ENTROPY, "4": 2.830075 / ENTROPY}
RANKS = {"2": 1, "3": 2, "4": 3, "1": 4}


def test_hand_computed_collection() -> None:
    index = RarityIndex.build(TOKENS)
    assert index.entropy == pytest.approx(ENTROPY, abs=1e-6)
    for tid, score in SCORES.items():
        assert index.score(tid) == pytest.approx(score, abs=1e-6)
        assert index.rank(tid) == RANKS[tid]
    assert math.fsum(index.score(t) or 0.0 for t in TOKENS) / len(TOKENS) == pytest.approx(1.0)


def test_ties_share_a_rank() -> None:
    index = RarityIndex.build({**TOKENS, "5": {"bg": "red", "hat": "cap"}})
    assert index.rank("1") == index.rank("5")
    assert index.score("1") == index.score("5")


def test_canonical_values_and_trait_count() -> None:
    assert canonical_traits({"a": True, "b": 2.0, "c": "", "d": " x "}) == {
        "a": "true",
        "b": "2",
        "d": "x",
        TRAIT_COUNT: "3",
    }


def _same(a: RarityIndex, b: RarityIndex) -> None:
    assert a.p == b.p
    assert a.hist == b.hist
    assert a.order.flat() == b.order.flat()
    assert a.nulls == b.nulls
    assert a.uniq == b.uniq
    assert {u: g.flat() for u, g in a.groups.items()} == {u: g.flat() for u, g in b.groups.items()}
    assert a.entropy == b.entropy
    for tid in a.p:
        assert a.score(tid) == b.score(tid)
        assert a.rank(tid) == b.rank(tid)


def test_incremental_plans_equal_the_twin_exactly() -> None:
    rng = random.Random(3)
    names = ["bg", "hat", "eyes", "mouth"]
    live: dict[str, dict[str, str]] = {}
    index = RarityIndex()
    for step in range(400):
        tid = str(rng.randrange(40))
        if rng.random() < 0.15 and tid in live:
            del live[tid]
            plan = index.plan(tid, None, live=False)
        else:
            traits = {n: f"{n}{rng.randrange(4)}" for n in names if rng.random() < 0.7}
            if step % 97 == 0:
                traits["rare_new_attribute"] = "x"
            live[tid] = traits
            plan = index.plan(tid, traits, live=True)
        assert plan.touched >= set(plan.movers)
        index.commit(plan)
        _same(index, RarityIndex.build(live))


def test_plan_touches_only_the_two_buckets() -> None:
    tokens = {
        str(i): {"bg": "red" if i % 3 else "blue", "hat": "cap" if i % 2 else "crown"} for i in range(30)
    }
    index = RarityIndex.build(tokens)
    plan = index.plan("1", {"bg": "blue", "hat": "cap"}, live=True)
    expected = index.members(("bg", "red")) | index.members(("bg", "blue"))
    assert plan.touched == expected


def test_sorted_ints() -> None:
    rng = random.Random(1)
    values = [rng.randrange(1000) for _ in range(2000)]
    s = SortedInts(values[:1000])
    for v in values[1000:]:
        s.add(v)
    for v in values[:500]:
        s.remove(v)
    ref = sorted(values[500:])
    assert s.flat() == ref
    for probe in (0, 10, 500, 999, 1000):
        assert s.count_less(probe) == sum(1 for v in ref if v < probe)


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)).map(sorted).map(tuple), max_size=30))
def test_max_overlap_is_the_deepest_point_of_closed_intervals(windows: list[tuple[int, int]]) -> None:
    """Checked against its definition: count, at every integer point, the intervals covering it."""
    deepest = max((sum(lo <= x <= hi for lo, hi in windows) for x in range(41)), default=0)
    assert _max_overlap(windows) == deepest


# One-of-one traits (OpenRarity's ranker): eight tokens, three attributes, every token has all three (the
# trait count "3" is shared by all: 0 bits).
#   t1 {a: u, b: B, c: C}      a=u is unique (count 1)
#   t2, t3 {a: p, b: q, c: r}  counts 2, 2, 2
#   t4..t8 {a: A, b: B, c: C}  a=A 5, b=B 6, c=C 6 (with t1)
# IC(t1) = log2 8 + 2 log2(8/6) = 3 + 0.830075 = 3.830075
# IC(t2) = IC(t3) = 3 log2(8/2) = 6
# IC(t4..t8) = log2(8/5) + 2 log2(8/6) = 0.678072 + 0.830075 = 1.508147
# H = a 1.298795 + b 0.811278 + c 0.811278 = 2.921351 (the mean IC)
# By score alone t2 and t3 rank 1 and t1 3; OpenRarity ranks first by unique attributes: t1 (one) is 1,
# t2 and t3 tie at 2, t4..t8 tie at 4.
ONE_OF_ONE = {
    "1": {"a": "u", "b": "B", "c": "C"},
    "2": {"a": "p", "b": "q", "c": "r"},
    "3": {"a": "p", "b": "q", "c": "r"},
    **{str(i): {"a": "A", "b": "B", "c": "C"} for i in range(4, 9)},
}
ONE_OF_ONE_H = 2.921351
ONE_OF_ONE_IC = {"1": 3.830075, "2": 6.0, "3": 6.0, **{str(i): 1.508147 for i in range(4, 9)}}
ONE_OF_ONE_RANKS = {"1": 1, "2": 2, "3": 2, **{str(i): 4 for i in range(4, 9)}}


def test_one_of_one_traits_rank_first() -> None:
    index = RarityIndex.build(ONE_OF_ONE)
    assert index.entropy == pytest.approx(ONE_OF_ONE_H, abs=1e-6)
    assert index.uniq == {"1": 1, **{str(i): 0 for i in range(2, 9)}}
    for tid, ic in ONE_OF_ONE_IC.items():
        assert index.score(tid) == pytest.approx(ic / ONE_OF_ONE_H, abs=1e-6)
        assert index.rank(tid) == ONE_OF_ONE_RANKS[tid], tid
    # Built token by token, the index holds the same counts and ranks.
    grown = RarityIndex()
    for tid, traits in ONE_OF_ONE.items():
        grown.commit(grown.plan(tid, traits, live=True))
    _same(grown, index)
    # A second "u" takes t1's one-of-one away: it falls back to its score's place, behind t2 and t3.
    grown.commit(grown.plan("9", {"a": "u", "b": "B", "c": "C"}, live=True))
    assert grown.uniq["1"] == 0 and grown.rank("2") == 1 and grown.rank("1") == 3
    _same(grown, RarityIndex.build({**ONE_OF_ONE, "9": {"a": "u", "b": "B", "c": "C"}}))


def test_scores_within_1e_9_relative_share_a_rank() -> None:
    n, attributes, entropy = 2**20, 4, 3.0
    p = 10**15
    threshold = ahead_threshold(p, n, attributes, entropy)
    # p - 1 scores higher than p by about 1e-15 relative: a tie, not ahead.
    assert threshold <= p - 1
    # Half the product is a full bit more information: ahead.
    assert p // 2 < threshold

    def score(q: int) -> float:
        return (attributes * math.log2(n) - math.log2(q)) / entropy

    # Just above the threshold the scores are within the tolerance (at it, they are at its edge); a
    # product 1e-7 smaller is well beyond it.
    assert math.isclose(score(threshold + p // 10**12), score(p), rel_tol=1e-9)
    below = p - p // 10**7
    assert below < threshold and not math.isclose(score(below), score(p), rel_tol=1e-9)
    assert ahead_threshold(p, n, attributes, 0.0) == 0  # no information: everyone ties


def test_incremental_unique_counts_equal_the_twin() -> None:
    rng = random.Random(11)
    live: dict[str, dict[str, str]] = {}
    index = RarityIndex()
    for _ in range(300):
        tid = str(rng.randrange(25))
        if rng.random() < 0.2 and tid in live:
            del live[tid]
            plan = index.plan(tid, None, live=False)
        else:
            # Many values over few tokens: values keep becoming and stopping being one-of-one.
            traits = {n: f"{n}{rng.randrange(12)}" for n in ("bg", "hat", "eyes") if rng.random() < 0.8}
            live[tid] = traits
            plan = index.plan(tid, traits, live=True)
        index.commit(plan)
        _same(index, RarityIndex.build(live))
