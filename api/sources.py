"""Signed webhooks from data sources: Alchemy Notify (``POST /v1/sources/alchemy``) and producers that post
Pulse's own schema with Standard Webhooks signatures (``POST /v1/sources/{name}``).

A source authenticates with its signature instead of an API key. What it sends goes through the same
ingest as ``POST /v1/events`` (classification, shedding, the event log's ``(source, id)`` key), so a retried
delivery is reported as duplicates and changes nothing. A delivery is refused whole: 401 when unsigned or
wrongly signed, 422 naming the field when malformed, and nothing of it is ingested.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from nftpulse.adapters import alchemy, webhooks
from nftpulse.adapters.logs import CHAIN_SOURCE, DecodeError
from nftpulse.api.common import IsoTime, parse_row_id
from nftpulse.api.deps import AdminKey, ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.api.events import IngestResult, InvalidBatch, ShedResult, accept, parse_batch
from nftpulse.core.metrics import EVENTS_INGESTED
from nftpulse.domain.events import Event
from nftpulse.store import retractions, source_secrets

router = APIRouter(prefix="/v1/sources", tags=["sources"])

_REFUSED = {"description": "unsigned, or signed with no configured key; nothing was ingested"}
_ANSWERS: dict[int | str, dict[str, Any]] = {
    401: _REFUSED,
    422: {"model": InvalidBatch, "description": "malformed, each bad field named; nothing was ingested"},
    429: {"model": ShedResult, "description": "backlog over its bound; retry after Retry-After"},
}


def _unsigned(reason: str) -> HTTPException:
    EVENTS_INGESTED.labels("unknown", "unknown", "rejected").inc()
    return HTTPException(401, reason)


@router.post(
    "/alchemy",
    status_code=202,
    response_model=IngestResult,
    responses=_ANSWERS,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    },
)
async def alchemy_webhook(request: Request, services: ServicesDep) -> Any:
    """An Alchemy Notify NFT Activity or Address Activity delivery, signed with ``X-Alchemy-Signature``
    (hex HMAC-SHA256 of the body under one of ``PULSE_ALCHEMY_SIGNING_KEY``). Its ERC-721 and ERC-1155
    activity becomes mints, transfers and burns with the chain follower's ids; ETH and ERC-20 activity is
    not NFT data and is left out."""
    started = time.perf_counter()
    raw = await request.body()
    keys = services.settings.alchemy_signing_keys
    if not keys:
        raise _unsigned("no Alchemy signing key is configured (PULSE_ALCHEMY_SIGNING_KEY)")
    if not alchemy.signature_valid(raw, request.headers.get(alchemy.SIGNATURE_HEADER), keys):
        raise _unsigned(f"{alchemy.SIGNATURE_HEADER} is missing or matches no configured signing key")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput([{"field": "body", "reason": f"not valid JSON: {exc}"}]) from None
    try:
        decoded = alchemy.decode_delivery(body)
    except DecodeError as exc:
        raise InvalidInput(
            [{"field": exc.field, "reason": exc.reason}], "invalid Alchemy delivery; nothing was accepted"
        ) from None
    hashes = alchemy.block_hashes(body)

    def block_hash(event: Event) -> str | None:
        return hashes.get((event.tx_hash or "", event.log_index if event.log_index is not None else -1))

    batch = await run_in_threadpool(
        retractions.reincluded, services.db, CHAIN_SOURCE, decoded.events, block_hash
    )
    return await accept(services, batch, started)


@router.post(
    "/{name}",
    status_code=202,
    response_model=IngestResult,
    responses=_ANSWERS,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    },
)
async def signed_source(name: str, request: Request, services: ServicesDep) -> Any:
    """Events in Pulse's own schema (one, or ``{"events": [...]}``) from the producer ``name`` (a fraud
    detector, a market feed), signed per Standard Webhooks with its secret from ``PULSE_SOURCE_SECRETS`` or
    one created with ``POST /v1/sources/{name}/secrets`` (any valid one: secrets rotate).
    Every event's ``source`` must be ``name``: a source speaks only for itself."""
    started = time.perf_counter()
    raw = await request.body()
    configured = services.settings.source_secret_map.get(name)
    known = [configured] if configured is not None else []
    known += await run_in_threadpool(source_secrets.active, services.db, name)
    if not known:
        raise _unsigned(
            f"no secret is configured for source '{name}' (PULSE_SOURCE_SECRETS or "
            f"POST /v1/sources/{name}/secrets)"
        )
    try:
        webhooks.verify(known, request.headers, raw)
    except webhooks.SignatureError as exc:
        raise _unsigned(str(exc)) from None
    batch = parse_batch(raw)
    strangers = [
        {"index": i, "field": "source", "reason": f"must be '{name}', the source this was posted to"}
        for i, event in enumerate(batch)
        if event.source != name
    ]
    if strangers:
        raise InvalidInput(strangers, f"{len(strangers)} event(s) of another source; nothing was accepted")
    return await accept(services, batch, started)


# -- source secrets (admin) -----------------------------------------------------------------------------

#: A source name as events carry it (``Event.source``); ``alchemy`` signs with its own keys.
SourceName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]


class SourceSecretOut(BaseModel):
    id: int
    source: str
    secret: str
    created_at: IsoTime


class SecretInfo(BaseModel):
    id: int
    created_at: IsoTime


class SourceOut(BaseModel):
    name: str
    #: Whether PULSE_SOURCE_SECRETS holds a secret for it too (those are not listed, nor revocable here).
    configured: bool
    secrets: list[SecretInfo]
    created_at: IsoTime | None


class SourceList(BaseModel):
    items: list[SourceOut]


def _not_alchemy(name: str) -> None:
    if name == "alchemy":
        raise InvalidInput(
            [{"field": "name", "reason": "alchemy deliveries are signed with PULSE_ALCHEMY_SIGNING_KEY"}]
        )


@router.post("/{name}/secrets", status_code=201, response_model=SourceSecretOut)
async def create_source_secret(name: SourceName, services: ServicesDep, _key: AdminKey) -> SourceSecretOut:
    """Create a Standard Webhooks secret (``whsec_…``) for the source ``name``; it is answered this once.
    A source's earlier secrets stay valid until revoked, so a producer can switch without a gap."""
    _not_alchemy(name)
    created = await run_in_threadpool(source_secrets.create, services.db, name)
    return SourceSecretOut(
        id=created.id, source=created.source, secret=created.secret, created_at=created.created_at
    )


@router.get("", response_model=SourceList)
async def list_sources(services: ServicesDep, _key: AdminKey) -> SourceList:
    """The signed sources: those with secrets created here and those in PULSE_SOURCE_SECRETS, with their
    secrets' ids and creation times (never the secrets)."""

    def read() -> list[SourceOut]:
        stored = {s.name: s for s in source_secrets.summaries(services.db)}
        names = sorted(stored.keys() | services.settings.source_secret_map.keys())
        items = []
        for name in names:
            ids = source_secrets.secret_ids(services.db, name) if name in stored else []
            items.append(
                SourceOut(
                    name=name,
                    configured=name in services.settings.source_secret_map,
                    secrets=[SecretInfo(id=i, created_at=at) for i, at in ids],
                    created_at=stored[name].first_created if name in stored else None,
                )
            )
        return items

    return SourceList(items=await run_in_threadpool(read))


@router.delete("/{name}/secrets/{secret_id}", status_code=204)
async def revoke_source_secret(
    name: SourceName, secret_id: str, services: ServicesDep, _key: AdminKey
) -> None:
    """Revoke one of the source's secrets: deliveries signed only with it are refused (401) from now on."""
    row_id = parse_row_id(secret_id, "secret_id", "must be a secret id (ASCII digits)")
    if not await run_in_threadpool(source_secrets.revoke, services.db, name, row_id):
        raise HTTPException(404, f"source '{name}' has no active secret {row_id}")
