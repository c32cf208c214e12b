"""A metric change: one metric of one entity moved. Recalculation reports them (a batch's changes travel
as ``activities.contracts.pipeline.ChangeSet``) and significance rules evaluate them (``domain.rules``).

A plain frozen dataclass, not a pydantic model: recalculation builds one per changed metric on the hot
path, where validating each cost more than the rest of the bookkeeping.

No ``from __future__ import annotations``: see ``activities/contracts/base.py`` (the pipeline's contracts
use this type inside the workflow sandbox).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: The values a metric takes: numbers travel as Decimal strings, labels (risk, trend) as text; a fraud
#: finding or a wallet's activity (``activities.notify.alerts``) as a JSON object naming it.
Scalar = str | float | int | bool | dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class MetricChange:
    """One metric of one entity moved.

    ``at`` and ``cause`` are what detection knows and a batch's rows do not: the batch's time and its
    cause travel with the batch (``DetectInput``), and detection stamps them on each change it evaluates
    (rules need ``at``; ``domain.rules.evaluate`` refuses a change without it).
    """

    #: e.g. ``collection:ethereum:0xabc…`` or ``nft:ethereum:0xabc…:42``.
    entity_key: str
    #: floor, volume, trust, risk, trend, anomaly, owner, price_estimate, …
    metric: str
    before: Scalar = None
    after: Scalar = None
    #: Data time of the new value (timezone-aware).
    at: datetime | None = None
    #: Event id (or ids) that caused the move.
    cause: str | None = None
