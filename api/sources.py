"""Signed webhooks from data sources: Alchemy Notify (``POST /v1/sources/alchemy``) and producers that post
Pulse's own schema with Standard Webhooks signatures (``POST /v1/sources/{name}``).

A source authenticates with its signature instead of an API key. What it sends goes through the same
ingest as ``POST /v1/events`` (classification, shedding, the event log's ``(source, id)`` key), so a retried
delivery is reported as duplicates and changes nothing. A delivery is refused whole: 401 when unsigned or
wrongly signed, 422 naming the field when malformed, and nothing of it is ingested.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request

from nftpulse.adapters import alchemy, webhooks
from nftpulse.adapters.logs import DecodeError
from nftpulse.api.deps import ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.api.events import IngestResult, InvalidBatch, ShedResult, accept, parse_batch
from nftpulse.core.metrics import EVENTS_INGESTED

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
    return await accept(services, decoded.events, started)


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
    detector, a market feed), signed per Standard Webhooks with its secret from ``PULSE_SOURCE_SECRETS``.
    Every event's ``source`` must be ``name``: a source speaks only for itself."""
    started = time.perf_counter()
    raw = await request.body()
    secret = services.settings.source_secret_map.get(name)
    if secret is None:
        raise _unsigned(f"no secret is configured for source '{name}' (PULSE_SOURCE_SECRETS)")
    try:
        webhooks.verify(secret, request.headers, raw)
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
