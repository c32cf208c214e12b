"""The read cache's version floors (in process and on a real Redis) and load shedding under a burst."""

from __future__ import annotations

import uuid

import pytest
import redis
from prometheus_client import generate_latest
from temporalio.client import Client

from nftpulse.store.cache import MemoryCache, RedisCache
from tests.conftest import run_pulse

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> MemoryCache | RedisCache:
    if request.param == "memory":
        return MemoryCache(max_entries=10)
    if not _redis_available():
        pytest.skip("no Redis at 127.0.0.1:6379 (CI has one)")
    return RedisCache(REDIS_URL, prefix=f"pulse-test-{uuid.uuid4().hex[:8]}:")


def test_a_stale_fill_after_invalidation_is_refused(cache: MemoryCache | RedisCache) -> None:
    cache.fill("k", 1, {"v": 1})
    assert cache.get("k") == {"v": 1}
    # A reader loaded version 1 before the commit of version 2 and tries to cache it afterwards.
    cache.invalidate({"k": 2})
    assert cache.get("k") is None
    cache.fill("k", 1, {"v": 1})
    assert cache.get("k") is None
    cache.fill("k", 2, {"v": 2})
    assert cache.get("k") == {"v": 2}
    # A floor never moves back.
    cache.invalidate({"k": 1})
    cache.fill("k", 1, {"v": 1})
    assert cache.get("k") is None


def test_memory_cache_is_bounded() -> None:
    cache = MemoryCache(max_entries=3)
    for i in range(10):
        cache.fill(f"k{i}", 1, {"i": i})
    assert cache.get("k0") is None and cache.get("k9") == {"i": 9}


async def test_shedding_refuses_low_priority_and_keeps_critical(
    database_url: str, temporal_client: Client
) -> None:
    contract = "0x" + "ef" * 20
    owner = "0x" + "1" * 40
    # No worker and no dispatcher: everything accepted stays in the backlog, which passes a bound of 5.
    async with run_pulse(
        database_url, temporal_client, worker=False, dispatcher=False, backlog_shed_threshold=5
    ) as pulse:
        mints = [
            {
                "id": f"m{i}",
                "source": "burst",
                "type": "mint",
                "occurred_at": "2026-11-01T00:00:00Z",
                "chain": "ethereum",
                "contract": contract,
                "token_id": str(i),
                "data": {"to": owner},
            }
            for i in range(20)
        ]
        assert (await pulse.post(mints[:10])).status_code == 202
        await pulse.app.state.services.backlog.refresh()
        finding = {
            "id": "f1",
            "source": "burst",
            "type": "fraud_finding",
            "occurred_at": "2026-11-01T00:00:01Z",
            "chain": "ethereum",
            "contract": contract,
            "data": {"finding_id": "F1", "kind": "rug_pull", "severity": "critical"},
        }
        resp = await pulse.post([*mints[10:], finding])
        assert resp.status_code == 429
        assert int(resp.headers["Retry-After"]) > 0
        body = resp.json()
        assert [r["id"] for r in body["accepted_ids"]] == ["f1"]
        assert len(body["refused_ids"]) == 10
        assert (await pulse.status("burst", "f1"))["status"] == "received"
        assert (
            await pulse.http.get("/v1/events/burst/m15", headers=pulse.keys.auth("read"))
        ).status_code == 404
        metrics = generate_latest().decode()
        assert "pulse_events_shed_total{priority=" in metrics


def test_dispatcher_adapts_wakes_and_concurrency_to_the_backlog() -> None:
    from nftpulse.core.settings import Settings
    from nftpulse.dispatcher import BACKLOG_PER_STEP, MAX_HANDOFF_CONCURRENCY, Dispatcher

    dispatcher = Dispatcher(Settings(partition_wake_interval_s=0.5), db=None, client=None)  # type: ignore[arg-type]
    assert dispatcher.wake_interval() == 0.5 and dispatcher.handoff_concurrency() == 8
    dispatcher._backlog = BACKLOG_PER_STEP
    assert dispatcher.wake_interval() == 1.0 and dispatcher.handoff_concurrency() == 18
    dispatcher._backlog = 100 * BACKLOG_PER_STEP
    assert dispatcher.wake_interval() == 2.0 and dispatcher.handoff_concurrency() == MAX_HANDOFF_CONCURRENCY


def test_shards_spread_partitions_stably_and_urgent_wakes_are_rate_limited() -> None:
    from nftpulse.core.settings import Settings
    from nftpulse.dispatcher import URGENT_WAKE_INTERVAL_S, Deferred, Dispatcher
    from nftpulse.workflows.pipeline import shard_of

    partitions = [f"collection:ethereum:0x{i:040x}" for i in range(400)]
    spread = [shard_of(p, 4) for p in partitions]
    # Stable across processes (not Python's salted hash) and roughly even.
    assert spread == [shard_of(p, 4) for p in partitions]
    assert all(60 < spread.count(shard) < 140 for shard in range(4))

    dispatcher = Dispatcher(Settings(partition_wake_interval_s=1.0), db=None, client=None)  # type: ignore[arg-type]
    dispatcher._woken_at = {0: 100.0, 1: 100.0}
    dispatcher._deferred = {0: Deferred({"a"}), 1: Deferred({"b"}, urgent=True)}
    # Just after a wake: neither is due; the urgent one becomes due after the short interval only.
    assert dispatcher._due_wakes(100.0 + URGENT_WAKE_INTERVAL_S / 2) == []
    due = dispatcher._due_wakes(100.0 + URGENT_WAKE_INTERVAL_S)
    assert len(due) == 1 and set(dispatcher._deferred) == {0}
    for job in due:
        job.close()  # the coroutine of a wake; not sent in this test


def test_dispatcher_ticks_at_most_once_per_interval_unless_behind() -> None:
    """Under a steady stream each tick carries an interval's worth of events; a full tick means a backlog,
    and the next one starts at once."""
    from nftpulse.dispatcher import pause_after_tick

    assert pause_after_tick(moved=0, batch_max=5000, took_s=0.01, interval_s=0.2) == pytest.approx(0.19)
    assert pause_after_tick(moved=40, batch_max=5000, took_s=0.05, interval_s=0.2) == pytest.approx(0.15)
    assert pause_after_tick(moved=40, batch_max=5000, took_s=0.5, interval_s=0.2) == 0.0
    assert pause_after_tick(moved=5000, batch_max=5000, took_s=0.01, interval_s=0.2) == 0.0
