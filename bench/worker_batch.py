"""Benchmark: the worker's CPU per event, step by step, without Temporal, HTTP or other processes.

    .venv/bin/python -m bench.worker_batch --database postgres --events 20000
    .venv/bin/python -m bench.worker_batch --database postgres --users 10000 --subscriptions 50000

The end-to-end benchmarks (``bench.pipeline``, ``bench.notify_pipeline``) say whether the targets are met,
but on a shared two-core machine their throughput moves by a fifth from run to run. This one isolates
what code changes move: it logs a synthetic stream (``pulse.synth``), routes it as the dispatcher does,
then drives the shard batch loop in this process, calling the real activities with the inputs a shard
gives them (``analyze``: the batch's plan, ``analyze_impact`` without impact analysis; ``recalculate``
with invalidation; ``detect``) through Temporal's ``ActivityEnvironment``, and reports, per step, this
process's CPU time (all threads), the Postgres processes' CPU time and wall time per event.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select
from temporalio.testing import ActivityEnvironment

from bench.notify_pipeline import seed_subscriptions
from bench.pipeline import bench_database
from nftpulse.activities.contracts.pipeline import ImpactInput, RecalcInput
from nftpulse.activities.notify.detection import DetectionActivities
from nftpulse.activities.pipeline import PipelineActivities
from nftpulse.channels.registry import ChannelRegistry
from nftpulse.cli import tune_gc
from nftpulse.core.settings import get_settings
from nftpulse.domain.classify import ClassifyContext, Thresholds, classify
from nftpulse.domain.events import Event
from nftpulse.store import events
from nftpulse.store.cache import MemoryCache
from nftpulse.store.db import Database
from nftpulse.store.events import DispatchMark
from nftpulse.store.models import Route
from nftpulse.store.notify import Notification
from nftpulse.synth import Stream
from nftpulse.workflows.pipeline import shard_of

T = TypeVar("T")
#: Measured steps: the API's insert and the dispatcher's routing update (database work only), then the
#: worker's. Detection includes in-app delivery.
STEPS = ("ingest", "dispatch", "analyze", "recalculate", "detect")
WORKER_STEPS = STEPS[2:]
#: Classification as a default deployment's API does it (no floors: the bench's routing only needs which
#: events are significant, and they are left out).
THRESHOLDS_CONTEXT = ClassifyContext(
    Thresholds(get_settings().significant_priority, get_settings().large_move)
)


def log_stream(db: Database, stream: list[dict[str, Any]], shards: int, meter: Meter) -> dict[int, set[str]]:
    """Append and route the stream as the API and the dispatcher do; returns each shard's partitions."""
    parsed = [Event.model_validate(e) for e in stream]
    seqs: list[int] = []
    for start in range(0, len(parsed), 1000):
        chunk = parsed[start : start + 1000]
        outcomes = meter.run("ingest", events.append, db, chunk, [(0.5, "normal")] * len(chunk))
        seqs += [o.seq for o in outcomes if o.seq is not None]
    marks: list[DispatchMark] = []
    dirty: dict[int, set[str]] = {}
    for seq, event in zip(seqs, parsed, strict=True):
        verdict = classify(event, THRESHOLDS_CONTEXT)
        partition = events.partition_of(event)
        # Significant events get workflows of their own in production; here they are simply left out.
        route = Route.OWN if verdict.significant else Route.PARTITION
        marks.append(DispatchMark(seq, route, "bench", verdict.priority, verdict.priority_class))
        if route is Route.PARTITION:
            dirty.setdefault(shard_of(partition, shards), set()).add(partition)
    meter.run("dispatch", events.mark_dispatched, db, marks)
    return dirty


def postgres_pids() -> list[int]:
    """Every Postgres process of this machine (none where /proc is absent)."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "postgres":
                pids.append(int(comm.parent.name))
    return pids


def cpu_s(pids: list[int]) -> float:
    """CPU seconds these processes used so far (those that ended meanwhile left out)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU of this process (all threads), CPU of Postgres, and wall seconds per step."""

    def __init__(self, steps: tuple[str, ...] = STEPS) -> None:
        # Found once: scanning /proc at every step cost more than some steps. Backends the pool opens
        # later are missed, so callers create a meter once the pool is warm.
        self._postgres = postgres_pids()
        self.cpu = dict.fromkeys(steps, 0.0)
        self.db_cpu = dict.fromkeys(steps, 0.0)
        self.wall = dict.fromkeys(steps, 0.0)

    def run(self, step: str, fn: Callable[..., T], *args: Any) -> T:
        cpu, db, wall = time.process_time(), cpu_s(self._postgres), time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.cpu[step] += time.process_time() - cpu
            self.db_cpu[step] += cpu_s(self._postgres) - db
            self.wall[step] += time.perf_counter() - wall

    def per_event(self, events: int) -> dict[str, dict[str, float]]:
        def us(seconds: dict[str, float]) -> dict[str, float]:
            return {step: round(1e6 * s / max(events, 1), 1) for step, s in seconds.items()}

        return {"cpu_us": us(self.cpu), "postgres_cpu_us": us(self.db_cpu), "wall_us": us(self.wall)}


def drain(
    pipeline: PipelineActivities,
    notify: DetectionActivities,
    dirty: dict[int, set[str]],
    limit: int,
    meter: Meter,
) -> tuple[int, list[int]]:
    """The shards' batch loop, round robin, until nothing is pending; returns events applied and sizes."""
    env = ActivityEnvironment()
    applied, sizes = 0, []
    pending = {shard: sorted(parts) for shard, parts in dirty.items()}
    while pending:
        for shard in sorted(pending):
            owner = f"bench/shard/{shard}"
            parts = pending[shard]
            plan = meter.run("analyze", env.run, pipeline.analyze_impact, ImpactInput(parts, [], limit))
            if plan.seqs:
                # Recalculation also moves the cache's floors and marks its events processed.
                result = meter.run("recalculate", env.run, pipeline.recalculate, RecalcInput(plan, owner))
                applied += result.applied
                sizes.append(result.applied)
            meter.run("detect", notify.detect_saved, owner)
            if not plan.has_more:
                del pending[shard]
    return applied, sizes


@contextmanager
def database(kind: str) -> Iterator[Database]:
    with (
        tempfile.TemporaryDirectory(prefix="pulse-worker-bench-") as tmp,
        bench_database(kind, Path(tmp)) as url,
    ):
        db = Database(url)
        try:
            yield db
        finally:
            db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--events", type=int, default=20_000, help="routine events after the mints")
    parser.add_argument("--collections", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=5000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1000, help="events per batch at most")
    parser.add_argument("--rounds", type=int, default=3, help="the stream is split in this many rounds")
    parser.add_argument("--users", type=int, default=0)
    parser.add_argument("--subscriptions", type=int, default=0)
    args = parser.parse_args()
    tune_gc(get_settings().gc_thresholds)  # as every Pulse process does

    stream = Stream(
        collections=args.collections, tokens_per_collection=args.tokens // args.collections, seed=7
    )
    with database(args.database) as db:
        if args.users:
            seed_subscriptions(db, stream, args.users, args.subscriptions)
        pipeline = PipelineActivities(db, MemoryCache())
        notify = DetectionActivities(db, ChannelRegistry())
        # The mints first, as a warm-up: books and read models exist before the measured rounds.
        warm_up = Meter()
        drain(
            pipeline, notify, log_stream(db, list(stream.mints()), args.shards, warm_up), args.batch, warm_up
        )
        per_round = args.events // args.rounds
        rounds: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            meter = Meter()
            dirty = log_stream(db, stream.take(per_round), args.shards, meter)
            applied, sizes = drain(pipeline, notify, dirty, args.batch, meter)
            worker_cpu = sum(meter.cpu[s] for s in WORKER_STEPS)
            rounds.append(
                {
                    "applied": applied,
                    "batches": len(sizes),
                    "median_batch": statistics.median(sizes) if sizes else 0,
                    **meter.per_event(applied),
                    "worker_cpu_us_per_event": round(1e6 * worker_cpu / max(applied, 1), 1),
                    "postgres_cpu_us_per_event": round(1e6 * sum(meter.db_cpu.values()) / max(applied, 1), 1),
                    "notifications": _notifications(db),
                }
            )
    print(
        json.dumps(
            {
                "config": vars(args),
                "rounds": rounds,
                "median_worker_cpu_us_per_event": statistics.median(
                    r["worker_cpu_us_per_event"] for r in rounds
                ),
                "median_postgres_cpu_us_per_event": statistics.median(
                    r["postgres_cpu_us_per_event"] for r in rounds
                ),
            },
            indent=2,
        )
    )


def _notifications(db: Database) -> int:
    with db.read() as s:
        return int(s.execute(select(func.count()).select_from(Notification)).scalar_one())


if __name__ == "__main__":
    main()
