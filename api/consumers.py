"""Consumers: other services (price, risk, trust engines) fed the change log by signed webhooks.

An admin registers an endpoint with filters (entity keys, key prefixes, metrics, the types of the events
behind a change); Pulse then POSTs each matching change to it, signed per Standard Webhooks with the
consumer's ``whsec_`` secret, retried on the webhook schedule, in order per entity, until a 410 disables
it. The URL is held to the rules user webhooks are (``core.delivery.vet_destination``). Delivery is the
runner workflow's (``workflows.consumers``); the API starts it through its contract and signals replays.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError

from nftpulse.activities.contracts.consumers import (
    Replay,
    consumer_workflow_id,
    ensure_runner,
    replay_runner,
)
from nftpulse.api.common import IsoTime, QueryInt, Strict, parse_row_id
from nftpulse.api.deps import AdminKey, Services, ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.api.stream import ENTITY_KINDS, MAX_FILTERS
from nftpulse.core.delivery import (
    WEBHOOK_SECRET_PREFIX,
    InvalidWebhookUrl,
    generate_webhook_secret,
    vet_destination,
    webhook_message_id,
)
from nftpulse.store import changes as changelog
from nftpulse.store import consumers as store
from nftpulse.store.models import ConsumerDelivery, ConsumerRecord

log = logging.getLogger("pulse.api.consumers")
router = APIRouter(prefix="/v1", tags=["consumers"])

ConsumerId = Annotated[str, Path(pattern=r"^con_[0-9a-f]{16}$")]
Filter = Annotated[str, Field(min_length=1, max_length=200)]


class ConsumerIn(Strict):
    """An endpoint and what it wants; every filter left empty lets everything through."""

    url: str = Field(max_length=2000, description="https URL the changes are POSTed to")
    secret: str | None = Field(
        default=None,
        pattern=r"^whsec_[A-Za-z0-9+/=]{16,200}$",
        description="Standard Webhooks secret; one is generated (and answered this once) if not given",
    )
    keys: list[Filter] = Field(default_factory=list, max_length=MAX_FILTERS, description="entity keys")
    prefixes: list[Filter] = Field(default_factory=list, max_length=MAX_FILTERS, description="key prefixes")
    metrics: list[Filter] = Field(default_factory=list, max_length=MAX_FILTERS, description="e.g. trust")
    event_types: list[Filter] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="types of the events behind a change"
    )


class ConsumerOut(BaseModel):
    id: str
    url: str
    keys: list[str]
    prefixes: list[str]
    metrics: list[str]
    event_types: list[str]
    status: Literal["active", "disabled"]
    disabled_reason: str | None
    #: The change log cursor the runner has read through.
    cursor: str
    #: Changes read and not yet delivered or given up.
    pending: int
    created_at: IsoTime
    updated_at: IsoTime


class ConsumerCreated(ConsumerOut):
    #: Answered at creation only.
    secret: str


class ConsumerList(BaseModel):
    items: list[ConsumerOut]


class ReplayIn(Strict):
    from_cursor: str = Field(
        pattern=r"^[0-9]{1,19}$",
        description="deliver again every matching change after this cursor (as the feed's Last-Event-ID)",
    )


class ReplayOut(BaseModel):
    consumer_id: str
    from_cursor: str
    generation: int


class DeliveryOut(BaseModel):
    id: int
    cursor: str
    entity_key: str
    #: 0: the live delivery; 1, 2, …: replays.
    generation: int
    webhook_id: str
    status: Literal["pending", "delivered", "failed", "gone"]
    attempts: int
    response_code: int | None
    error: str | None
    created_at: IsoTime
    updated_at: IsoTime


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    #: Pass as ``before`` for the next (older) page; null at the end.
    next_before: int | None


def _out(row: ConsumerRecord, pending: int) -> ConsumerOut:
    return ConsumerOut.model_validate(
        {
            "id": row.id,
            "url": row.url,
            "keys": row.keys,
            "prefixes": row.prefixes,
            "metrics": row.metrics,
            "event_types": row.event_types,
            "status": row.status,
            "disabled_reason": row.disabled_reason,
            "cursor": str(row.cursor),
            "pending": pending,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
    )


def _delivery_out(row: ConsumerDelivery) -> DeliveryOut:
    return DeliveryOut.model_validate(
        {
            "id": row.id,
            "cursor": str(row.cursor),
            "entity_key": row.entity_key,
            "generation": row.generation,
            "webhook_id": webhook_message_id(row.message_id),
            "status": row.status,
            "attempts": row.attempts,
            "response_code": row.response_code,
            "error": row.error,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
    )


def _check_filters(body: ConsumerIn) -> list[dict[str, str]]:
    errors = []
    for name, values in (("keys", body.keys), ("prefixes", body.prefixes)):
        for i, value in enumerate(values):
            if value.split(":", 1)[0] not in ENTITY_KINDS or ":" not in value:
                reason = f"must start with one of {', '.join(ENTITY_KINDS)} and ':'"
                errors.append({"field": f"{name}.{i}", "reason": reason})
    if body.secret is not None:
        try:
            base64.b64decode(body.secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            errors.append({"field": "secret", "reason": "must be whsec_ followed by base64"})
    return errors


def _runner_args(services: Services) -> tuple[str, str]:
    return services.settings.workflow_id_prefix, services.settings.task_queue


@router.post("/consumers", status_code=201)
async def create_consumer(body: ConsumerIn, services: ServicesDep, _key: AdminKey) -> ConsumerCreated:
    """Register a consumer; its secret is answered this once. Changes logged from now on are delivered."""
    errors = _check_filters(body)
    try:
        await vet_destination(body.url, allow_private=services.settings.allow_private_webhooks)
    except InvalidWebhookUrl as exc:
        errors.insert(0, {"field": "url", "reason": str(exc)})
    if errors:
        raise InvalidInput(errors)
    secret = body.secret or generate_webhook_secret()

    def create() -> ConsumerRecord:
        with services.db.write() as s:
            return store.create(
                s,
                url=body.url,
                secret=secret,
                keys=body.keys,
                prefixes=body.prefixes,
                metrics=body.metrics,
                event_types=body.event_types,
                now=datetime.now(UTC),
            )

    row = await run_in_threadpool(create)
    if services.temporal is not None:
        try:
            await ensure_runner(services.temporal, *_runner_args(services), row.id)
        except RPCError:
            # Stored, so not lost: every worker ensures the runners of active consumers when it starts.
            log.exception("consumer.runner_not_started", extra={"consumer": row.id})
    return ConsumerCreated.model_validate({**_out(row, 0).model_dump(), "secret": secret})


@router.get("/consumers")
async def list_consumers(services: ServicesDep, _key: AdminKey) -> ConsumerList:
    """Every consumer (without secrets)."""

    def read() -> list[ConsumerOut]:
        with services.db.read() as s:
            return [_out(row, store.pending_count(s, row.id)) for row in store.listed(s)]

    return ConsumerList(items=await run_in_threadpool(read))


def _load(services: Services, consumer_id: str) -> ConsumerOut:
    with services.db.read() as s:
        row = store.get(s, consumer_id)
        if row is None:
            raise HTTPException(404, f"no consumer {consumer_id!r}")
        return _out(row, store.pending_count(s, row.id))


@router.get("/consumers/{consumer_id}")
async def get_consumer(consumer_id: ConsumerId, services: ServicesDep, _key: AdminKey) -> ConsumerOut:
    """A consumer: its filters, status (``disabled`` after a 410, with the reason), cursor and backlog."""
    return await run_in_threadpool(_load, services, consumer_id)


@router.delete("/consumers/{consumer_id}", status_code=204)
async def delete_consumer(consumer_id: ConsumerId, services: ServicesDep, _key: AdminKey) -> Response:
    """Stop delivering to a consumer and forget it with its delivery log."""

    def remove() -> bool:
        with services.db.write() as s:
            return store.remove(s, consumer_id)

    if not await run_in_threadpool(remove):
        raise HTTPException(404, f"no consumer {consumer_id!r}")
    if services.temporal is not None:
        # The runner also ends by itself at its next read, finding the consumer gone.
        with contextlib.suppress(RPCError):
            prefix, _ = _runner_args(services)
            await services.temporal.get_workflow_handle(consumer_workflow_id(prefix, consumer_id)).cancel()
    return Response(status_code=204)


@router.post("/consumers/{consumer_id}/replay", status_code=202)
async def replay_consumer(
    consumer_id: ConsumerId, body: ReplayIn, services: ServicesDep, _key: AdminKey
) -> ReplayOut:
    """Deliver again every matching change after ``from_cursor`` that the change log still keeps (its
    retention); a disabled consumer is enabled again. Replayed messages keep their ``webhook-id``."""
    from_cursor = parse_row_id(body.from_cursor, "from_cursor", "a cursor from a delivered change")

    def count() -> tuple[int, bool]:
        with services.db.write() as s:
            if store.get(s, consumer_id) is None:
                raise HTTPException(404, f"no consumer {consumer_id!r}")
            oldest, newest = changelog.pruned_through(s), changelog.head(s)
            if from_cursor < oldest:
                reason = f"older than the change log's retention: the oldest cursor still kept is {oldest}"
                raise InvalidInput([{"field": "from_cursor", "reason": reason}])
            if from_cursor > newest:
                reason = f"beyond the newest cursor ({newest})"
                raise InvalidInput([{"field": "from_cursor", "reason": reason}])
            if services.temporal is None:
                raise HTTPException(503, "Temporal is not reachable; try again", headers={"Retry-After": "5"})
            counted = store.replay(s, consumer_id, datetime.now(UTC))
            assert counted is not None  # checked above, in the same transaction
            return counted

    generation, _ = await run_in_threadpool(count)
    assert services.temporal is not None
    try:
        await replay_runner(
            services.temporal, *_runner_args(services), consumer_id, Replay(from_cursor, generation)
        )
    except RPCError as exc:
        raise HTTPException(
            503, "Temporal did not take the replay; try again", headers={"Retry-After": "5"}
        ) from exc
    return ReplayOut(consumer_id=consumer_id, from_cursor=str(from_cursor), generation=generation)


@router.get("/consumers/{consumer_id}/deliveries")
async def list_deliveries(
    consumer_id: ConsumerId,
    services: ServicesDep,
    _key: AdminKey,
    limit: Annotated[QueryInt, Query(ge=1, le=500)] = 100,
    before: Annotated[QueryInt | None, Query(description="a delivery id from the previous page")] = None,
) -> DeliveryList:
    """The delivery log, newest first: each change's status, attempts, last response code and cursor."""

    def read() -> list[DeliveryOut]:
        with services.db.read() as s:
            if store.get(s, consumer_id) is None:
                raise HTTPException(404, f"no consumer {consumer_id!r}")
            return [_delivery_out(r) for r in store.deliveries(s, consumer_id, limit=limit, before=before)]

    items = await run_in_threadpool(read)
    return DeliveryList(items=items, next_before=items[-1].id if len(items) == limit else None)
