"""Entity reads, served from the read cache and otherwise from the read models."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from nftpulse.api.deps import ReadKey, Services, ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.domain.events import collection_key, nft_key
from nftpulse.store import entities

router = APIRouter(prefix="/v1", tags=["entities"])

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_TOKEN = re.compile(r"^\d{1,78}$")


def _check(contract: str, token_id: str | None = None) -> None:
    errors = []
    if not _ADDRESS.match(contract):
        errors.append({"field": "contract", "reason": "must be a 0x-prefixed 20-byte hex address"})
    if token_id is not None and not _TOKEN.match(token_id):
        errors.append({"field": "token_id", "reason": "must be a decimal string"})
    if errors:
        raise InvalidInput(errors)


async def _read(services: Services, key: str, what: str) -> dict[str, Any]:
    cached = services.cache.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    row = await run_in_threadpool(entities.read_view, services.db, key)
    if row is None:
        raise HTTPException(404, f"no {what} {key.split(':', 1)[1]} has been seen yet")
    body = {**row.view, "version": row.version, "updated_at": row.updated_at.isoformat()}
    services.cache.fill(key, row.version, body)
    return body


@router.get("/nfts/{chain}/{contract}/{token_id}")
async def get_nft(
    chain: str, contract: str, token_id: str, services: ServicesDep, _key: ReadKey
) -> dict[str, Any]:
    _check(contract, token_id)
    return await _read(services, nft_key(chain, contract, str(int(token_id))), "NFT")


@router.get("/collections/{chain}/{contract}")
async def get_collection(chain: str, contract: str, services: ServicesDep, _key: ReadKey) -> dict[str, Any]:
    _check(contract)
    return await _read(services, collection_key(chain, contract), "collection")
