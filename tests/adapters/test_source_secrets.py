"""Source secrets created by an admin (``POST /v1/sources/{name}/secrets``): a producer signs with one
(signed here by the ``standardwebhooks`` package), rotates to a second while the first still works, and
a revoked secret is refused with 401; configured secrets (PULSE_SOURCE_SECRETS) keep working beside them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest_asyncio
from standardwebhooks.webhooks import Webhook

from nftpulse.api.app import create_app
from nftpulse.core.settings import Settings
from nftpulse.store import events as event_log
from nftpulse.store import keys
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database

CONFIGURED = "whsec_Y29uZmlndXJlZC1zZWNyZXQtYnl0ZXMhIQ=="
BAYC = "0xbc4ca0eda7647a8ab7c2061c2e118a18a936f13d"


@pytest_asyncio.fixture
async def api(db: Database) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, dict[str, str]]]]:
    app = create_app(Settings(source_secrets=f"scanner={CONFIGURED}"), db, NoCache(), None)
    auth = {
        scope: {"Authorization": f"Bearer {keys.create(db, scope, [scope])}"}
        for scope in ("admin", "ingest", "read")
    }
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://pulse.test"
    ) as client:
        yield client, auth


def finding(n: int, source: str = "fraudwatch") -> dict[str, Any]:
    return {
        "id": f"finding-{n}",
        "source": source,
        "type": "fraud_finding",
        "occurred_at": "2026-11-27T08:00:00Z",
        "chain": "ethereum",
        "contract": BAYC,
        "data": {"finding_id": f"f-{n}", "kind": "wash_trading", "severity": "high"},
    }


def signed(body: bytes, secret: str, msg_id: str = "msg_1") -> dict[str, str]:
    stamp = datetime.fromtimestamp(time.time(), tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, stamp, body.decode()),
        "Content-Type": "application/json",
    }


async def test_create_sign_rotate_revoke(
    api: tuple[httpx.AsyncClient, dict[str, dict[str, str]]], db: Database
) -> None:
    http, auth = api
    body = orjson.dumps(finding(1))
    # Before any secret exists the source is refused.
    refused = await http.post("/v1/sources/fraudwatch", content=body, headers=signed(body, CONFIGURED))
    assert refused.status_code == 401 and "no secret is configured" in refused.json()["detail"]

    first = await http.post("/v1/sources/fraudwatch/secrets", headers=auth["admin"])
    assert first.status_code == 201, first.text
    one = first.json()
    assert one["source"] == "fraudwatch" and one["secret"].startswith("whsec_")
    accepted = await http.post("/v1/sources/fraudwatch", content=body, headers=signed(body, one["secret"]))
    assert accepted.status_code == 202 and accepted.json()["accepted"] == 1, accepted.text

    # Rotation: a second secret; both verify until the first is revoked.
    two = (await http.post("/v1/sources/fraudwatch/secrets", headers=auth["admin"])).json()
    assert two["secret"] != one["secret"] and two["id"] != one["id"]
    for n, secret in ((2, one["secret"]), (3, two["secret"])):
        raw = orjson.dumps(finding(n))
        answer = await http.post("/v1/sources/fraudwatch", content=raw, headers=signed(raw, secret))
        assert answer.status_code == 202 and answer.json()["accepted"] == 1, answer.text

    listed = await http.get("/v1/sources", headers=auth["admin"])
    assert listed.status_code == 200
    items = {item["name"]: item for item in listed.json()["items"]}
    assert set(items) == {"fraudwatch", "scanner"}
    assert [s["id"] for s in items["fraudwatch"]["secrets"]] == [one["id"], two["id"]]
    assert items["scanner"] == {"name": "scanner", "configured": True, "secrets": [], "created_at": None}
    assert "whsec_" not in listed.text, "a listing never shows a secret"

    revoked = await http.delete(f"/v1/sources/fraudwatch/secrets/{one['id']}", headers=auth["admin"])
    assert revoked.status_code == 204
    raw = orjson.dumps(finding(4))
    old = await http.post("/v1/sources/fraudwatch", content=raw, headers=signed(raw, one["secret"]))
    assert old.status_code == 401 and "no signature matches" in old.json()["detail"]
    new = await http.post("/v1/sources/fraudwatch", content=raw, headers=signed(raw, two["secret"]))
    assert new.status_code == 202 and new.json()["accepted"] == 1

    again = await http.delete(f"/v1/sources/fraudwatch/secrets/{one['id']}", headers=auth["admin"])
    assert again.status_code == 404
    gone = await http.delete(f"/v1/sources/fraudwatch/secrets/{two['id']}", headers=auth["admin"])
    assert gone.status_code == 204
    raw = orjson.dumps(finding(5))
    last = await http.post("/v1/sources/fraudwatch", content=raw, headers=signed(raw, two["secret"]))
    assert last.status_code == 401
    assert {f"finding-{n}" for n in (1, 2, 3, 4)} == {
        f"finding-{n}" for n in range(1, 6) if event_log.get(db, "fraudwatch", f"finding-{n}") is not None
    }


async def test_configured_and_stored_secrets_both_verify(
    api: tuple[httpx.AsyncClient, dict[str, dict[str, str]]],
) -> None:
    http, auth = api
    stored = (await http.post("/v1/sources/scanner/secrets", headers=auth["admin"])).json()["secret"]
    for n, secret in ((1, CONFIGURED), (2, stored)):
        raw = orjson.dumps(finding(n, "scanner"))
        answer = await http.post("/v1/sources/scanner", content=raw, headers=signed(raw, secret))
        assert answer.status_code == 202 and answer.json()["accepted"] == 1, answer.text


async def test_only_admins_manage_secrets_and_bad_names_are_422(
    api: tuple[httpx.AsyncClient, dict[str, dict[str, str]]],
) -> None:
    http, auth = api
    for scope in ("ingest", "read"):
        assert (await http.post("/v1/sources/x/secrets", headers=auth[scope])).status_code == 403
        assert (await http.get("/v1/sources", headers=auth[scope])).status_code == 403
        assert (await http.delete("/v1/sources/x/secrets/1", headers=auth[scope])).status_code == 403
    assert (await http.post("/v1/sources/x/secrets")).status_code == 401
    alchemy = await http.post("/v1/sources/alchemy/secrets", headers=auth["admin"])
    assert alchemy.status_code == 422 and "PULSE_ALCHEMY_SIGNING_KEY" in alchemy.text
    bad = await http.post("/v1/sources/bad%20name/secrets", headers=auth["admin"])
    assert bad.status_code == 422 and "name" in bad.text
    not_an_id = await http.delete("/v1/sources/x/secrets/%C2%B3", headers=auth["admin"])
    assert not_an_id.status_code == 422 and "secret_id" in not_an_id.text
