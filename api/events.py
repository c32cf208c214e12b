"""Ingest (``POST /v1/events``) and event status (``GET /v1/events/{source}/{id}``)."""

from __future__ import annotations

import time
import unicodedata
import weakref
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, RootModel, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from nftpulse.api.deps import IngestKey, ReadKey, Services, ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.core import tracing
from nftpulse.core.metrics import EVENTS_INGESTED, INGEST_SECONDS, SHED
from nftpulse.domain.classify import ClassifyContext, Thresholds, classify
from nftpulse.domain.events import DATA_MODELS, MAX_BATCH, MAX_EVENT_BYTES, Event, field_errors
from nftpulse.store import events
from nftpulse.store.db import Database
from nftpulse.store.entities import FloorCache
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


class FieldError(BaseModel):
    #: Which event of the request (its position); absent when the body as a whole is wrong.
    index: int | None = None
    field: str
    reason: str


class InvalidBatch(BaseModel):
    """A refused request: nothing of it was accepted."""

    detail: str
    errors: list[FieldError]


class ShedResult(IngestResult):
    """The backlog is past its bound: low-priority events were refused (``refused_ids``), the rest
    accepted."""

    detail: str


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
    #: While ``status`` is ``waiting``: what the event waits for (``rate:USDC/ETH``; the reason is
    #: ``error``) and since when; it fails once it has waited ``PULSE_WAIT_MAX_SECONDS``.
    waiting_for: str | None = None
    waiting_since: datetime | None = None


class EventBatch(BaseModel):
    """Several events in one request, accepted or refused together."""

    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)


class IngestBody(RootModel[Event | EventBatch]):
    """What ``POST /v1/events`` takes (described to OpenAPI; the handler parses the raw body itself)."""


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with every ``#/$defs/...`` reference replaced by its definition, so that it can stand
    inside an OpenAPI operation (whose ``$ref``s resolve against the whole document)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def ingest_body_schema() -> dict[str, Any]:
    """JSON schema of ``POST /v1/events``'s body: one event or ``{"events": [...]}``, each event's
    ``data`` one of the per-type shapes (which one is chosen by ``type``)."""
    schema = IngestBody.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs")
    shapes = []
    for kind, model in DATA_MODELS.items():
        shape = TypeAdapter(model).json_schema()
        defs |= shape.pop("$defs", {})
        shapes.append(shape | {"title": f"{kind.value} data"})
    defs["Event"]["properties"]["data"] = {
        "description": "what the event says; its shape depends on `type`",
        "anyOf": shapes,
    }
    inlined: dict[str, Any] = _inline_refs(schema, defs)
    return inlined


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
        if len(orjson.dumps(item)) > MAX_EVENT_BYTES:
            field = ".".join(map(str, prefix[i])) or "body"
            errors.append({"index": i, "field": field, "reason": f"at most {MAX_EVENT_BYTES} bytes as JSON"})
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


#: Per database, the floors events are classified against (one read every few seconds per process).
_FLOORS: weakref.WeakKeyDictionary[Database, FloorCache] = weakref.WeakKeyDictionary()


async def _floors(db: Database) -> FloorCache:
    floors = _FLOORS.get(db)
    if floors is None:
        floors = _FLOORS[db] = FloorCache(db)
    if floors.stale():
        await run_in_threadpool(floors.refresh)
    return floors


@router.post(
    "",
    status_code=202,
    response_model=IngestResult,
    responses={
        422: {"model": InvalidBatch, "description": "invalid events, each bad field named"},
        429: {"model": ShedResult, "description": "backlog over its bound; retry after Retry-After"},
    },
    # The body is read raw and parsed in one pass (``parse_batch``), so FastAPI is only told its schema.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ingest_body_schema()}},
        }
    },
)
async def ingest(request: Request, services: ServicesDep, _key: IngestKey) -> Any:
    """Accept one event or a batch (``{"events": [...]}``). Each event is classified here, once: its
    priority decides shedding now and, aged by its wait, its route at dispatch."""
    started = time.perf_counter()
    try:
        batch = parse_batch(await request.body())
    except InvalidInput as exc:
        EVENTS_INGESTED.labels("unknown", "unknown", "rejected").inc(
            max(1, len({e.get("index") for e in exc.errors}))
        )
        raise
    return await accept(services, batch, started)


async def accept(services: Services, batch: list[Event], started: float) -> IngestResult | JSONResponse:
    """Classify, shed past the backlog bound, append and count validated events: what every way in
    (``POST /v1/events``, the sources' webhooks) does once it has events."""
    settings = services.settings
    known = settings.metric_source_names

    def label(source: str) -> str:
        return source if source in known else "other"

    thresholds = Thresholds(settings.significant_priority, settings.large_move)
    floors = await _floors(services.db)
    verdicts = [classify(e, ClassifyContext(thresholds, floor=floors.get(e.collection_key))) for e in batch]
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
            EVENTS_INGESTED.labels(label(batch[ref.index].source), batch[ref.index].type.value, "shed").inc()
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
            label(o.source), batch[index].type.value, "duplicate" if o.duplicate else "accepted"
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
    for source, kind in {(label(e.source), e.type.value) for e in batch}:
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


@router.get("/{source}/{event_id:path}", response_model=EventStatusOut)
def event_status(source: str, event_id: str, services: ServicesDep, _key: ReadKey) -> EventStatusOut:
    """An event's status. The id is the rest of the path, so ids holding ``/`` are read back too; it
    compares in NFC, as ingest stored it."""
    row = events.get(services.db, source, unicodedata.normalize("NFC", event_id))
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
        waiting_for=row.waiting_for if row.status == EventStatus.WAITING.value else None,
        waiting_since=row.waiting_since if row.status == EventStatus.WAITING.value else None,
    )
