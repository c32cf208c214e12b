"""The Temporal worker: the pipeline's workflows and activities on one task queue."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.pipeline import PipelineActivities
from store.cache import EntityCache
from store.db import Database
from workflows.pipeline import EventWorkflow, PartitionWorkflow

WORKFLOWS = [PartitionWorkflow, EventWorkflow]


def build_worker(
    client: Client,
    task_queue: str,
    db: Database,
    cache: EntityCache,
    *,
    workflow_id_prefix: str = "",
    max_activities: int = 16,
) -> Worker:
    pipeline = PipelineActivities(db, cache, workflow_id_prefix)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=[pipeline.analyze_impact, pipeline.recalculate, pipeline.invalidate_cache],
        activity_executor=ThreadPoolExecutor(max_workers=max_activities, thread_name_prefix="pulse-activity"),
        max_concurrent_activities=max_activities,
        max_concurrent_local_activities=max_activities,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )
