"""Gini, top-10 share, the time-weighted floor and the modified z-score, by hand."""

from __future__ import annotations

from decimal import Decimal

import pytest

from nftpulse.domain.market import condition, ewma, modified_z
from nftpulse.domain.stats import OPEN, FloorSeries, ListingIndex, gini, holding_hist, top_share

H = 3_600_000_000  # one hour in microseconds


def test_gini_by_hand() -> None:
    # [1, 1, 2]: sum|xi - xj| over ordered pairs = 4; G = 4 / (2 * 3^2 * 4/3) = 1/6
    assert gini(holding_hist([1, 1, 2])) == pytest.approx(1 / 6)
    # [1, 9]: 16 / (2 * 4 * 5) = 0.4
    assert gini(holding_hist([1, 9])) == pytest.approx(0.4)
    assert gini(holding_hist([3, 3, 3])) == 0.0
    assert gini({}) == 0.0


def test_top_share_by_hand() -> None:
    # one wallet with 10, eleven with 1: the top ten hold 10 + 9 of 21
    assert top_share(holding_hist([10] + [1] * 11)) == pytest.approx(19 / 21)


def test_twap_by_hand() -> None:
    # A at 2 from 0h to 10h, B at 1 from 5h on: floor 2 for 5h, then 1
    series = FloorSeries.build([(0, 10 * H, Decimal(2)), (5 * H, OPEN, Decimal(1))])
    assert series.average(0, 20 * H) == Decimal("1.25")  # (2*5 + 1*15) / 20
    assert series.average(0, 4 * H) == Decimal(2)
    # gaps without listings do not count: C at 3 for 0-1h, D at 1 for 2-3h -> (3 + 1) / 2
    gaps = FloorSeries.build([(0, H, Decimal(3)), (2 * H, 3 * H, Decimal(1))])
    assert gaps.average(0, 3 * H) == Decimal(2)
    assert gaps.average(4 * H, 5 * H) is None


def test_tail_rebuild_equals_full_build() -> None:
    before = [(0, 10 * H, Decimal(2)), (5 * H, OPEN, Decimal(1)), (6 * H, OPEN, Decimal("0.5"))]
    after = [(0, 10 * H, Decimal(2)), (5 * H, OPEN, Decimal(1)), (6 * H, 8 * H, Decimal("0.5"))]
    base = FloorSeries.build(before)
    tail = FloorSeries.build(after, base, 8 * H)
    assert tail == FloorSeries.build(after)
    assert tail.average(0, 12 * H) == FloorSeries.build(after).average(0, 12 * H)


def test_listing_index_floor_and_expiry() -> None:
    index = ListingIndex()
    index.put("a", Decimal(1), "2026-01-02T00:00:00+00:00")
    index.put("b", Decimal(2), None)
    assert index.floor == Decimal(1)
    assert index.expire("2026-01-01T23:59:59+00:00") == set()
    assert index.expire("2026-01-02T00:00:00+00:00") == {"a"}
    assert index.floor == Decimal(2)
    index.put("b", None, None)
    assert index.floor is None and len(index) == 0


def test_modified_z_by_hand() -> None:
    # median 3, MAD median(|[2, 1, 0, 1, 2]|) = 1: z(10) = 0.6745 * 7 = 4.7215
    z = modified_z([1, 2, 3, 4, 5], 10)
    assert z.z == pytest.approx(4.7215)
    assert z.outlier
    assert not modified_z([1, 2, 3, 4, 5], 4).outlier
    # MAD 0: mean absolute deviation 0.2 stands in: (3 - 2) / (1.253314 * 0.2) = 3.9894
    z = modified_z([2, 2, 2, 2, 3], 3)
    assert z.z == pytest.approx(3.98942, abs=1e-4)
    assert z.outlier
    assert modified_z([2, 2, 2], 2).outlier is False
    assert modified_z([2, 2, 2], 3) == modified_z([2, 2, 2], 5)


def test_ewma_and_condition() -> None:
    assert ewma([1, 2, 3], 0.5) == pytest.approx(2.25)
    up = condition([1, 1, 1, 1, 1, 1, 1.2], [1] * 7)
    assert up["trend"] == "up"
    down = condition([1, 1, 1, 1, 1, 1, 0.8], [1] * 7)
    assert down["trend"] == "down"
    spike = condition([1] * 7, [1, 1.2, 0.9, 1, 1.1, 1, 100])
    assert spike["anomaly"]["outlier"] and spike["anomaly"]["volume"]["outlier"]
    assert condition([None, None], [0, 0])["trend"] == "flat"
