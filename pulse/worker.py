"""The Temporal worker: the pipeline's and the notifications' workflows and activities on one task queue."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.notify import build_notify_activities
from activities.pipeline import PipelineActivities
from channels.registry import ChannelRegistry
from pulse.settings import Settings
from store.cache import EntityCache
from store.db import Database
from workflows.notify import DigestWorkflow, NotificationWorkflow
from workflows.pipeline import EventWorkflow, ShardWorkflow

WORKFLOWS = [ShardWorkflow, EventWorkflow, NotificationWorkflow, DigestWorkflow]


def build_worker(
    client: Client, settings: Settings, db: Database, cache: EntityCache
) -> tuple[Worker, ChannelRegistry]:
    """The worker, and the channel registry whose connections the caller closes after shutdown."""
    pipeline = PipelineActivities(db, cache, settings.workflow_id_prefix)
    notify, registry = build_notify_activities(
        settings, db, client, settings.task_queue, settings.workflow_id_prefix
    )
    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=[
            pipeline.analyze_impact,
            pipeline.recalculate,
            pipeline.invalidate_cache,
            notify.detect_significant_changes,
            notify.deliver,
            notify.send_digest,
        ],
        # Few slots on purpose: the pipeline's steps are CPU-bound Python, and a worker that runs more of
        # them than it has cores only makes each workflow task wait longer for the interpreter lock, until
        # tasks outlive their timeout and their work is thrown away. More throughput comes from more
        # worker processes.
        activity_executor=ThreadPoolExecutor(
            max_workers=settings.worker_activity_slots + settings.worker_local_activity_slots,
            thread_name_prefix="pulse-activity",
        ),
        max_concurrent_activities=settings.worker_activity_slots,
        max_concurrent_local_activities=settings.worker_local_activity_slots,
        max_concurrent_workflow_tasks=settings.worker_workflow_slots,
        # The sandbox re-imports (and compiles) a workflow's module for every new workflow run: with a few
        # significant events a second that was a fifth of the event loop's time (py-spy, bench/pipeline.py).
        # Determinism is checked instead where it costs nothing in production: the tests replay the
        # histories of real runs under the sandboxed runner (tests/conftest.py::replay_under_sandbox).
        workflow_runner=UnsandboxedWorkflowRunner(),
        graceful_shutdown_timeout=timedelta(seconds=10),
    )
    return worker, registry
