"""Which rarity changes are propagated: the last score and rank published per token, and when a token
must be looked at again so that no unpublished drift reaches an epsilon. Pure.

The index itself (OpenRarity, maintained incrementally) is ``domain.rarity``; a plan there bounds how far
the scores and ranks of tokens it does not touch may drift (``RarityPlan.uniform_drift``,
``RarityPlan.rank_drift``), which is what this module accumulates.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nftpulse.domain.rarity import RarityIndex, RarityPlan


def _ratio(deviation: float, eps: float) -> float:
    # A zero epsilon is handled by examining everything (see ``settle``), never by infinite drift.
    return deviation / eps if eps > 0 else 0.0


@dataclass
class RarityPublisher:
    """The last score and rank propagated per token, and when a token must be looked at again.

    A token is re-examined exactly when it moves, and otherwise once the bound on the drift it may
    have picked up since its last examination could reach an epsilon. Deviations and drifts are in
    units of their epsilon so that one heap (keyed by each token's slack) serves score and rank:
    a token is due when ``slack + drift >= 1``, with ``drift`` growing by each plan's
    ``uniform_drift / score_eps + rank_drift / rank_eps``.
    """

    published: dict[str, tuple[float, int]] = field(default_factory=dict)
    drift: float = 0.0
    _heap: list[tuple[float, str]] = field(default_factory=list)
    _slack: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def drift_of(plan: RarityPlan, score_eps: float, rank_eps: int) -> float:
        """How much a plan adds to the drift bound (in epsilon units)."""
        return _ratio(plan.uniform_drift, score_eps) + _ratio(plan.rank_drift, rank_eps)

    def due(self, extra_drift: float = 0.0) -> set[str]:
        """Tokens that would be re-examined if the drift grew by ``extra_drift`` (read-only)."""
        total = self.drift + extra_drift
        return {t for key, t in self._heap if -key + total >= 1.0 and self._slack.get(t) == -key}

    def reset(
        self,
        index: RarityIndex,
        published: Mapping[str, tuple[float, int]],
        score_eps: float = 0.0,
        rank_eps: int = 1,
    ) -> None:
        """Start tracking ``published`` values from each token's exact current deviation."""
        self.published = dict(published)
        self.drift = 0.0
        self._heap, self._slack = [], {}
        entropy = index.entropy
        for tid, (score, rank) in self.published.items():
            now_score, now_rank = index.score(tid, entropy), index.rank(tid)
            if now_score is None or now_rank is None:
                self._track(tid, 1.0)  # left since: due at the next settle
                continue
            deviation = max(_ratio(abs(now_score - score), score_eps), _ratio(abs(now_rank - rank), rank_eps))
            self._track(tid, deviation)

    def _track(self, tid: str, deviation: float) -> None:
        slack = deviation - self.drift
        self._slack[tid] = slack
        if len(self._heap) > 4 * len(self._slack) + 64:
            # Superseded entries pile up: rebuild from the live slack table now and then.
            self._heap = [(-v, t) for t, v in self._slack.items()]
            heapq.heapify(self._heap)
            return
        heapq.heappush(self._heap, (-slack, tid))

    def settle(
        self, index: RarityIndex, plan: RarityPlan | None, score_eps: float, rank_eps: int
    ) -> dict[str, tuple[tuple[float, int] | None, tuple[float, int] | None]]:
        """After ``plan`` was committed: the tokens whose score or rank moved past an epsilon.

        Returns ``token -> (published before, published after)``; a token that left has ``None`` after.
        """
        return self.settle_batch(index, [] if plan is None else [plan], score_eps, rank_eps)

    def settle_batch(
        self,
        index: RarityIndex,
        plans: Sequence[RarityPlan],
        score_eps: float,
        rank_eps: int,
        *,
        examine_all: bool = False,
    ) -> dict[str, tuple[tuple[float, int] | None, tuple[float, int] | None]]:
        """:meth:`settle` once for several plans committed one after the other.

        ``examine_all``: the index was rebuilt rather than planned, so there are no drift bounds; every
        token is examined against the final state. That publishes exactly what the plans would have: a
        token whose deviation reaches an epsilon is examined either way, and one that is examined
        without reaching it keeps its published values (only its slack becomes exact).

        Examining at the end is enough: a token no plan touched cannot have drifted further than the
        plans' summed drift bounds, and every token a plan touched is examined against the final
        state. A trait change whose tokens are touched again later in the batch is thus looked at once.
        """
        out: dict[str, tuple[tuple[float, int] | None, tuple[float, int] | None]] = {}
        check: set[str] = set()
        everything = examine_all
        for plan in plans:
            self.drift += self.drift_of(plan, score_eps, rank_eps)
            check |= plan.touched
            everything |= score_eps <= 0 and plan.uniform_drift > 0
        if everything:
            check |= set(index.p) | set(self.published)
        heap = self._heap
        while heap and -heap[0][0] + self.drift >= 1.0:
            key, tid = heapq.heappop(heap)
            if self._slack.get(tid) == -key:
                check.add(tid)
        if not check:
            return out
        n, attributes, entropy = index.n, index.attributes, index.entropy
        base = attributes * math.log2(n) if n > 0 else 0.0
        inv_h = 1.0 / entropy if n > 0 and entropy > 1e-12 else 0.0
        inv_s = 1.0 / score_eps if score_eps > 0 else 0.0
        inv_r = 1.0 / rank_eps
        rank_of = index.rank
        p_of = index.p
        published = self.published
        slack_of = self._slack
        drift = self.drift
        log2 = math.log2
        pushes: list[tuple[float, str]] = []
        # The hot loop of a trait change (thousands of bucket holders): kept free of calls on purpose.
        for tid in check:
            shown = published.get(tid)
            p = p_of.get(tid)
            if p is None:
                slack_of.pop(tid, None)
                if shown is not None:
                    out[tid] = (published.pop(tid), None)
                continue
            score = (base - log2(p)) * inv_h
            rank = rank_of(tid, entropy) or 0
            deviation = 0.0
            if shown is None:
                published[tid] = out_now = (score, rank)
                out[tid] = (None, out_now)
            else:
                ds = score - shown[0]
                if ds < 0:
                    ds = -ds
                dr = rank - shown[1]
                if dr < 0:
                    dr = -dr
                # A move at all (a zero epsilon publishes any move, never a standstill: examined or not,
                # an unmoved token is not reported, so a rebuild examining every token publishes what
                # plans examining the touched ones do).
                if (ds >= score_eps and ds > 0) or dr >= rank_eps:
                    published[tid] = out_now = (score, rank)
                    out[tid] = (shown, out_now)
                else:
                    deviation = ds * inv_s
                    if dr * inv_r > deviation:
                        deviation = dr * inv_r
            slack = deviation - drift
            slack_of[tid] = slack
            pushes.append((-slack, tid))
        if len(pushes) * 4 > len(heap) or len(heap) > 4 * len(slack_of) + 64:
            live = {t: v for t, v in slack_of.items()}
            self._heap = [(-v, t) for t, v in live.items()]
            heapq.heapify(self._heap)
        else:
            for entry in pushes:
                heapq.heappush(heap, entry)
        return out

    def republish(self, index: RarityIndex) -> None:
        """Every token's view was derived afresh: take the current values as published."""
        entropy = index.entropy
        self.reset(index, {tid: (index.score(tid, entropy) or 0.0, index.rank(tid) or 0) for tid in index.p})
