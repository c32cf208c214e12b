"""Pulse's clock: time moves for collections that have no events.

Listings and offers expire, the time-weighted floor's window slides, attention decays and the days (the
age factor, a last sale's decay) go by whether or not events arrive. Each applied batch records its
collections' next such moment (``store.clocks``); this one long-lived workflow sleeps on a durable timer
until the earliest, then appends a clock event for every collection due (``TICK_CLOCKS``). The event goes
the way of any other: dispatched to its collection's shard, applied (the floor moves past the lapsed
listing, the best offer past the lapsed offer), changes detected and notified, and replayed by a
recompute, so ``pulse verify`` holds at every instant.

A moment recorded after the timer was set (a new listing expiring sooner) is found at the next look,
at most ``LOOK_EVERY`` later.
"""

# No ``from __future__ import annotations``: see activities/contracts/base.py.
from dataclasses import dataclass
from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nftpulse.activities.contracts.pipeline import TICK_CLOCKS, ClockInput

LOOK_EVERY = timedelta(minutes=1)
LOOKS_PER_RUN = 500


@dataclass
class ClockRun:
    """Nothing yet: a dataclass so that the input can grow without breaking running clocks."""


def clock_workflow_id(prefix: str) -> str:
    return f"{prefix}clock"


@workflow.defn(name="Clock")
class ClockWorkflow:
    @workflow.run
    async def run(self, inp: ClockRun) -> None:
        for _ in range(LOOKS_PER_RUN):
            now = workflow.now()
            result = await TICK_CLOCKS.run(ClockInput(now.isoformat()))
            if result.more:
                continue
            wait = LOOK_EVERY
            if result.next_due:
                wait = min(wait, datetime.fromisoformat(result.next_due) - workflow.now())
            if wait > timedelta(0):
                await workflow.sleep(wait)
            if workflow.info().is_continue_as_new_suggested():
                break
        workflow.continue_as_new(ClockRun())
