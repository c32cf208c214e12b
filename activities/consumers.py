"""The consumers' activities: read the change log into a consumer's outbox, and deliver one change.

Delivery goes through the webhook channel (``channels.webhook``) that notifications use: the same
Standard Webhooks signing, the same SSRF rules (the URL vetted again before every attempt and the request
sent to the vetted address, no redirects), the same retry schedule (``next_retry_delay``, or the
receiver's longer Retry-After). The message id is the change's (``store.consumers.message_key``), so every
retry and replay of a change carries the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from temporalio import activity
from temporalio.client import Client

from nftpulse.activities.contracts.consumers import (
    DELIVER_CHANGE,
    DELIVERED,
    GAVE_UP,
    GONE,
    MISSING,
    READ_CHANGES,
    RETRY,
    DeliverChangeInput,
    DeliverChangeResult,
    QueuedDelivery,
    ReadInput,
    ReadResult,
    ensure_runner,
)
from nftpulse.channels.base import Channel, OutboundMessage, PermanentDeliveryError, TransientDeliveryError
from nftpulse.channels.webhook import next_retry_delay
from nftpulse.core.metrics import CONSUMER_DELIVERIES, CONSUMER_LAG
from nftpulse.store import changes
from nftpulse.store import consumers as store
from nftpulse.store.db import Database
from nftpulse.store.models import ConsumerDelivery, ConsumerRecord

log = logging.getLogger("pulse.consumers")

#: The Standard Webhooks ``type`` of a change's message.
EVENT_TYPE = "entity.changed"
#: How often a long-polling read looks at the change log again.
POLL_S = 0.25


#: Seconds between heartbeats while an endpoint takes its time to answer.
HEARTBEAT_EVERY_S = 2.0

T = TypeVar("T")
R = TypeVar("R")


async def _heartbeating(work: Awaitable[T]) -> T:
    """Await ``work``, heartbeating meanwhile: the server then knows this worker is alive (see the
    contract's ``heartbeat``)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY_S)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        task.cancel()  # a no-op once done; else the attempt was cancelled under it


class ConsumerActivities:
    """Built once by the worker with the webhook channel it sends on."""

    def __init__(self, db: Database, webhook: Channel, retention: timedelta, db_threads: int = 16) -> None:
        self._db = db
        self._webhook = webhook
        self._retention = retention
        # Threads of their own for the database calls: the event loop's default pool has cpu_count + 4
        # threads for every activity of the process, and deliveries spend most of their time waiting on
        # commits (on Postgres, 6 threads held a runner to ~40 deliveries/s; bench/consumers.py).
        self._threads = ThreadPoolExecutor(max_workers=db_threads, thread_name_prefix="pulse-consumers")

    async def _db_call(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    @READ_CHANGES.implement
    async def read_changes(self, inp: ReadInput) -> ReadResult:
        """The consumer's next matching changes after ``inp.cursor``, written to its outbox; with nothing
        new, waits up to ``inp.wait_s`` for some."""
        deadline = time.monotonic() + inp.wait_s
        gap_id, gap_since = inp.gap_id, datetime.fromisoformat(inp.gap_since) if inp.gap_since else None
        cursor = inp.cursor
        while True:
            activity.heartbeat()
            outcome = await self._db_call(self._read, inp, cursor, gap_id, gap_since)
            if outcome.stop or outcome.queued or time.monotonic() >= deadline:
                break
            # Nothing for this consumer yet; the next look starts where this one got to.
            cursor, gap_id, gap_since = outcome.cursor, outcome.gap_id, outcome.gap_since
            await asyncio.sleep(POLL_S)
        return ReadResult(
            [QueuedDelivery(i, key, c) for i, key, c in outcome.queued],
            outcome.cursor,
            outcome.gap_id,
            outcome.gap_since.isoformat() if outcome.gap_since else None,
            outcome.stop,
        )

    def _read(
        self, inp: ReadInput, cursor: int | None, gap_id: int | None, gap_since: datetime | None
    ) -> store.ReadOutcome:
        now = datetime.now(UTC)
        with self._db.write() as s:
            outcome = store.read(
                s,
                inp.consumer_id,
                cursor,
                inp.generation,
                gap_id=gap_id,
                gap_since=gap_since,
                limit=inp.limit,
                now=now,
            )
            if outcome.stop is None:
                store.prune_deliveries(s, inp.consumer_id, now - self._retention)
                CONSUMER_LAG.labels(inp.consumer_id).set(max(0, changes.head(s) - outcome.cursor))
        if outcome.stop is not None:
            with contextlib.suppress(KeyError):  # no series of a consumer that is no more
                CONSUMER_LAG.remove(inp.consumer_id)
        if outcome.lost_from is not None:
            # Behind the change log's retention (a runner stopped for longer than it): what was pruned
            # cannot be delivered any more.
            log.warning(
                "consumer.behind_retention",
                extra={
                    "consumer": inp.consumer_id,
                    "cursor": outcome.lost_from,
                    "resumed_at": outcome.cursor,
                },
            )
        return outcome

    @DELIVER_CHANGE.implement
    async def deliver_change(self, inp: DeliverChangeInput) -> DeliverChangeResult:
        """POST one change, signed; the endpoint's answer is the result (see the contract)."""
        loaded = await self._db_call(self._load, inp.delivery_id)
        if loaded is None:
            return DeliverChangeResult(MISSING)
        row, consumer = loaded
        if row.status != "pending":
            # An earlier attempt finished it (its result was lost with a worker), or it was let go when
            # the consumer was disabled: do not send it again (a replay sends what it asks for anew).
            done = DELIVERED if row.status == DELIVERED else GAVE_UP
            return DeliverChangeResult(done, row.response_code)
        if consumer.status != store.ACTIVE:
            return DeliverChangeResult(GONE)
        message = OutboundMessage(
            idempotency_key=row.message_id,
            user_id=consumer.id,
            kind="change",
            severity="info",
            to=consumer.url,
            payload=row.payload,
            webhook_secret=consumer.secret,
            event_type=EVENT_TYPE,
        )
        try:
            receipt = await _heartbeating(self._webhook.send(message))
        except TransientDeliveryError as exc:
            code = exc.code if isinstance(exc.code, int) else None
            scheduled = next_retry_delay(row.attempts + 1)
            status = "pending" if scheduled is not None else GAVE_UP
            await self._db_call(self._record, row.id, status, code, exc.message)
            if scheduled is None:
                return self._outcome(consumer.id, GAVE_UP, code)
            # The schedule (5 s, 5 min, 30 min, …) unless the receiver asked for longer.
            delay = max(scheduled, exc.retry_after or 0.0)
            CONSUMER_DELIVERIES.labels(consumer.id, RETRY).inc()
            return DeliverChangeResult(RETRY, code, delay)
        except PermanentDeliveryError as exc:
            code = exc.code if isinstance(exc.code, int) else None
            status = GONE if exc.disable_endpoint else GAVE_UP
            await self._db_call(self._record, row.id, status, code, exc.message)
            if exc.disable_endpoint:
                await self._db_call(self._disable, consumer.id, exc.message)
                log.warning("consumer.disabled", extra={"consumer": consumer.id, "reason": exc.message})
            return self._outcome(consumer.id, status, code)
        http_status = receipt.detail.get("http_status")
        code = http_status if isinstance(http_status, int) else None
        await self._db_call(self._record, row.id, DELIVERED, code, None)
        return self._outcome(consumer.id, DELIVERED, code)

    @staticmethod
    def _outcome(consumer_id: str, outcome: str, code: int | None) -> DeliverChangeResult:
        CONSUMER_DELIVERIES.labels(consumer_id, outcome).inc()
        return DeliverChangeResult(outcome, code)

    def _load(self, delivery_id: int) -> tuple[ConsumerDelivery, ConsumerRecord] | None:
        with self._db.read() as s:
            return store.delivery(s, delivery_id)

    def _record(self, delivery_id: int | None, status: str, code: int | None, error: str | None) -> int:
        with self._db.write() as s:
            return store.record_attempt(s, delivery_id or 0, status, code, error, datetime.now(UTC))

    def _disable(self, consumer_id: str, reason: str) -> None:
        with self._db.write() as s:
            store.disable(s, consumer_id, f"endpoint answered 410 Gone: {reason}", datetime.now(UTC))


async def ensure_runners(client: Client, db: Database, prefix: str, task_queue: str) -> None:
    """Ensure a runner for every active consumer: one created while Temporal was away, or whose runner
    was terminated by hand, gets one when a worker starts."""

    def active() -> list[str]:
        with db.read() as s:
            return [c.id for c in store.listed(s) if c.status == store.ACTIVE]

    try:
        for consumer_id in await asyncio.to_thread(active):
            await ensure_runner(client, prefix, task_queue, consumer_id)
    except Exception:
        # Never fatal for the worker (Temporal or the database briefly away as it starts): the API ensures
        # a consumer's runner at creation and at each replay, and the next worker start tries again.
        log.exception("consumer.ensure_failed")
