"""The users, subscriptions, inbox and callback routes as OpenAPI describes them, and their answers checked
against those descriptions (the response models), through the real app on a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from nftpulse.api import callbacks, inbox, stream, subscriptions, users
from nftpulse.api.app import create_app
from nftpulse.api.inbox import InboxPage, NotificationOut
from nftpulse.api.subscriptions import SubscriptionList, SubscriptionOut
from nftpulse.api.users import UserOut
from nftpulse.core.settings import Settings
from nftpulse.domain.escalation import DEFAULT_CHAIN, DEFAULT_DELAY_S, DEFAULT_MAX_REPEATS
from nftpulse.store import keys, notifications
from nftpulse.store import notify as notify_store
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database

COLLECTION = "collection:ethereum:0x" + "ab" * 20
ROUTERS = {
    "users": users,
    "subscriptions": subscriptions,
    "inbox": inbox,
    "callbacks": callbacks,
    "stream": stream,
}


@pytest_asyncio.fixture
async def api(db: Database) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, dict[str, str]]]:
    app = create_app(Settings(allow_private_webhooks=True), db, NoCache(), None)
    admin = {"Authorization": f"Bearer {keys.create(db, 'admin', ['admin'])}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pulse.test") as c:
        yield app, c, admin


def _operations(schema: dict[str, Any], module: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(path, method, operation) of every route ``module``'s router adds, as /openapi.json has them."""
    out = []
    for route in module.router.routes:
        if not hasattr(route, "methods"):
            continue  # a WebSocket route: not part of the OpenAPI document
        for method in sorted(route.methods):
            out.append((route.path, method.lower(), schema["paths"][route.path][method.lower()]))
    return out


@pytest.mark.parametrize("name", sorted(ROUTERS))
async def test_openapi_describes_every_response(
    api: tuple[FastAPI, httpx.AsyncClient, dict[str, str]], name: str
) -> None:
    _, http, _ = api
    schema = (await http.get("/openapi.json")).json()
    operations = _operations(schema, ROUTERS[name])
    assert operations, f"{name} adds no routes"
    for path, method, operation in operations:
        success = {code: r for code, r in operation["responses"].items() if code[0] in "23"}
        assert len(success) == 1, f"{method} {path}: {list(operation['responses'])}"
        ((code, response),) = success.items()
        content = response.get("content", {})
        if code in ("204", "303"):
            # No content, or a redirect (the web-push click beacon sends the browser on to the entity).
            assert not content or code == "303", f"{method} {path} answers {code} with a body"
            continue
        if path.endswith("/stream"):
            assert set(content) == {"text/event-stream"}, f"{method} {path}: {set(content)}"
            continue
        if path.endswith("/twilio/inbound"):
            # Twilio reads TwiML in answer to an inbound message.
            assert set(content) == {"application/xml"}, f"{method} {path}: {set(content)}"
            continue
        # A JSON answer names its model: an untyped route would show an empty schema here.
        ref = content["application/json"]["schema"].get("$ref", "")
        assert ref.startswith("#/components/schemas/"), f"{method} {path}: {content}"
        model = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        assert model["properties"] and model.get("required"), f"{method} {path}: {model}"


async def test_answers_match_their_models(
    api: tuple[FastAPI, httpx.AsyncClient, dict[str, str]], db: Database
) -> None:
    _, http, admin = api
    profile = {
        "locale": "de",
        "timezone": "Europe/Berlin",
        "channels": {"email": "ada@example.com", "webhooks": [{"url": "http://127.0.0.1:9/hook"}]},
        "quiet_hours": {"start": "22:00", "end": "07:00"},
    }
    put = await http.put("/v1/users/ada", json=profile, headers=admin)
    assert put.status_code == 200, put.text
    user = UserOut.model_validate(put.json())
    assert user.channels.webhooks[0].secret and user.channels.webhooks[0].secret.startswith("whsec_")
    assert (user.escalation.chain, user.escalation.delay_s) == (list(DEFAULT_CHAIN), DEFAULT_DELAY_S)
    # Timestamps keep the form these routes always answered (isoformat, "+00:00").
    assert put.json()["updated_at"].endswith("+00:00")
    got = (await http.get("/v1/users/ada", headers=admin)).json()
    assert got["channels"]["webhooks"][0]["secret"] is None  # shown once, in the PUT's answer
    assert got["quiet_hours"] == {"start": "22:00:00", "end": "07:00:00"}

    rule = {"kind": "relative_change", "metric": "floor", "pct": 0.2}
    body = {"target": "collection", "entity_key": COLLECTION, "rules": [rule]}
    created = await http.post("/v1/users/ada/subscriptions", json=body, headers=admin)
    assert created.status_code == 201, created.text
    sub = SubscriptionOut.model_validate(created.json())
    assert sub.rules[0].id == "r1" and sub.entity_key == COLLECTION
    listed = SubscriptionList.model_validate(
        (await http.get("/v1/users/ada/subscriptions", headers=admin)).json()
    )
    assert [s.id for s in listed.items] == [sub.id]

    _store_notification(db, "ada", sub.id)
    page = InboxPage.model_validate((await http.get("/v1/users/ada/notifications", headers=admin)).json())
    assert page.unread_count == 1 and page.next_cursor is None
    (item,) = page.items
    assert item.evidence is not None and item.evidence.metric == "floor"
    assert item.title and item.deliveries == {"in_app": "delivered"}
    read = await http.post(f"/v1/users/ada/notifications/{item.id}/read", headers=admin)
    assert NotificationOut.model_validate(read.json()).read_at is not None
    assert (await http.post("/v1/users/ada/notifications/read-all", headers=admin)).json() == {"read": 0}
    archived = (await http.post(f"/v1/users/ada/notifications/{item.id}/archive", headers=admin)).json()
    assert archived["id"] == item.id and archived["archived_at"].endswith("+00:00")


async def test_a_profile_stored_without_escalation_answers_the_defaults(
    api: tuple[FastAPI, httpx.AsyncClient, dict[str, str]], db: Database
) -> None:
    _, http, admin = api
    with db.write() as s:
        s.add(notify_store.NotifyUser(id="bare", updated_at=datetime.now(UTC)))
    got = await http.get("/v1/users/bare", headers=admin)
    assert got.status_code == 200, got.text
    assert got.json()["escalation"] == {
        "chain": list(DEFAULT_CHAIN),
        "delay_s": DEFAULT_DELAY_S,
        "max_repeats": DEFAULT_MAX_REPEATS,
    }


def _store_notification(db: Database, user_id: str, subscription_id: str) -> None:
    """An inbox-only notification as detection stores it: no text yet, rendered when read."""
    now = datetime.now(UTC)
    explanation = {
        "rule_id": "r1",
        "rule_kind": "relative_change",
        "entity_key": COLLECTION,
        "metric": "floor",
        "before": "10",
        "after": "7",
        "at": now.isoformat(),
        "reason": "moved_down",
        "details": {"change_pct": "-0.3"},
    }
    context = {
        "idempotency_key": "ntf_api_models",
        "severity": "warning",
        "timezone": "Europe/Berlin",
        "entity_key": COLLECTION,
        "entity_name": "Collection 0xabab…abab",
        "entity_url": f"http://pulse.test/v1/collections/ethereum/{COLLECTION.rsplit(':', 1)[-1]}",
        "rule": {"id": "r1", "kind": "relative_change", "metric": "floor", "pct": 0.2, "window_s": 3600},
        "metric": "floor",
        "before": "10",
        "after": "7",
        "unit": "number",
        "change_pct": -0.3,
        "data_at": now.isoformat(),
        "detected_at": now.isoformat(),
        "preferences_url": f"http://pulse.test/v1/users/{user_id}",
        "explanation": explanation,
        "subscription_id": subscription_id,
        "locale": "de",
    }
    with db.write() as s:
        row = notify_store.Notification(
            idempotency_key="ntf_api_models",
            user_id=user_id,
            subscription_id=subscription_id,
            rule_id="r1",
            kind="price_movement",
            severity="warning",
            entity_key=COLLECTION,
            inbox_at=now,
            context=context,
            route="now",
            created_at=now,
        )
        s.add(row)
        s.flush()
        notifications.insert_inbox_deliveries(s, [row.id or 0], now)
