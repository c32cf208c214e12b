"""Market condition per collection: trend from EWMA baselines, anomalies by modified z-score. Pure.

Series are per UTC day from the collection's first active day to the book's clock day: the daily
floor is the time-weighted floor of that day (days without any listing are skipped), the daily volume
is the sum of that day's sales. Both are taken in logs (``log floor``, ``log(1 + volume)``).

* Trend: the latest log floor against the EWMA (alpha 0.3) of the days before it; a move past
  +/- 0.05 (about 5%) is ``up``/``down``. Without two floor days, log volume decides with +/- 0.2.
* Anomaly: the modified z-score ``0.6745 * (x - median) / MAD`` of the latest day against the days
  before it (at least five), for log volume and log floor; ``|z| > 3.5`` is an outlier. When the MAD is
  zero the mean absolute deviation scaled by 1.253314 stands in (Iglewicz and Hoaglin); when that is
  zero too, any departure from the median is an outlier and ``z`` is None.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

OUTLIER = 3.5
MIN_HISTORY = 5


@dataclass(frozen=True)
class ZScore:
    """A modified z-score (None when not computable) and whether it marks an outlier."""

    z: float | None
    outlier: bool


def modified_z(history: Sequence[float], x: float) -> ZScore:
    """``0.6745 * (x - median) / MAD`` of ``x`` against ``history``."""
    median = statistics.median(history)
    mad = statistics.median(abs(v - median) for v in history)
    if mad > 0:
        z = 0.6745 * (x - median) / mad
        return ZScore(z, abs(z) > OUTLIER)
    mean_ad = math.fsum(abs(v - median) for v in history) / len(history)
    if mean_ad > 0:
        z = (x - median) / (1.253314 * mean_ad)
        return ZScore(z, abs(z) > OUTLIER)
    return ZScore(None, x != median)


def ewma(values: Sequence[float], alpha: float) -> float | None:
    """Exponentially weighted moving average, seeded with the first value."""
    out: float | None = None
    for v in values:
        out = v if out is None else alpha * v + (1 - alpha) * out
    return out


def condition(daily_floor: Sequence[float | None], daily_volume: Sequence[float]) -> dict[str, Any]:
    """``{trend, anomaly}`` from daily floors (None: no listing that day) and daily volumes."""
    log_floor = [math.log(f) for f in daily_floor if f is not None and f > 0]
    log_volume = [math.log1p(v) for v in daily_volume]
    trend = "flat"
    if len(log_floor) >= 2:
        base = ewma(log_floor[:-1], 0.3)
        assert base is not None
        move = log_floor[-1] - base
        trend = "up" if move > 0.05 else "down" if move < -0.05 else "flat"
    elif len(log_volume) >= 2:
        base = ewma(log_volume[:-1], 0.3)
        assert base is not None
        move = log_volume[-1] - base
        trend = "up" if move > 0.2 else "down" if move < -0.2 else "flat"
    checks: dict[str, Any] = {}
    for name, series in (("volume", log_volume), ("floor", log_floor)):
        if len(series) - 1 >= MIN_HISTORY:
            score = modified_z(series[:-1], series[-1])
            checks[name] = {"z": None if score.z is None else round(score.z, 4), "outlier": score.outlier}
    outlier = any(c["outlier"] for c in checks.values())
    return {"trend": trend, "anomaly": {"outlier": outlier, **checks}}
