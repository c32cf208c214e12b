"""Notification benchmark through the whole pipeline: real ``pulse api|worker|dispatcher`` processes, a
real Temporal dev server and Postgres (or SQLite), N users with M subscriptions, a synthetic stream at a
given rate. Prints JSON: notifications created and delivered in-app per second, and latencies from the
entity update (the triggering event's ``processed_at``) to the notification's creation and to its
in-app delivery (``inbox_at``).

    .venv/bin/python -m bench.notify_pipeline --users 10000 --subscriptions 50000 --rate 1000 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select

from bench.pipeline import bench_database, percentile, post_paced, start_parts, wait_processed
from nftpulse.store import notify as notify_store
from nftpulse.store.db import Database
from nftpulse.store.models import EventRecord
from nftpulse.synth import Stream
from nftpulse.temporal import DevServer
from tests.ports import free_port
from tests.procs import PulseProcesses


def seed_subscriptions(db: Database, stream: Stream, users: int, subscriptions: int, seed: int = 1) -> None:
    """Users in the inbox only, each watching collections (floor moves) and NFTs (price estimate moves)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    per_user = max(1, subscriptions // users)
    collections = [f"collection:{stream.chain}:{c.contract}" for c in stream.collections]
    user_rows, sub_rows, key_rows = [], [], []
    for u in range(users):
        uid = f"bench-user-{u}"
        user_rows.append(
            {
                "id": uid,
                "locale": "en",
                "timezone": "UTC",
                "push_subscriptions": [],
                "webhooks": [],
                "preferences": {"default": ["in_app"]},
                "escalation": {},
                "budget": {},
                "updated_at": now,
                "critical_breakthrough": False,
                "hourly_budget": 10,
            }
        )
        for s in range(per_user):
            sid = f"s{u}-{s}"
            coll = rng.choice(collections)
            if s % 2 == 0:
                key, rules = (
                    coll,
                    [{"id": "floor", "kind": "relative_change", "metric": "floor", "pct": 0.05}],
                )
            else:
                token = rng.randrange(stream.collections[0].tokens)
                key = f"nft:{coll.split(':', 1)[1]}:{token}"
                rules = [{"id": "price", "kind": "relative_change", "metric": "price_estimate", "pct": 0.05}]
            sub_rows.append(
                {
                    "id": sid,
                    "user_id": uid,
                    "target": key.split(":")[0],
                    "entity_key": key,
                    "wallets": [],
                    "rules": rules,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            key_rows.append({"entity_key": key, "subscription_id": sid})
    with db.write() as session:
        for table, rows in (
            (notify_store.NotifyUser, user_rows),
            (notify_store.Subscription, sub_rows),
            (notify_store.SubscriptionKey, key_rows),
        ):
            for start in range(0, len(rows), 2000):
                session.execute(insert(table), rows[start : start + 2000])


def _last_seq(cause: str | None) -> int | None:
    """The last event of the batch that caused a notification (``partition@first-last…``)."""
    match = re.search(r"@(\d+)-(\d+)", cause or "")
    return int(match.group(2)) if match else None


def measure(db: Database, since: datetime) -> dict[str, Any]:
    with db.read() as session:
        rows = session.execute(
            select(
                notify_store.Notification.created_at,
                notify_store.Notification.inbox_at,
                notify_store.Notification.cause,
            ).where(notify_store.Notification.created_at >= since)  # type: ignore[operator]
        ).all()
        last_seqs = {seq for _, _, c in rows if (seq := _last_seq(c)) is not None}
        processed = (
            dict(
                session.execute(
                    select(EventRecord.seq, EventRecord.processed_at).where(
                        EventRecord.seq.in_(list(last_seqs))
                    )  # type: ignore[union-attr]
                ).all()
            )
            if last_seqs
            else {}
        )
    to_created, to_inbox, inbox_times = [], [], []
    for created, inbox, cause in rows:
        seq = _last_seq(cause)
        update_at = processed.get(seq) if seq is not None else None
        if update_at is not None:
            to_created.append((created - update_at).total_seconds())
            if inbox is not None:
                to_inbox.append((inbox - update_at).total_seconds())
        if inbox is not None:
            inbox_times.append(inbox)
    span = (max(inbox_times) - min(inbox_times)).total_seconds() if len(inbox_times) > 1 else 0.0
    return {
        "notifications": len(rows),
        "delivered_in_app": len(inbox_times),
        "delivered_per_s": round(len(inbox_times) / span, 1) if span else None,
        "update_to_created_s": {
            "p50": round(percentile(to_created, 0.5), 3),
            "p95": round(percentile(to_created, 0.95), 3),
        },
        "update_to_in_app_s": {
            "p50": round(percentile(to_inbox, 0.5), 3),
            "p95": round(percentile(to_inbox, 0.95), 3),
            "p99": round(percentile(to_inbox, 0.99), 3),
        },
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--subscriptions", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--collections", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--warmup",
        type=float,
        default=0,
        help="seconds of the stream posted (at --rate) and processed before the measured phase: the storm "
        "of first firings is then over and cooldowns hold, as in steady operation",
    )
    parser.add_argument(
        "--events-worker",
        action="store_true",
        help="significant events in a worker process of their own (`pulse worker --role events`)",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="PULSE_X=V", help="a setting for the Pulse processes"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pulse-notify-bench-"))
    with bench_database(args.database, workdir) as database_url:
        report = await run(args, database_url, workdir)
    print(json.dumps(report, indent=2))


async def run(args: argparse.Namespace, database_url: str, workdir: Path) -> dict[str, Any]:
    db = Database(database_url)
    stream = Stream(
        collections=args.collections, tokens_per_collection=args.tokens // args.collections, seed=5
    )
    seed_subscriptions(db, stream, args.users, args.subscriptions)
    mints = list(stream.mints())
    warmup = stream.take(int(args.rate * args.warmup))
    load = stream.take(int(args.rate * args.duration))
    dev = DevServer("127.0.0.1", free_port(), free_port(), None, workdir / "temporal.log")
    dev.start()
    procs = PulseProcesses(
        database_url,
        dev.address,
        workdir / "logs",
        extra_env=dict(item.split("=", 1) for item in args.env),
        fast_dispatch=False,
    )
    try:
        start_parts(procs, 1, args.events_worker)
        await asyncio.to_thread(procs.wait_ready)
        async with httpx.AsyncClient(
            base_url=procs.api_url, headers={"Authorization": f"Bearer {procs.admin_key}"}, timeout=120
        ) as http:
            await post_paced(http, mints, args.rate)
            await wait_processed(db, stream.source, len(mints), limit_s=args.timeout)
            if warmup:
                # Every rule arms and, as the market moves, fires once: a storm that cooldowns then calm.
                await post_paced(http, warmup, args.rate)
                done = len(mints) + len(warmup)
                await wait_processed(db, stream.source, done, limit_s=args.timeout)
                await asyncio.sleep(5)
            since = datetime.now(UTC)
            took = await post_paced(http, load, args.rate)
            total = len(mints) + len(warmup) + len(load)
            ok = await wait_processed(db, stream.source, total, limit_s=args.timeout)
            await asyncio.sleep(5)  # let the last deliveries land
        return {
            "config": {
                "database": args.database,
                "users": args.users,
                "subscriptions": args.subscriptions,
                "rate": args.rate,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "collections": args.collections,
                "tokens": args.tokens,
                "env": args.env,
                "events_worker": args.events_worker,
            },
            "events": len(load),
            "accepted_per_s": round(len(load) / took, 1),
            "all_processed": ok,
            **measure(db, since),
        }
    finally:
        await asyncio.to_thread(procs.stop_all)
        dev.stop()
        db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
