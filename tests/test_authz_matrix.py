"""The authorisation matrix: every operation of /openapi.json by every kind of caller → the expected class
of answer. The operations come from the document, so a new route without an entry here fails."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from nftpulse.api.app import create_app
from nftpulse.core.settings import Settings
from nftpulse.store import keys
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database

#: Who may call each operation: ``public`` (no key needed), a scope, ``user`` (``user:<id>`` of the
#: path's user, or admin), ``provider`` (the provider's signature, not an API key), ``any`` (any valid key;
#: the route then decides what the key reaches), ``reader`` (``read`` or any ``user:<id>``), ``health``
#: (public; 503 while Temporal is away, as here).
ACCESS: dict[str, str] = {
    "GET /healthz": "public",
    "GET /readyz": "health",
    "POST /v1/events": "ingest",
    "GET /v1/events/{source}/{event_id}": "read",
    "POST /v1/sources/alchemy": "provider",
    "POST /v1/sources/{name}": "provider",
    "GET /v1/sources": "admin",
    "POST /v1/sources/{name}/secrets": "admin",
    "DELETE /v1/sources/{name}/secrets/{secret_id}": "admin",
    "GET /v1/nfts/{chain}/{contract}/{token_id}": "read",
    "GET /v1/collections/{chain}/{contract}": "read",
    "GET /v1/ops/failures": "admin",
    "POST /v1/ops/failures": "admin",
    "PUT /v1/users/{user_id}": "user",
    "GET /v1/users/{user_id}": "user",
    "POST /v1/users/{user_id}/subscriptions": "user",
    "GET /v1/users/{user_id}/subscriptions": "user",
    "GET /v1/users/{user_id}/subscriptions/{sub_id}": "user",
    "PATCH /v1/users/{user_id}/subscriptions/{sub_id}": "user",
    "DELETE /v1/users/{user_id}/subscriptions/{sub_id}": "user",
    "GET /v1/users/{user_id}/notifications": "user",
    "POST /v1/users/{user_id}/notifications/read-all": "user",
    "POST /v1/users/{user_id}/notifications/{notification_id}/read": "user",
    "POST /v1/users/{user_id}/notifications/{notification_id}/archive": "user",
    "GET /v1/users/{user_id}/notifications/stream": "user",
    "POST /v1/callbacks/twilio": "provider",
    "POST /v1/callbacks/sendgrid": "provider",
    "POST /v1/callbacks/twilio/inbound": "provider",
    "GET /v1/callbacks/push/{notification_id}/click": "provider",
    "POST /v1/callbacks/push/{notification_id}/click": "provider",
    "POST /v1/users/{user_id}/notifications/{notification_id}/feedback": "user",
    "GET /v1/callbacks/feedback/{notification_id}": "provider",
    "POST /v1/callbacks/feedback/{notification_id}": "provider",
    "GET /v1/callbacks/feedback/{notification_id}/reset": "provider",
    "GET /v1/users/{user_id}/subscriptions/{sub_id}/sensitivity": "user",
    "POST /v1/users/{user_id}/subscriptions/{sub_id}/sensitivity/reset": "user",
    "POST /v1/stream/tokens": "reader",
    "GET /v1/stream": "read",
    "POST /v1/consumers": "admin",
    "GET /v1/consumers": "admin",
    "GET /v1/consumers/{consumer_id}": "admin",
    "DELETE /v1/consumers/{consumer_id}": "admin",
    "POST /v1/consumers/{consumer_id}/replay": "admin",
    "GET /v1/consumers/{consumer_id}/deliveries": "admin",
}
CALLERS = ("none", "unknown", "ingest", "read", "admin", "self", "other")
PATH_VALUES = {"user_id": "alice", "notification_id": "1", "sub_id": "sub_x", "source": "s", "event_id": "e"}
PATH_VALUES |= {"chain": "ethereum", "contract": "0x" + "ab" * 20, "token_id": "1", "name": "custom"}
PATH_VALUES |= {"secret_id": "1", "consumer_id": "con_0123456789abcdef"}


def expected(access: str, caller: str) -> set[int] | str:
    """The statuses allowed, or ``"past auth"``: anything but 401 and 403 (the request reached the route,
    which may then answer 404, 422, ... for the made-up ids)."""
    if access == "health":
        return {200, 503}
    if access in ("public", "provider"):
        return "past auth" if access == "public" else "not a key's business"
    if caller in ("none", "unknown"):
        return {401}
    if access == "any":
        return "past auth"
    # An admin key holds every scope.
    allowed = {
        "user": {"admin", "self"},
        "admin": {"admin"},
        "ingest": {"ingest", "admin"},
        "read": {"read", "admin"},
        "reader": {"read", "admin", "self", "other"},
    }[access]
    return "past auth" if caller in allowed else {403}


@pytest_asyncio.fixture
async def matrix(db: Database) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, dict[str, str]]]]:
    app = create_app(Settings(), db, NoCache(), None)
    headers = {
        "none": {},
        "unknown": {"Authorization": "Bearer pk_unknown_0000000000000000000000000000"},
        **{
            caller: {"Authorization": f"Bearer {keys.create(db, caller, [scope])}"}
            for caller, scope in {
                "ingest": "ingest",
                "read": "read",
                "admin": "admin",
                "self": "user:alice",
                "other": "user:bob",
            }.items()
        },
    }
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://pulse.test"
    ) as http:
        yield http, headers


#: Bodies valid enough to pass validation, so that the answer shows what the key may do.
BODIES = {
    "POST /v1/users/{user_id}/notifications/{notification_id}/feedback": {"verdict": "useful"},
    "POST /v1/users/{user_id}/subscriptions": {
        "target": "collection",
        "entity_key": "collection:ethereum:0x" + "ab" * 20,
        "rules": [{"kind": "threshold", "metric": "trust", "level": "50"}],
    },
}


def _body(label: str, operation: dict[str, Any]) -> dict[str, Any] | None:
    return BODIES.get(label, {}) if "requestBody" in operation else None


async def test_every_operation_has_an_entry_and_answers_as_expected(
    matrix: tuple[httpx.AsyncClient, dict[str, dict[str, str]]],
) -> None:
    http, headers = matrix
    document = (await http.get("/openapi.json")).json()
    operations = {
        f"{method.upper()} {path}": op
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if method in ("get", "post", "put", "patch", "delete")
    }
    missing = sorted(set(operations) - set(ACCESS))
    assert not missing, f"operations without an entry in ACCESS: {missing}"
    assert not set(ACCESS) - set(operations), sorted(set(ACCESS) - set(operations))
    wrong: list[str] = []
    cells = 0
    for label, op in operations.items():
        method, path = label.split(" ", 1)
        url = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)
        params = {"max_s": "0.1"} if path.endswith("stream") else None
        for caller in CALLERS:
            want = expected(ACCESS[label], caller)
            if want == "not a key's business":
                continue  # signed by the provider: its own tests check the signatures
            resp = await http.request(
                method, url, headers=headers[caller], json=_body(label, op), params=params
            )
            cells += 1
            ok = (resp.status_code < 500 or want == {200, 503}) and (
                resp.status_code not in (401, 403) if want == "past auth" else resp.status_code in want
            )
            if not ok:
                wrong.append(f"{label} as {caller}: {resp.status_code} (expected {want}) {resp.text[:120]}")
    assert not wrong, "\n".join(wrong)
    assert cells >= 150
