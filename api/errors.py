"""One place that turns expected failures into clear 4xx/503 answers, never a 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from nftpulse.store.db import TransientStoreError

log = logging.getLogger("pulse.api")


class InvalidInput(Exception):
    """A request whose content is wrong: answered 422 with each bad field and why."""

    def __init__(self, errors: list[dict[str, Any]], message: str = "invalid input") -> None:
        super().__init__(message)
        self.errors = errors
        self.message = message


class FieldProblem(BaseModel):
    #: Which event of a batch (its position); only ``POST /v1/events`` names one.
    index: int | None = None
    field: str
    reason: str


class ErrorBody(BaseModel):
    """Every 422 (and 413) answer: what was wrong, each bad field named."""

    detail: str
    errors: list[FieldProblem]


_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def _document_errors(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document with the 422 answers as this module gives them (``ErrorBody``), not FastAPI's
    ``HTTPValidationError``, and a 413 on every operation that takes a body (``api/limits.py``)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components |= {
        "ErrorBody": ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        | {"title": "ErrorBody"}
    }
    components["FieldProblem"] = components["ErrorBody"].pop("$defs")["FieldProblem"]
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            content = {"application/json": {"schema": _ERROR_REF}}
            if "422" in responses or operation.get("parameters") or "requestBody" in operation:
                ref = (
                    responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
                )
                # A route that declares its own 422 model (``POST /v1/events``: ``InvalidBatch``, the same
                # shape) keeps it; FastAPI's default ``HTTPValidationError`` is not what is answered.
                if ref.get("$ref", "").endswith("/HTTPValidationError") or "422" not in responses:
                    responses["422"] = {
                        "description": "invalid input, each bad field named",
                        "content": content,
                    }
            if "requestBody" in operation:
                responses["413"] = {"description": "request body too large", "content": content}
    app.openapi_schema = schema
    return schema


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[-1] if loc else "body")


def install(app: FastAPI) -> None:
    app.openapi = lambda: _document_errors(app)  # type: ignore[method-assign]

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
