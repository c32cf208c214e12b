"""Liveness and readiness: the only routes without a key. (The API's Prometheus metrics have a port of
their own, ``PULSE_API_METRICS_PORT``, away from the public one.)"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from nftpulse.api.deps import ServicesDep
from nftpulse.core.metrics import DEPENDENCY_UP

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    checks: dict[str, bool] = {"database": await run_in_threadpool(services.db.ping)}
    if services.temporal is None:
        checks["temporal"] = False
    else:
        try:
            await asyncio.wait_for(services.temporal.service_client.check_health(), timeout=3)
            checks["temporal"] = True
        except Exception:
            checks["temporal"] = False
    for name, up in checks.items():
        DEPENDENCY_UP.labels(name).set(1 if up else 0)
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
