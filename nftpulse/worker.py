"""The Temporal workers: one per task queue this process serves (``PULSE_WORKER_ROLE``, ``pulse worker
--role``; all of them by default).

- ``<task_queue>``: the shard workflows (routine events in batches), poison events isolated out of a
  batch, and the notifications' workflows and their delivery activities;
- ``<task_queue>.events``: significant events' workflows. A queue of their own gives them local-activity
  slots of their own: on the shards' queue a fraud finding waited for a slot behind the shards' batches,
  and was among the slowest events of all (``slowest`` in bench/pipeline.py's output). In a process of
  its own (``--role events`` beside ``--role shards``) it does not share the shards' interpreter lock
  either: on a busy worker each step waits for it longer than it computes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from nftpulse.activities.notify import build_notify_activities
from nftpulse.activities.pipeline import PipelineActivities
from nftpulse.channels.registry import ChannelRegistry
from nftpulse.core.settings import Settings
from nftpulse.store.cache import EntityCache
from nftpulse.store.db import Database
from nftpulse.workflows.notify import DigestWorkflow, NotificationWorkflow
from nftpulse.workflows.pipeline import EventWorkflow, ShardWorkflow

WORKFLOWS = [ShardWorkflow, EventWorkflow, NotificationWorkflow, DigestWorkflow]


@dataclass
class Workers:
    """The workers of one process, run and shut down together."""

    workers: Sequence[Worker]

    async def run(self) -> None:
        await asyncio.gather(*(w.run() for w in self.workers))

    async def shutdown(self) -> None:
        await asyncio.gather(*(w.shutdown() for w in self.workers))


def build_worker(
    client: Client, settings: Settings, db: Database, cache: EntityCache
) -> tuple[Workers, ChannelRegistry]:
    """The workers, and the channel registry whose connections the caller closes after shutdown."""
    pipeline = PipelineActivities(db, cache, settings.workflow_id_prefix)
    notify, registry = build_notify_activities(
        settings, db, client, settings.task_queue, settings.workflow_id_prefix
    )
    steps: list[Callable[..., Any]] = [
        pipeline.analyze_impact,
        pipeline.recalculate,
        pipeline.invalidate_cache,
        notify.detect_significant_changes,
    ]
    # Few slots on purpose: the pipeline's steps are CPU-bound Python, and a worker that runs more of them
    # than it has cores only makes each workflow task wait longer for the interpreter lock, until tasks
    # outlive their timeout and their work is thrown away. More throughput comes from more processes.
    local_slots = settings.worker_local_activity_slots + settings.worker_event_local_activity_slots
    executor = ThreadPoolExecutor(
        max_workers=local_slots + settings.worker_activity_slots, thread_name_prefix="pulse-activity"
    )

    def worker(
        task_queue: str,
        workflows: list[type],
        activities: list[Callable[..., Any]],
        local_activity_slots: int,
    ) -> Worker:
        return Worker(
            client,
            task_queue=task_queue,
            workflows=workflows,
            activities=activities,
            activity_executor=executor,
            max_concurrent_workflow_tasks=settings.worker_workflow_slots,
            max_concurrent_activities=settings.worker_activity_slots,
            max_concurrent_local_activities=local_activity_slots,
            # The sandbox re-imports (and compiles) a workflow's module for every new workflow run: with a
            # few significant events a second that was a fifth of the event loop's time (py-spy,
            # bench/pipeline.py). Determinism is checked instead where it costs nothing in production: the
            # tests replay the histories of real runs under the sandboxed runner
            # (tests/conftest.py::replay_under_sandbox).
            workflow_runner=UnsandboxedWorkflowRunner(),
            graceful_shutdown_timeout=timedelta(seconds=10),
        )

    workers = []
    if settings.worker_role in ("all", "shards"):
        workers.append(
            worker(
                settings.task_queue,
                WORKFLOWS,
                [*steps, notify.deliver, notify.send_digest],
                settings.worker_local_activity_slots,
            )
        )
    if settings.worker_role in ("all", "events"):
        event_slots = settings.worker_event_local_activity_slots
        workers.append(worker(settings.event_task_queue, [EventWorkflow], steps, event_slots))
    return Workers(workers), registry
