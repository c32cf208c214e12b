"""Ingest (``POST /v1/events``) and event status (``GET /v1/events/{source}/{id}``)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from nftpulse.api.deps import IngestKey, ReadKey, ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.core import tracing
from nftpulse.core.metrics import EVENTS_INGESTED, INGEST_SECONDS, SHED
from nftpulse.domain.classify import ClassifyContext, classify
from nftpulse.domain.events import MAX_BATCH, Event, field_errors
from nftpulse.store import events
from nftpulse.store.models import EventStatus

router = APIRouter(prefix="/v1/events", tags=["events"])

#: Priority classes still accepted while the backlog is past its bound.
NEVER_SHED = frozenset({"critical", "high"})


class EventRef(BaseModel):
    index: int
    source: str
    id: str
    seq: int | None = None


class IngestResult(BaseModel):
    accepted: int
    duplicates: int
    accepted_ids: list[EventRef]
    duplicate_ids: list[EventRef]
    refused_ids: list[EventRef] = []


class EventStatusOut(BaseModel):
    source: str
    id: str
    type: str
    status: str
    received_at: datetime
    dispatched_at: datetime | None
    processed_at: datetime | None
    error: str | None
    error_category: str | None
    attempts: int
    workflow_id: str | None
    priority: float
    priority_class: str


def parse_batch(raw: bytes) -> list[Event]:
    """One event or ``{"events": [...]}``; an invalid batch is refused whole, naming each bad item."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput([{"field": "body", "reason": f"not valid JSON: {exc}"}]) from None
    if isinstance(body, dict) and "events" in body:
        items = body["events"]
        if not isinstance(items, list):
            raise InvalidInput([{"field": "events", "reason": "must be a list of events"}])
        if not items:
            raise InvalidInput([{"field": "events", "reason": "must hold at least one event"}])
        if len(items) > MAX_BATCH:
            raise InvalidInput([{"field": "events", "reason": f"at most {MAX_BATCH} events per request"}])
        prefix: list[tuple[str | int, ...]] = [("events", i) for i in range(len(items))]
    elif isinstance(body, dict):
        items, prefix = [body], [()]
    else:
        raise InvalidInput([{"field": "body", "reason": 'must be an event object or {"events": [...]}'}])
    parsed: list[Event] = []
    errors: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(
                {"index": i, "field": ".".join(map(str, prefix[i])) or "body", "reason": "must be an object"}
            )
            continue
        try:
            parsed.append(Event.model_validate(item))
        except ValidationError as exc:
            errors.extend({"index": i, **err} for err in field_errors(exc, prefix[i]))
    if errors:
        raise InvalidInput(
            errors, f"{len({e['index'] for e in errors})} invalid event(s); nothing was accepted"
        )
    return parsed


@router.post("", status_code=202, response_model=IngestResult)
async def ingest(request: Request, services: ServicesDep, _key: IngestKey) -> Any:
    started = time.perf_counter()
    try:
        batch = parse_batch(await request.body())
    except InvalidInput as exc:
        EVENTS_INGESTED.labels("unknown", "unknown", "rejected").inc(
            max(1, len({e.get("index") for e in exc.errors}))
        )
        raise
    context = ClassifyContext(thresholds=services.settings.classify_thresholds())
    verdicts = [classify(e, context) for e in batch]
    refused: list[EventRef] = []
    keep = list(range(len(batch)))
    if services.backlog.over_bound():
        keep = [i for i in keep if verdicts[i].priority_class in NEVER_SHED]
        refused = [
            EventRef(index=i, source=batch[i].source, id=batch[i].id)
            for i in range(len(batch))
            if i not in keep
        ]
        for ref in refused:
            SHED.labels(verdicts[ref.index].priority_class).inc()
            EVENTS_INGESTED.labels(batch[ref.index].source, batch[ref.index].type.value, "shed").inc()
    outcomes = []
    if keep:
        outcomes = await run_in_threadpool(
            events.append,
            services.db,
            [batch[i] for i in keep],
            [(verdicts[i].priority, verdicts[i].priority_class) for i in keep],
            tracing.current_traceparent() if tracing.enabled() else None,
        )
    accepted: list[EventRef] = []
    duplicates: list[EventRef] = []
    for o in outcomes:
        index = keep[o.index]
        ref = EventRef(index=index, source=o.source, id=o.id, seq=o.seq)
        (duplicates if o.duplicate else accepted).append(ref)
        EVENTS_INGESTED.labels(
            o.source, batch[index].type.value, "duplicate" if o.duplicate else "accepted"
        ).inc()
    services.backlog.add(len(accepted))
    result = IngestResult(
        accepted=len(accepted),
        duplicates=len(duplicates),
        accepted_ids=accepted,
        duplicate_ids=duplicates,
        refused_ids=refused,
    )
    took = time.perf_counter() - started
    for source, kind in {(e.source, e.type.value) for e in batch}:
        INGEST_SECONDS.labels(source, kind).observe(took)
    if refused:
        return JSONResponse(
            {
                "detail": "backlog over its bound: low-priority events refused, retry later",
                **result.model_dump(),
            },
            status_code=429,
            headers={"Retry-After": str(services.backlog.retry_after_s)},
        )
    return result


@router.get("/{source}/{event_id}", response_model=EventStatusOut)
def event_status(source: str, event_id: str, services: ServicesDep, _key: ReadKey) -> EventStatusOut:
    row = events.get(services.db, source, event_id)
    if row is None:
        raise HTTPException(404, f"no event with source '{source}' and id '{event_id}'")
    return EventStatusOut(
        source=row.source,
        id=row.external_id,
        type=row.type,
        status=EventStatus(row.status).public,
        received_at=row.received_at,
        dispatched_at=row.dispatched_at,
        processed_at=row.processed_at,
        error=row.error,
        error_category=row.error_category,
        attempts=row.attempts,
        workflow_id=row.workflow_id,
        priority=row.priority,
        priority_class=row.priority_class,
    )
