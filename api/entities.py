"""Entity reads, served from the read cache and otherwise from the read models."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from nftpulse.api.deps import ReadKey, Services, ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.domain.book import derive
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


async def _row(services: Services, key: str) -> dict[str, Any] | None:
    """A stored row's view with its version, from the cache or the database (None: no such row)."""
    cached = services.cache.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    row = await run_in_threadpool(entities.read_view, services.db, key)
    if row is None:
        return None
    body = {**row.view, "version": row.version, "updated_at": row.updated_at.isoformat()}
    services.cache.fill(key, row.version, body)
    return body


def _not_seen(what: str, key: str) -> HTTPException:
    return HTTPException(404, f"no {what} {key.split(':', 1)[1]} has been seen yet")


@router.get("/nfts/{chain}/{contract}/{token_id}")
async def get_nft(
    chain: str, contract: str, token_id: str, services: ServicesDep, _key: ReadKey
) -> dict[str, Any]:
    _check(contract, token_id)
    key = nft_key(chain, contract, str(int(token_id)))
    part = await _row(services, key)
    if part is None:
        raise _not_seen("NFT", key)
    if not derive.is_part(part):
        return part  # a whole view, stored before its collection's next batch rewrites it as a part
    # Trust, risk, the price estimate and the best offer follow the collection's figures: derived from its
    # row's factors now, so a collection-wide move never rewrites every NFT row.
    collection = await _row(services, collection_key(chain, contract))
    if collection is None:
        raise _not_seen("collection", collection_key(chain, contract))
    return derive.nft_view(part, collection[derive.FACTORS]) | {
        "version": part["version"],
        "collection_version": collection["version"],
        "updated_at": max(part["updated_at"], collection["updated_at"]),
    }


@router.get("/collections/{chain}/{contract}")
async def get_collection(chain: str, contract: str, services: ServicesDep, _key: ReadKey) -> dict[str, Any]:
    _check(contract)
    key = collection_key(chain, contract)
    row = await _row(services, key)
    if row is None:
        raise _not_seen("collection", key)
    return {k: v for k, v in row.items() if k != derive.FACTORS}
