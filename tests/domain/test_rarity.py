"""OpenRarity by hand on a four-token collection, and the incremental index against its twin."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nftpulse.domain.rarity import TRAIT_COUNT, RarityIndex, SortedInts, _max_overlap, canonical_traits

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
