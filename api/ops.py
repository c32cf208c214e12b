"""Operator routes (admin scope): failed events and their replay."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import AdminKey, ServicesDep
from store import events
from store.events import ReplayFilter

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


class FailureList(BaseModel):
    items: list[Failure]
    limit: int
    offset: int


class FailureAction(BaseModel):
    action: Literal["retry", "skip"]
    seqs: list[int] = Field(min_length=1, max_length=10_000)


class ActionResult(BaseModel):
    action: str
    changed: int


@router.get("/failures", response_model=FailureList)
async def list_failures(
    services: ServicesDep,
    _key: AdminKey,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> FailureList:
    rows = await run_in_threadpool(events.failures, services.db, limit, offset)
    ui = f"http://{services.settings.host}:{services.settings.temporal_ui_port}"
    ns = services.settings.temporal_namespace
    return FailureList(
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
                web_ui=f"{ui}/namespaces/{ns}/workflows/{r.workflow_id}" if r.workflow_id else None,
            )
            for r in rows
        ],
        limit=limit,
        offset=offset,
    )


@router.post("/failures", response_model=ActionResult)
async def act_on_failures(body: FailureAction, services: ServicesDep, _key: AdminKey) -> ActionResult:
    """``retry`` sends failed events back through the dispatcher; ``skip`` leaves them failed for good."""
    flt = ReplayFilter(seqs=body.seqs, statuses=("failed",))
    seqs = await run_in_threadpool(events.seqs_matching, services.db, flt)
    if body.action == "retry":
        changed = await run_in_threadpool(events.requeue, services.db, seqs)
    else:
        changed = await run_in_threadpool(events.skip, services.db, seqs)
    return ActionResult(action=body.action, changed=changed)
