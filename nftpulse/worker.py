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
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from nftpulse.activities.consumers import ConsumerActivities, ensure_runners
from nftpulse.activities.notify.delivery import DbInboxWriter, DeliveryActivities
from nftpulse.activities.notify.detection import DetectionActivities
from nftpulse.activities.notify.digests import DigestActivities
from nftpulse.activities.pipeline import PipelineActivities
from nftpulse.channels.email import SendGridConfig, SmtpConfig
from nftpulse.channels.push import WebPushConfig
from nftpulse.channels.registry import ChannelRegistry, ChannelsConfig, build_registry
from nftpulse.channels.sms import TwilioConfig
from nftpulse.channels.webhook import WebhookConfig
from nftpulse.core.settings import Settings
from nftpulse.store.cache import EntityCache
from nftpulse.store.db import Database
from nftpulse.workflows.clock import ClockWorkflow
from nftpulse.workflows.consumers import ConsumerWorkflow
from nftpulse.workflows.notify import DigestWorkflow, NotificationWorkflow
from nftpulse.workflows.pipeline import EventWorkflow, ShardWorkflow

WORKFLOWS = [
    ShardWorkflow,
    EventWorkflow,
    NotificationWorkflow,
    DigestWorkflow,
    ConsumerWorkflow,
    ClockWorkflow,
]
STICKY_TIMEOUT = timedelta(seconds=3)
GRACEFUL_SHUTDOWN = timedelta(seconds=2)


@dataclass
class Workers:
    """The workers of one process, run and shut down together."""

    workers: Sequence[Worker]
    #: Run once the workers are polling (the consumers' runners ensured).
    started: Callable[[], Awaitable[None]] | None = None

    async def run(self) -> None:
        await asyncio.gather(*(w.run() for w in self.workers), *([self.started()] if self.started else []))

    async def shutdown(self) -> None:
        await asyncio.gather(*(w.shutdown() for w in self.workers))


def channels_config(settings: Settings) -> ChannelsConfig:
    """The delivery providers configured in ``settings``; one whose settings are unset is absent."""
    base = settings.public_base_url.rstrip("/")
    sendgrid = (
        SendGridConfig(api_key=settings.sendgrid_api_key.get_secret_value(), from_email=settings.email_from)
        if settings.sendgrid_api_key
        else None
    )
    smtp = (
        SmtpConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            from_email=settings.email_from,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        )
        if settings.smtp_host
        else None
    )
    twilio = (
        TwilioConfig(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            from_number=settings.twilio_from_number,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            status_callback_url=f"{base}/v1/callbacks/twilio" if base else None,
        )
        if settings.twilio_account_sid and settings.twilio_auth_token
        else None
    )
    webpush = (
        WebPushConfig(
            vapid_private_key=settings.vapid_private_key.get_secret_value(),
            vapid_subject=settings.vapid_subject,
            allow_private=settings.allow_private_webhooks,
        )
        if settings.vapid_private_key and settings.vapid_subject
        else None
    )
    webhook = WebhookConfig(allow_private=settings.allow_private_webhooks)
    return ChannelsConfig(sendgrid=sendgrid, smtp=smtp, twilio=twilio, webpush=webpush, webhook=webhook)


def build_worker(
    client: Client, settings: Settings, db: Database, cache: EntityCache
) -> tuple[Workers, ChannelRegistry]:
    """The workers, and the channel registry whose connections the caller closes after shutdown."""
    pipeline = PipelineActivities(
        db, cache, settings.workflow_id_prefix, settings.wait_max_seconds, settings.worker_book_cache
    )
    registry = build_registry(channels_config(settings), inbox_writer=DbInboxWriter(db))
    base_url = settings.public_base_url or "http://127.0.0.1:8000"
    # With the client, detection starts each notification's workflow (or hands it to a digest) itself.
    detection = DetectionActivities(
        db,
        registry,
        client=client,
        task_queue=settings.task_queue,
        workflow_id_prefix=settings.workflow_id_prefix,
        public_base_url=base_url,
        send_time_default_hour=settings.send_time_default_hour,
        send_time_min_reads=settings.send_time_min_reads,
    )
    delivery = DeliveryActivities(db, registry)
    digests = DigestActivities(db, registry, public_base_url=base_url)
    consumers = ConsumerActivities(
        db, registry.get("webhook"), timedelta(seconds=settings.change_log_retention_s)
    )
    steps: list[Callable[..., Any]] = [
        pipeline.analyze_impact,
        pipeline.recalculate,
        pipeline.invalidate_cache,
        pipeline.tick_clocks,
        detection.detect_significant_changes,
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
            # A workflow's next task waits on this worker's own (sticky) queue this long before any worker
            # may take it: the SDK's default (10 s) was how long a killed worker stalled its shards.
            sticky_queue_schedule_to_start_timeout=STICKY_TIMEOUT,
            # A stop lets running activities finish this long, then cancels them: an activity that keeps
            # failing must not hold a Ctrl-C (its retries resume on another worker).
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        )

    workers = []
    if settings.worker_role in ("all", "shards"):
        workers.append(
            worker(
                settings.task_queue,
                WORKFLOWS,
                [
                    *steps,
                    delivery.deliver,
                    digests.send_digest,
                    consumers.read_changes,
                    consumers.deliver_change,
                ],
                settings.worker_local_activity_slots,
            )
        )
    if settings.worker_role in ("all", "events"):
        event_slots = settings.worker_event_local_activity_slots
        workers.append(worker(settings.event_task_queue, [EventWorkflow], steps, event_slots))
    started = None
    if settings.worker_role in ("all", "shards"):

        async def started() -> None:
            await ensure_runners(client, db, settings.workflow_id_prefix, settings.task_queue)

    return Workers(workers, started), registry
