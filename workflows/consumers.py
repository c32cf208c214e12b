"""A consumer's runner: one long-running workflow per consumer that reads the change log by cursor and
delivers what matches its filters, ordered per entity.

Reads (``READ_CHANGES``) long-poll the change log and write the matching changes into the consumer's
outbox; each entity's changes then go out one after the other (``DELIVER_CHANGE``), while different
entities' go out side by side (at most :data:`MAX_IN_FLIGHT` at once). A change the endpoint refused waits
the retry schedule's delay on a durable timer, and its entity's later changes wait behind it until it is
delivered or given up. A 410 disables the consumer and ends the run; a deleted consumer ends it too.

The state (cursor, generation, the queued deliveries with their next attempt's time) is small and plain,
so the run continues as new whenever its history grows long, after letting the deliveries in flight
finish; a waiting retry carries over as its due time. A ``replay`` signal moves the cursor back and
starts a new generation. Times come from ``workflow.now()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nftpulse.activities.contracts.consumers import (
        CONSUMER_WORKFLOW,
        DELIVER_CHANGE,
        GONE,
        READ_CHANGES,
        RETRY,
        ConsumerInput,
        ConsumerOutcome,
        DeliverChangeInput,
        QueuedDelivery,
        ReadInput,
        Replay,
    )

#: Deliveries one consumer has in flight at once (each to a different entity).
MAX_IN_FLIGHT = 32
#: Deliveries read ahead and not yet finished; reading waits while this many are queued.
MAX_QUEUED = 500


@workflow.defn(name=CONSUMER_WORKFLOW)
class ConsumerWorkflow:
    """Delivery of the change log to one consumer."""

    @workflow.init
    def __init__(self, inp: ConsumerInput) -> None:
        self._cursor = inp.cursor
        self._generation = inp.generation
        self._gap_id, self._gap_since = inp.gap_id, inp.gap_since
        self._queues: dict[str, list[QueuedDelivery]] = {}
        for item in inp.queued:
            self._queues.setdefault(item.entity_key, []).append(item)
        self._running: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: What broke a delivery task (a bug, not an endpoint's answer): the run fails with it.
        self._failed: BaseException | None = None
        self._in_flight = 0
        self._draining = False
        self._stop: str | None = None
        self._replays: list[Replay] = []

    @workflow.signal(name="replay")
    def replay(self, req: Replay) -> None:
        """Deliver again everything after ``req.from_cursor`` (the API checked it is within retention)."""
        self._replays.append(req)

    @workflow.query(name="status")
    def status(self) -> dict[str, int | str | None]:
        """Where the runner stands: its cursor, generation and queued deliveries."""
        queued = sum(len(q) for q in self._queues.values())
        return {"cursor": self._cursor, "generation": self._generation, "queued": queued, "stop": self._stop}

    def _queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _state(self, inp: ConsumerInput) -> ConsumerInput:
        queued = [item for queue in self._queues.values() for item in queue]
        return ConsumerInput(
            inp.consumer_id,
            self._cursor,
            self._generation,
            queued,
            self._gap_id,
            self._gap_since,
            inp.history_limit,
            inp.read_wait_s,
            inp.idle_s,
        )

    @workflow.run
    async def run(self, inp: ConsumerInput) -> ConsumerOutcome:
        while True:
            if self._failed is not None:
                raise self._failed
            if self._replays:
                req = self._replays.pop(0)
                self._cursor, self._generation = req.from_cursor, req.generation
                self._gap_id = self._gap_since = None
                self._stop = None
                continue
            self._start(inp.consumer_id)
            if self._stop is not None:
                # Let what is in flight finish (its answer is recorded), unless a replay revives the run.
                await workflow.wait_condition(lambda: not self._running or bool(self._replays))
                if self._replays:
                    continue
                return ConsumerOutcome(inp.consumer_id, self._stop)
            if workflow.info().get_current_history_length() > inp.history_limit or (
                workflow.info().is_continue_as_new_suggested()
            ):
                self._draining = True
                await workflow.wait_condition(lambda: not self._running)
                self._draining = False
                if self._replays:
                    continue  # a signal must not be left behind in this run: apply it first
                workflow.continue_as_new(self._state(inp))
            if self._queued() >= MAX_QUEUED:
                with contextlib.suppress(asyncio.TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._queued() < MAX_QUEUED or bool(self._replays) or self._stop is not None,
                        timeout=timedelta(minutes=1),
                    )
                continue
            result = await READ_CHANGES.run(
                ReadInput(
                    inp.consumer_id,
                    self._cursor,
                    self._generation,
                    self._gap_id,
                    self._gap_since,
                    wait_s=0.0 if self._replays else inp.read_wait_s,
                )
            )
            if result.stop is not None:
                self._stop = result.stop
                continue
            for item in result.queued:
                self._queues.setdefault(item.entity_key, []).append(item)
            if not self._replays:  # else the replay's cursor wins
                self._cursor = result.cursor
                self._gap_id, self._gap_since = result.gap_id, result.gap_since
            if not result.queued and inp.idle_s > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await workflow.wait_condition(
                        lambda: bool(self._replays) or self._stop is not None,
                        timeout=timedelta(seconds=inp.idle_s),
                    )

    def _start(self, consumer_id: str) -> None:
        """A delivery task for each entity with queued changes and none running."""
        if self._draining or self._stop is not None:
            return
        for entity in list(self._queues):
            if entity not in self._running:
                self._running.add(entity)
                self._tasks[entity] = asyncio.create_task(self._drain(entity))

    def _halted(self) -> bool:
        return self._draining or self._stop is not None

    async def _drain(self, entity: str) -> None:
        """Deliver one entity's queued changes in order: the next waits until the one before it is
        delivered or given up."""
        queue = self._queues[entity]
        try:
            while queue and not self._halted():
                item = queue[0]
                if item.not_before is not None:
                    wait = datetime.fromisoformat(item.not_before) - workflow.now()
                    if wait > timedelta(0):
                        with contextlib.suppress(asyncio.TimeoutError):
                            await workflow.wait_condition(self._halted, timeout=wait)
                        continue
                while self._in_flight >= MAX_IN_FLIGHT and not self._halted():
                    await workflow.wait_condition(lambda: self._in_flight < MAX_IN_FLIGHT or self._halted())
                if self._halted():
                    break
                self._in_flight += 1
                try:
                    result = await DELIVER_CHANGE.run(DeliverChangeInput(item.delivery_id))
                finally:
                    self._in_flight -= 1
                if result.outcome == RETRY:
                    item.not_before = (
                        workflow.now() + timedelta(seconds=result.retry_in_s or 0.0)
                    ).isoformat()
                    continue
                if result.outcome == GONE:
                    self._stop = "disabled"
                    break
                queue.pop(0)  # delivered, given up, or its consumer is gone
        except Exception as exc:
            self._failed = exc
            raise
        finally:
            self._running.discard(entity)
            self._tasks.pop(entity, None)
            if not queue and self._queues.get(entity) is queue:
                del self._queues[entity]
