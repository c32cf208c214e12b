"""Fair draining: with thousands of busy collections on one shard, every one is served within a bound
(``workflows.draining``, the shard workflow's choice of partitions, tested as the pure function it is)."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

from sqlalchemy import func, select
from sqlmodel import col
from temporalio.client import Client

from nftpulse.activities.contracts.pipeline import COSTLY_APPLY_S
from nftpulse.store.cache import MemoryCache
from nftpulse.store.models import EventRecord
from nftpulse.verify import verify
from nftpulse.worker import build_worker
from nftpulse.workflows.draining import DirtyQueue
from nftpulse.workflows.pipeline import PARTITIONS_PER_BATCH, REST_FACTOR
from tests.conftest import RunningPulse, replay_under_sandbox, run_pulse

BUSY = 5000


def _longest_wait(fair: bool, batches: int, seed: int = 1) -> tuple[int, int]:
    """Simulate a shard whose ``BUSY`` partitions all stay busy (every batch has more pending, and wakes
    for random partitions keep arriving). Returns the longest wait in batches from being marked dirty to
    being served, counting partitions never served up to the end, and how many were never served."""
    rnd = random.Random(seed)
    names = [f"collection:ethereum:0x{rnd.getrandbits(160):040x}" for _ in range(BUSY)]
    queue = DirtyQueue()
    waiting_since: dict[str, int] = {}

    def wake(partitions: list[str], at: int) -> None:
        queue.mark(partitions)
        for partition in partitions:
            waiting_since.setdefault(partition, at)

    wake(names, 0)
    longest = 0
    served: set[str] = set()
    for batch in range(batches):
        take = queue.take(PARTITIONS_PER_BATCH, fair=fair)
        assert len(take) == PARTITIONS_PER_BATCH
        for partition in take:
            longest = max(longest, batch - waiting_since.pop(partition))
            served.add(partition)
        # A wake during the batch for some of everyone, then the batch reports more pending.
        wake(rnd.sample(names, 300), batch)
        queue.requeue(take)
        for partition in take:
            waiting_since.setdefault(partition, batch + 1)
    never = BUSY - len(served)
    longest = max([longest, *(batches - since for since in waiting_since.values())])
    return longest, never


def test_oldest_first_serves_every_busy_collection_within_the_bound() -> None:
    bound = math.ceil(BUSY / PARTITIONS_PER_BATCH)
    longest, never = _longest_wait(fair=True, batches=200)
    assert never == 0
    assert longest <= bound, (longest, bound)


def test_alphabetical_draining_starved_later_names() -> None:
    # What shards did before the fair-draining patch (and still do when replaying such a history).
    longest, never = _longest_wait(fair=False, batches=200)
    assert never == BUSY - PARTITIONS_PER_BATCH
    assert longest == 200


def test_a_partition_marked_again_keeps_its_place() -> None:
    queue = DirtyQueue(["b", "a"])
    queue.mark(["c", "b"])
    assert queue.take(2) == ["b", "a"]
    queue.mark(["d"])
    queue.requeue(["b", "a"])
    assert queue.listed() == ["c", "d", "b", "a"]
    assert queue.listed(fair=False) == ["a", "b", "c", "d"]
    assert queue.take(10, fair=False) == ["a", "b", "c", "d"]
    assert not queue


def test_resting_partitions_are_passed_over_and_keep_their_place() -> None:
    queue = DirtyQueue(["big", "a", "b"])
    assert queue.any_but({"big"}) and not DirtyQueue(["big"]).any_but({"big"})
    assert queue.take(2, resting={"big"}) == ["a", "b"]
    queue.mark(["c"])
    assert queue.listed() == ["big", "c"]
    # Its rest over, it is the oldest again.
    assert queue.take(1) == ["big"]


async def test_a_costly_collection_rests_while_others_are_served(
    database_url: str, temporal_client: Client
) -> None:
    """On the dev server, one shard: a 1,000-token collection minted in one batch (every token with
    traits: a rarity rebuild and a thousand views, 0.1-0.3 s) is costly, so the collection rests for a
    second or more; a small collection's event that arrives with the big one's next is applied first, in
    a batch of its own, and everything ends processed and verified. Without the rest both went into one
    batch."""
    big, small = "0x" + "b" * 40, "0x" + "5" * 40

    def event(tag: str, contract: str, token: int, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": tag,
            "source": "test",
            "type": kind,
            "occurred_at": "2026-11-01T10:00:00Z",
            "chain": "ethereum",
            "contract": contract,
            "token_id": str(token),
            "data": data,
        }

    def traits(i: int) -> dict[str, str]:
        return {"hat": f"h{i % 7}", "eyes": f"e{i % 11}", "fur": f"f{i % 13}"}

    mint = {"from": "0x" + "0" * 40, "to": "0x" + "a" * 40}
    async with run_pulse(database_url, temporal_client, shards=1) as pulse:
        # One request, so one dispatcher tick and one batch.
        mints = [event(f"mint{i}", big, i, "mint", {**mint, "traits": traits(i)}) for i in range(1000)]
        resp = await pulse.post(mints)
        assert resp.status_code == 202, resp.text
        await _reached(pulse, len(mints), "mint", "processed")
        second = [
            event("reveal", big, 7, "metadata_update", {"traits": traits(8)}),
            event("small", small, 1, "mint", {**mint, "traits": traits(1)}),
        ]
        resp = await pulse.post(second)
        assert resp.status_code == 202, resp.text
        final = await pulse.wait_final([("test", "reveal"), ("test", "small")], limit_s=60)
        assert set(final.values()) == {"processed"}
        with pulse.db.read() as session:
            done = dict(
                session.execute(
                    select(col(EventRecord.external_id), col(EventRecord.processed_at)).where(
                        col(EventRecord.external_id).in_(["reveal", "small", "mint0"])
                    )
                ).all()
            )
        assert done["small"] < done["reveal"], done
        # At least the rest of a batch that took the least a costly one takes.
        assert (done["reveal"] - done["mint0"]).total_seconds() >= COSTLY_APPLY_S * REST_FACTOR
        assert verify(pulse.db).ok
        assert await replay_under_sandbox(pulse.client, pulse.task_queue)


async def test_a_real_shard_serves_the_oldest_partitions_first(
    database_url: str, temporal_client: Client
) -> None:
    """On the dev server, one shard: 300 alphabetically late collections become dirty before 300 early
    ones; the shard's first batch (200 partitions) serves only the late, older ones. Alphabetical
    draining served the early names first."""
    late = [f"0x{'f' * 37}{i:03d}" for i in range(300)]
    early = [f"0x{'0' * 37}{i:03d}" for i in range(300)]

    def mints(contracts: list[str], tag: str) -> list[dict[str, Any]]:
        return [
            {
                "id": f"{tag}{i}",
                "source": "test",
                "type": "mint",
                "occurred_at": "2026-11-01T10:00:00Z",
                "chain": "ethereum",
                "contract": contract,
                "token_id": "1",
                "data": {"from": "0x" + "0" * 40, "to": "0x" + "a" * 40, "traits": {"hat": "cap"}},
            }
            for i, contract in enumerate(contracts)
        ]

    async with run_pulse(database_url, temporal_client, worker=False, shards=1) as pulse:
        for contracts, tag in ((late, "late"), (early, "early")):
            resp = await pulse.post(mints(contracts, tag))
            assert resp.status_code == 202, resp.text
            await _reached(pulse, len(contracts), tag, "dispatched", limit_s=60)
        worker, _ = build_worker(pulse.client, pulse.settings, pulse.db, MemoryCache())
        running = asyncio.create_task(worker.run())
        try:
            final = await pulse.wait_final(
                [("test", f"{tag}{i}") for tag in ("late", "early") for i in range(300)], limit_s=120
            )
            assert set(final.values()) == {"processed"}
        finally:
            await asyncio.wait_for(worker.shutdown(), timeout=30)
            await asyncio.gather(running, return_exceptions=True)
        with pulse.db.read() as session:
            rows = session.execute(
                select(col(EventRecord.external_id), col(EventRecord.processed_at)).where(
                    col(EventRecord.source) == "test"
                )
            ).all()
        first_batch = sorted(rows, key=lambda r: r.processed_at)[:PARTITIONS_PER_BATCH]
        assert all(r.external_id.startswith("late") for r in first_batch)
        assert verify(pulse.db).ok
        assert await replay_under_sandbox(pulse.client, pulse.task_queue)


async def _reached(pulse: RunningPulse, count: int, tag: str, status: str, limit_s: float = 120) -> None:
    """Until all ``count`` events tagged ``tag`` have ``status`` (``dispatched``: the dispatcher has woken
    the shard for them)."""
    for _ in range(int(limit_s * 10)):
        with pulse.db.read() as session:
            done: int = session.execute(
                select(func.count())
                .select_from(EventRecord)
                .where(col(EventRecord.external_id).startswith(tag), col(EventRecord.status) == status)
            ).scalar_one()
        if done == count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{tag}: {done} of {count} {status}")
