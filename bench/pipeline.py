"""End-to-end pipeline benchmark: real ``pulse api``, ``pulse worker`` and ``pulse dispatcher`` processes, a
real Temporal dev server and a real database, fed by a synthetic stream over HTTP. Prints JSON.

    .venv/bin/python -m bench.pipeline --database postgres --rate 1000 --duration 60 --burst 20000
    .venv/bin/python -m bench.pipeline --database sqlite --temporal-file   # the embedded defaults

``--env PULSE_SHARDS=8`` (repeatable) passes a setting to the Pulse processes; ``BENCH_LOG_LEVEL=INFO`` in
the environment keeps their info logs (in ``/tmp/pulse-bench-*/logs-*``), e.g. each batch's size.

At the real market's shape (one big collection minted out at once, thousands of small ones, Zipf activity,
critical fraud findings), without the naive baseline:

    .venv/bin/python -m bench.pipeline --collections 2000 --zipf 1.1 --big-collection 10000 \
        --fraud-share 0.005 --rate 1000 --duration 60 --burst 100000 --baseline-events 0

Phases: the mint burst of every collection (setup; at market shape the small ones, then the big one's
``mint_out``, whose ``span_s`` is the mint-out time), a sustained phase at ``--rate`` events/s, a burst
posted as fast as possible, and, against the same server, the naive design (one workflow per event with
its three steps, the event workflow every event gets when all are routed alone) as the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, text

from nftpulse.store import schema
from nftpulse.store.db import Database
from nftpulse.store.models import EventRecord
from nftpulse.synth import Stream
from nftpulse.temporal import DevServer
from tests.conftest import postgres_schema
from tests.ports import free_port
from tests.procs import PulseProcesses

BATCH = 100


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / _TICKS


def machine_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine (all cores) spent busy, and those the hypervisor gave to other
    guests while this one had work (steal): a run with much steal measured a slower machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait, steal = values[3], values[4], values[7]
    return (sum(values[:8]) - idle - iowait - steal) / _TICKS, steal / _TICKS


def _postmaster_pid() -> int | None:
    """The oldest ``postgres`` process: the server whose children are the backends."""
    candidates = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            head, rest = stat.read_text().rsplit(")", 1)
            if head.split("(", 1)[1] == "postgres" and rest.split()[1] == "1":
                candidates.append(int(stat.parent.name))
    return min(candidates) if candidates else None


#: The server's CPU (with reaped children) and each live backend's (name, CPU seconds).
PgReading = tuple[float, dict[int, tuple[str, float]]]


class PostgresCpu:
    """Postgres's CPU by the client that caused it: backends carry the Pulse part's ``application_name``
    (set by ``tests.procs``); background processes (autovacuum, WAL writer, checkpointer) and backends
    that exited within the phase (their time is in the server's reaped-children total) are ``pg_other``."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._server = _postmaster_pid()

    def read(self) -> PgReading:
        """The server's CPU with its reaped children, and each live backend's name and CPU."""
        if self._server is None or self._db.is_sqlite:
            return 0.0, {}
        with self._db.read_engine.connect() as conn:
            rows = conn.execute(
                text("SELECT pid, application_name, backend_type FROM pg_stat_activity")
            ).all()
        backends = {}
        for pid, app, kind in rows:
            named = kind == "client backend" and app.startswith("pulse-")
            backends[pid] = (f"pg_{app.removeprefix('pulse-')}" if named else "pg_other", cpu_seconds(pid))
        return cpu_seconds(self._server), backends

    @staticmethod
    def used(start: PgReading, end: PgReading) -> dict[str, float]:
        """CPU seconds per part between two reads; a backend new since the start counts from zero, one gone
        since then is in the server's reaped-children figure only (so in ``pg_other``)."""
        (server0, before), (server1, after) = start, end
        out: dict[str, float] = {}
        for pid, (name, cpu) in after.items():
            out[name] = out.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
        out["pg_total"] = server1 - server0 + sum(out.values())
        out["pg_other"] = out["pg_total"] - sum(
            v for k, v in out.items() if k not in ("pg_total", "pg_other")
        )
        return out


class CpuMeter:
    """Cores used per process over a phase: where the machine's two cores went."""

    def __init__(self, pids: dict[str, int], postgres: PostgresCpu | None = None) -> None:
        self._pids = pids
        self._postgres = postgres
        self._start_pg = postgres.read() if postgres else None
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        out["machine"], out["steal"] = machine_seconds()
        out["wall"] = time.monotonic()
        return out

    def cores(self) -> dict[str, float]:
        end = self._read()
        wall = end["wall"] - self._start["wall"]
        used = {k: (end[k] - self._start[k]) / wall for k in end if k != "wall"}
        used["other"] = used["machine"] - sum(v for k, v in used.items() if k not in ("machine", "steal"))
        if self._postgres is not None and self._start_pg is not None:
            pg = PostgresCpu.used(self._start_pg, self._postgres.read())
            if pg["pg_total"] > 0:
                used.update({k: v / wall for k, v in pg.items()})
        return {k: round(v, 2) for k, v in used.items()}


def scrape(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        body = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return out
    for line in body.splitlines():
        m = re.match(r'^pulse_temporal_actions_total\{kind="([a-z_]+)"\} ([0-9.e+]+)$', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def actions(procs: PulseProcesses) -> dict[str, float]:
    total: dict[str, float] = {}
    ports = [p for name, p in procs.ports.items() if name.endswith("worker_metrics")]
    for port in [*ports, procs.ports["dispatcher_metrics"]]:
        for kind, value in scrape(f"http://127.0.0.1:{port}/metrics").items():
            total[kind] = total.get(kind, 0.0) + value
    return total


async def post_events(http: httpx.AsyncClient, events: list[dict[str, Any]]) -> httpx.Response:
    """POST a batch, again on a connection error: ingest is idempotent by (source, id), so a batch whose
    first try did land is reported as duplicates, never stored twice. (A pooled connection the server
    closed for idleness at the moment it is reused fails this way.)"""
    for attempt in range(3):
        try:
            return await http.post("/v1/events", json={"events": events})
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError):
            if attempt == 2:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def post_paced(http: httpx.AsyncClient, events: list[dict[str, Any]], rate: float) -> float:
    """Post in batches of BATCH so that the offered load is ``rate`` events/s; returns the seconds taken."""
    started = time.perf_counter()
    pending: set[asyncio.Task[httpx.Response]] = set()
    for i in range(0, len(events), BATCH):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.add(asyncio.create_task(post_events(http, events[i : i + BATCH])))
        done = {t for t in pending if t.done()}
        for task in done:
            assert task.result().status_code == 202, task.result().text
        pending -= done
    for resp in await asyncio.gather(*pending):
        assert resp.status_code == 202, resp.text
    return time.perf_counter() - started


async def post_burst(http: httpx.AsyncClient, events: list[dict[str, Any]], concurrency: int = 4) -> float:
    started = time.perf_counter()
    queue = [events[i : i + 1000] for i in range(0, len(events), 1000)]

    async def sender() -> None:
        while queue:
            batch = queue.pop()
            resp = await post_events(http, batch)
            assert resp.status_code == 202, resp.text

    await asyncio.gather(*[sender() for _ in range(concurrency)])
    return time.perf_counter() - started


@dataclass
class Outcome:
    """What became of one phase's events, read back from the log."""

    latencies: list[float]
    #: All processed events over the span from the first receipt to the last processing.
    processed_per_s: float
    #: Events processed while the load was offered (after its first 10 s), per second. Unlike the span
    #: rate, one straggler does not stretch it: it says whether processing kept up with the offered rate.
    processed_per_s_under_load: float | None
    total: int
    #: The slowest events: what they were and how they were routed, to tell a backlog from one straggler.
    slowest: list[dict[str, Any]]
    #: Latencies of the fraud findings among them.
    fraud: list[float]
    #: Seconds from the first event's receipt to the last one's processing.
    span_s: float


def outcome(db: Database, source: str, offered_s: float) -> Outcome:
    with db.read() as session:
        rows = session.execute(
            select(
                EventRecord.received_at,
                EventRecord.processed_at,
                EventRecord.status,
                EventRecord.type,
                EventRecord.route,
                EventRecord.partition,
            ).where(EventRecord.source == source)
        ).all()
    done = [r for r in rows if r.status == "processed" and r.received_at and r.processed_at]
    if not done:
        return Outcome([], 0.0, None, len(rows), [], [], 0.0)
    lat = [(r.processed_at - r.received_at).total_seconds() for r in done]
    start = min(r.received_at for r in done)
    span = (max(r.processed_at for r in done) - start).total_seconds()
    under_load = None
    if offered_s > 20:
        window = (start + timedelta(seconds=10), start + timedelta(seconds=offered_s))
        inside = sum(1 for r in done if window[0] <= r.processed_at < window[1])
        under_load = inside / (offered_s - 10)
    slowest = sorted(zip(lat, done, strict=True), key=lambda pair: pair[0], reverse=True)[:5]
    return Outcome(
        lat,
        len(done) / span if span > 0 else float("nan"),
        under_load,
        len(rows),
        [
            {"latency_s": round(s, 3), "type": r.type, "route": r.route, "partition": r.partition}
            for s, r in slowest
        ],
        [s for s, r in zip(lat, done, strict=True) if r.type == "fraud_finding"],
        span,
    )


async def wait_processed(db: Database, source: str, expected: int, limit_s: float) -> bool:
    """Whether ``expected`` events of ``source`` ended processed or failed within ``limit_s``.

    Polls the count of unfinished events, which the pending index answers, and counts the finished ones
    (a scan of the whole log) only once that is zero: a scan every half second was Postgres CPU charged to
    the system under test."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with db.read_engine.connect() as conn:
            unfinished = conn.execute(
                text("SELECT count(*) FROM events WHERE status IN ('received', 'dispatched', 'applied')")
            ).scalar_one()
            if unfinished == 0:
                done = conn.execute(
                    text(
                        "SELECT count(*) FROM events WHERE source = :s AND status IN ('processed', 'failed')"
                    ),
                    {"s": source},
                ).scalar_one()
                if done >= expected:
                    return True
        await asyncio.sleep(0.5)
    return False


def summarise(
    name: str,
    db: Database,
    source: str,
    offered_s: float,
    n: int,
    before: dict[str, float],
    after: dict[str, float],
) -> dict[str, Any]:
    result = outcome(db, source, offered_s)
    lat, total = result.latencies, result.total
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(after) | set(before)}
    return {
        "phase": name,
        "events": n,
        "accepted_per_s": round(n / offered_s, 1),
        "processed_per_s": round(result.processed_per_s, 1),
        "processed_per_s_under_load": None
        if result.processed_per_s_under_load is None
        else round(result.processed_per_s_under_load, 1),
        "processed": len(lat),
        "lost": total - len(lat) if total == n else n - total,
        "latency_s": {
            "p50": round(percentile(lat, 0.50), 3),
            "p95": round(percentile(lat, 0.95), 3),
            "p99": round(percentile(lat, 0.99), 3),
            "max": round(max(lat), 3) if lat else None,
        },
        "span_s": round(result.span_s, 2),
        "slowest": result.slowest,
        "fraud_findings": {
            "count": len(result.fraud),
            "p95_s": round(percentile(result.fraud, 0.95), 3) if result.fraud else None,
            "max_s": round(max(result.fraud), 3) if result.fraud else None,
        },
        "temporal_actions_per_event": {k: round(v / n, 4) for k, v in sorted(delta.items())},
        "temporal_actions_total_per_event": round(sum(delta.values()) / n, 4),
    }


def start_parts(procs: PulseProcesses, workers: int, events_worker: bool) -> None:
    """The API, the dispatcher and ``workers`` worker processes; with ``events_worker``, those serve the
    shards only and one more serves the significant events."""
    role = ["--role", "shards"] if events_worker else []
    for part in ("api", "worker", "dispatcher"):
        procs.start(part, args=role if part == "worker" else ())
    for n in range(1, workers):
        procs.start("worker", f"worker{n + 1}", role)
    if events_worker:
        procs.start("worker", "events-worker", ["--role", "events"])


async def run_phases(
    args: argparse.Namespace, database_url: str, temporal: str, temporal_pid: int, workdir: Path
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    phases: list[tuple[str, list[dict[str, Any]], bool]]
    if args.big_collection:
        # The market's shape: collection 0 is big and, Zipf-first, the busiest; the rest are small.
        stream = Stream(
            sizes=[args.big_collection] + [args.small_tokens] * (args.collections - 1),
            seed=3,
            zipf=args.zipf,
            fraud_share=args.fraud_share,
            fraud_severity="critical",
        )
        small_mints = list(stream.mints(range(1, args.collections)))
        big_mints = list(stream.mints(range(1)))
    else:
        stream = Stream(
            collections=args.collections,
            tokens_per_collection=args.tokens // args.collections,
            seed=3,
            zipf=args.zipf,
            fraud_share=args.fraud_share,
        )
        small_mints, big_mints = list(stream.mints()), []
    sustained = stream.take(int(args.rate * args.duration))
    burst = stream.take(args.burst)
    baseline = stream.take(args.baseline_events)
    phases = [("mint_setup", small_mints, False)]
    if big_mints:
        # Posted as fast as the API takes them: the mint-out is the span of this phase.
        phases.append(("mint_out", big_mints, False))
    phases.append(("sustained", sustained, True))
    if burst:
        phases.append(("burst", burst, False))

    def pids(procs: PulseProcesses) -> dict[str, int]:
        out = {name: proc.pid for name, proc in procs.procs.items()}
        out["temporal"] = temporal_pid
        out["bench"] = os.getpid()
        return out

    async def with_pulse(extra_env: dict[str, str], body: Any) -> None:
        procs = PulseProcesses(
            database_url,
            temporal,
            workdir / f"logs-{uuid.uuid4().hex[:6]}",
            extra_env=extra_env,
            fast_dispatch=False,
        )
        start_parts(procs, args.workers, args.events_worker)
        try:
            await asyncio.to_thread(procs.wait_ready)
            async with httpx.AsyncClient(
                base_url=procs.api_url, headers={"Authorization": f"Bearer {procs.admin_key}"}, timeout=120
            ) as http:
                await body(procs, http)
        finally:
            await asyncio.to_thread(procs.stop_all)

    db = Database(database_url)

    async def optimised(procs: PulseProcesses, http: httpx.AsyncClient) -> None:
        def relabel(events: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
            return [{**e, "source": source} for e in events]

        for name, events, paced in phases:
            source = f"bench-{name}"
            batch = relabel(events, source)
            before = actions(procs)
            meter = CpuMeter(pids(procs), PostgresCpu(db))
            took = await (post_paced(http, batch, args.rate) if paced else post_burst(http, batch))
            ok = await wait_processed(db, source, len(batch), limit_s=args.timeout)
            cores = meter.cores()
            await asyncio.sleep(1)
            results[name] = summarise(name, db, source, took, len(batch), before, actions(procs))
            results[name]["all_processed"] = ok
            results[name]["cpu_cores"] = cores

    await with_pulse(dict(item.split("=", 1) for item in args.env), optimised)
    if not baseline:
        db.dispose()
        return results

    async def naive(procs: PulseProcesses, http: httpx.AsyncClient) -> None:
        source = "bench-naive"
        batch = [{**e, "source": source} for e in baseline]
        before = actions(procs)
        took = await post_burst(http, batch)
        ok = await wait_processed(db, source, len(batch), limit_s=args.timeout)
        await asyncio.sleep(1)
        results["naive_baseline"] = summarise(
            "naive_baseline", db, source, took, len(batch), before, actions(procs)
        )
        results["naive_baseline"]["all_processed"] = ok

    # Every event significant: one workflow per event with three activities, the naive design.
    await with_pulse({"PULSE_SIGNIFICANT_PRIORITY": "0"}, naive)
    db.dispose()
    opt = (
        results["burst"]["processed_per_s"] if "burst" in results else results["sustained"]["processed_per_s"]
    )
    base = results["naive_baseline"]["processed_per_s"]
    results["speedup_vs_naive"] = round(opt / base, 1) if base else None
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--temporal-file", action="store_true", help="dev server persisting to a SQLite file")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--baseline-events", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--events-worker",
        action="store_true",
        help="significant events in a worker process of their own (`pulse worker --role events`)",
    )
    parser.add_argument("--collections", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=5000)
    parser.add_argument("--zipf", type=float, default=1.1, help="exponent of activity across collections")
    parser.add_argument(
        "--big-collection",
        type=int,
        default=0,
        metavar="T",
        help="market shape: collection 0 has T tokens, minted with traits in a phase of its own (mint_out); "
        "the others have --small-tokens each and --tokens is ignored",
    )
    parser.add_argument("--small-tokens", type=int, default=10, help="tokens per small collection")
    parser.add_argument(
        "--fraud-share",
        type=float,
        default=0.005,
        help="share of activity that is fraud findings (critical ones at market shape)",
    )
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--env", action="append", default=[], metavar="PULSE_X=V", help="a setting for the Pulse processes"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pulse-bench-"))
    with bench_database(args.database, workdir) as database_url:
        results = await run_with_server(args, database_url, workdir)
    report = {
        "config": {
            "database": args.database,
            "temporal": "dev server, file" if args.temporal_file else "dev server, in memory",
            "rate": args.rate,
            "workers": args.workers,
            "events_worker": args.events_worker,
            "duration_s": args.duration,
            "collections": args.collections,
            "tokens": args.tokens,
            "zipf": args.zipf,
            "big_collection": args.big_collection,
            "small_tokens": args.small_tokens,
            "fraud_share": args.fraud_share,
            "burst": args.burst,
            "baseline_events": args.baseline_events,
        },
        **results,
    }
    print(json.dumps(report, indent=2))


@contextlib.contextmanager
def bench_database(kind: str, workdir: Path) -> Iterator[str]:
    """A database of the benchmark's own: a fresh Postgres schema (dropped afterwards) or a SQLite file."""
    if kind == "postgres":
        with postgres_schema() as url:
            _migrate(url)
            yield url
    else:
        url = f"sqlite:///{workdir / 'pulse.db'}"
        _migrate(url)
        yield url


def _migrate(url: str) -> None:
    """``pulse db upgrade``: the processes refuse a database behind the code's schema."""
    db = Database(url)
    try:
        schema.upgrade(db)
    finally:
        db.dispose()


async def run_with_server(args: argparse.Namespace, database_url: str, workdir: Path) -> dict[str, Any]:
    port, ui = free_port(), free_port()
    dev = DevServer(
        "127.0.0.1",
        port,
        ui,
        workdir / "temporal.db" if args.temporal_file else None,
        workdir / "temporal.log",
    )
    dev.start()
    try:
        assert dev.process is not None
        return await run_phases(args, database_url, dev.address, dev.process.pid, workdir)
    finally:
        dev.stop()


if __name__ == "__main__":
    asyncio.run(main())
