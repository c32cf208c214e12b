"""Operator routes (admin scope): failed events and notifications, and what to do about them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, model_validator
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError

from nftpulse.api.common import QueryInt, RowId
from nftpulse.api.deps import AdminKey, Services, ServicesDep
from nftpulse.store import events, notifications, watching
from nftpulse.store.events import ReplayFilter
from nftpulse.store.notify import Subscription

router = APIRouter(prefix="/v1/ops", tags=["ops"])


class Failure(BaseModel):
    seq: int
    source: str
    id: str
    type: str
    category: str | None
    reason: str | None
    attempts: int
    last_attempt: datetime | None
    workflow_id: str | None
    web_ui: str | None


class NotificationFailure(BaseModel):
    notification_id: int
    user_id: str
    kind: str
    channel: str
    reason: str | None
    attempts: int
    last_attempt: datetime
    workflow_id: str | None
    web_ui: str | None


class DisabledSubscription(BaseModel):
    """A subscription one of whose rules failed in detection: disabled until its owner updates the rules."""

    subscription_id: str
    user_id: str
    reason: str | None
    disabled_at: datetime | None


class Waiting(BaseModel):
    """An event parked until what it needs arrives (``waiting_for``); it fails at ``fails_at`` without."""

    seq: int
    source: str
    id: str
    type: str
    waiting_for: str | None
    reason: str | None
    waiting_since: datetime | None
    fails_at: datetime | None


class FailureList(BaseModel):
    items: list[Failure]
    notifications: list[NotificationFailure]
    subscriptions: list[DisabledSubscription]
    #: Not failed (yet): events waiting for what they need, longest waiting first.
    waiting: list[Waiting] = Field(default_factory=list)
    limit: int
    offset: int


class FailureAction(BaseModel):
    """``retry`` sends failed events back through the dispatcher; ``skip`` acknowledges them (they leave
    the list); ``cancel`` stops the Temporal workflows of events or notifications (a notification's
    escalation or retries) and acknowledges the events."""

    action: Literal["retry", "skip", "cancel"]
    seqs: list[RowId] = Field(default_factory=list, max_length=10_000)
    notification_ids: list[RowId] = Field(default_factory=list, max_length=10_000)

    @model_validator(mode="after")
    def _something(self) -> FailureAction:
        if not self.seqs and not self.notification_ids:
            raise ValueError("name at least one event in seqs or notification in notification_ids")
        if self.action == "retry" and self.notification_ids:
            raise ValueError(
                "notifications are retried by their workflow already; cancel them or fix the user's channel"
            )
        return self


class ActionResult(BaseModel):
    action: str
    changed: int
    cancelled_workflows: int = 0


@router.get("/failures", response_model=FailureList)
async def list_failures(
    services: ServicesDep,
    _key: AdminKey,
    limit: Annotated[QueryInt, Query(ge=1, le=500)] = 50,
    offset: Annotated[QueryInt, Query()] = 0,
) -> FailureList:
    rows = await run_in_threadpool(events.failures, services.db, limit, offset)
    ui = services.settings.effective_temporal_ui_url
    ns = quote(services.settings.temporal_namespace, safe="")

    def link(workflow_id: str | None) -> str | None:
        # One path segment: event ids hold "/" (``event/<source>/<id>``), which the UI would route on.
        return f"{ui}/namespaces/{ns}/workflows/{quote(workflow_id, safe='')}" if workflow_id else None

    def failed_deliveries() -> list[notifications.FailedDelivery]:
        with services.db.read() as session:
            return notifications.failed_deliveries(session, limit, offset)

    def disabled() -> list[Subscription]:
        with services.db.read() as session:
            return watching.disabled_subscriptions(session, limit, offset)

    deliveries = await run_in_threadpool(failed_deliveries)
    subscriptions = await run_in_threadpool(disabled)
    parked = await run_in_threadpool(events.waiting, services.db, limit, offset)
    wait = timedelta(seconds=services.settings.wait_max_seconds)
    return FailureList(
        waiting=[
            Waiting(
                seq=r.seq or 0,
                source=r.source,
                id=r.external_id,
                type=r.type,
                waiting_for=r.waiting_for,
                reason=r.error,
                waiting_since=r.waiting_since,
                fails_at=None if r.waiting_since is None else r.waiting_since + wait,
            )
            for r in parked
        ],
        items=[
            Failure(
                seq=r.seq or 0,
                source=r.source,
                id=r.external_id,
                type=r.type,
                category=r.error_category,
                reason=r.error,
                attempts=r.attempts,
                last_attempt=r.processed_at,
                workflow_id=r.workflow_id,
                web_ui=link(r.workflow_id),
            )
            for r in rows
        ],
        notifications=[
            NotificationFailure(
                notification_id=d.notification_id,
                user_id=d.user_id,
                kind=d.kind,
                channel=d.channel,
                reason=d.error,
                attempts=d.attempts,
                last_attempt=d.updated_at,
                workflow_id=d.workflow_id,
                web_ui=link(d.workflow_id),
            )
            for d in deliveries
        ],
        subscriptions=[
            DisabledSubscription(
                subscription_id=sub.id,
                user_id=sub.user_id,
                reason=sub.disabled_reason,
                disabled_at=sub.disabled_at,
            )
            for sub in subscriptions
        ],
        limit=limit,
        offset=offset,
    )


@router.post("/failures", response_model=ActionResult)
async def act_on_failures(body: FailureAction, services: ServicesDep, _key: AdminKey) -> ActionResult:
    """Act on failed events (retry, skip, cancel) and notifications (cancel), one or many at once."""
    changed = cancelled = 0
    if body.seqs:
        flt = ReplayFilter(seqs=body.seqs, statuses=("failed",))
        seqs = await run_in_threadpool(events.seqs_matching, services.db, flt)
        if body.action == "retry":
            changed += await run_in_threadpool(events.requeue, services.db, seqs)
        else:
            changed += await run_in_threadpool(events.skip, services.db, seqs)
        if body.action == "cancel":
            rows = await run_in_threadpool(events.rows_by_seq, services.db, seqs)
            cancelled += await _cancel(services, [r.workflow_id for r in rows if r.workflow_id])
    if body.notification_ids and body.action == "cancel":

        def workflow_ids() -> list[str]:
            with services.db.read() as session:
                return notifications.workflow_ids_of(session, body.notification_ids)

        ids = await run_in_threadpool(workflow_ids)
        cancelled += await _cancel(services, ids)
        changed += len(ids)
    return ActionResult(action=body.action, changed=changed, cancelled_workflows=cancelled)


async def _cancel(services: Services, workflow_ids: list[str]) -> int:
    """Cancel running workflows; a closed or unknown one is simply not running any more."""
    if services.temporal is None:
        return 0
    cancelled = 0
    for workflow_id in dict.fromkeys(workflow_ids):
        try:
            await services.temporal.get_workflow_handle(workflow_id).cancel()
            cancelled += 1
        except RPCError:
            continue
    return cancelled
