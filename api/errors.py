"""One place that turns expected failures into clear 4xx/503 answers, never a 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from nftpulse.store.db import TransientStoreError

log = logging.getLogger("pulse.api")


class InvalidInput(Exception):
    """A request whose content is wrong: answered 422 with each bad field and why."""

    def __init__(self, errors: list[dict[str, Any]], message: str = "invalid input") -> None:
        super().__init__(message)
        self.errors = errors
        self.message = message


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[-1] if loc else "body")


def install(app: FastAPI) -> None:
    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "errors": exc.errors}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": _loc(tuple(e.get("loc", ()))),
                "reason": str(e.get("msg", "")).removeprefix("Value error, "),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": "invalid input", "errors": errors}, status_code=422)

    @app.exception_handler(TransientStoreError)
    async def _unavailable(_: Request, exc: TransientStoreError) -> JSONResponse:
        log.warning("api.database_unavailable", extra={"error": str(exc)})
        return JSONResponse(
            {"detail": "the database is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
