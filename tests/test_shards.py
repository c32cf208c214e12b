"""Workers and shards: the shard count follows the workers that poll (many virtual shards over the shard
workflows), and changing it while events are in flight loses none and applies none twice."""

from __future__ import annotations

import asyncio
import hashlib
from decimal import Decimal

from nftpulse.store import events as event_store
from nftpulse.synth import Stream
from nftpulse.verify import verify
from nftpulse.workflows.pipeline import VIRTUAL_SHARDS, shard_count, shard_of, shard_workflow_id
from tests.conftest import RunningPulse, replay_under_sandbox


def test_the_shard_count_follows_the_workers_polling() -> None:
    assert shard_count(4, 0) == 4 and shard_count(4, 1) == 4 and shard_count(4, 2) == 4
    assert shard_count(4, 3) == 8 and shard_count(4, 4) == 8 and shard_count(4, 5) == 16
    assert shard_count(4, 1000) == VIRTUAL_SHARDS
    assert shard_count(1, 1) == 2 and shard_count(100, 3) == 100


def test_virtual_shards_keep_the_spread_of_powers_of_two() -> None:
    """Histories and dispatched events from before virtual shards named shards by the hash modulo the
    shard count: for every power of two up to ``VIRTUAL_SHARDS`` that is still the shard."""
    partitions = [f"collection:ethereum:0x{i:040x}" for i in range(500)]
    for shards in (1, 2, 4, 8, 16, 32, 64):
        for partition in partitions:
            digest = hashlib.blake2b(partition.encode(), digest_size=8).digest()
            assert shard_of(partition, shards) == int.from_bytes(digest, "big") % shards
    spread = {shard_of(p, VIRTUAL_SHARDS) for p in partitions}
    assert spread == set(range(VIRTUAL_SHARDS))


async def test_changing_the_shard_count_mid_stream_keeps_every_event_once(pulse: RunningPulse) -> None:
    stream = Stream(collections=12, tokens_per_collection=10, seed=21, source="shards")
    first = list(stream.mints()) + stream.take(150)
    second = stream.take(300)
    assert (await pulse.post(first)).status_code == 202
    for _ in range(200):  # until the dispatcher has sent the first events to the first shards
        if event_store.status_counts(pulse.db).get("received", 0) < len(first):
            break
        await asyncio.sleep(0.02)
    # Dispatched to the few shards of one worker; then many more shards, as if workers had joined, while
    # the first events are still being applied.
    pulse.settings.shards = 32
    pulse.dispatcher.scale_to(set())
    assert pulse.dispatcher.shards == 32
    assert (await pulse.post(second)).status_code == 202
    everything = first + second
    final = await pulse.wait_final([(e["source"], e["id"]) for e in everything], limit_s=120)
    assert set(final.values()) == {"processed"}

    sales = [e for e in everything if e["type"] == "sale"]
    for contract in {c.contract for c in stream.collections}:
        mine = [e for e in sales if e["contract"] == contract]
        resp = await pulse.http.get(f"/v1/collections/ethereum/{contract}", headers=pulse.keys.auth("read"))
        coll = resp.json()
        assert coll["sales_count"] == len(mine)
        assert Decimal(coll["volume"]) == sum(Decimal(e["data"]["price"]["amount"]) for e in mine)
    report = verify(pulse.db)
    assert report.ok, report.differences[:5]
    # Both the first shards and the added ones ran batches, and their histories replay.
    prefix = pulse.settings.workflow_id_prefix
    rows = [event_store.get(pulse.db, "shards", e["id"]) for e in second]
    shards = {str(r.workflow_id) for r in rows if r is not None}
    shards = {wf for wf in shards if wf.startswith(f"{prefix}shard/")}
    assert shards - {shard_workflow_id(prefix, s) for s in range(4)}, shards
    replayed = await replay_under_sandbox(pulse.client, pulse.task_queue)
    assert any(shard_workflow_id(prefix, s) in replayed for s in range(4)), replayed
