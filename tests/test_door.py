"""Validation at the door: every request the fuzzers and hand-made probes found answering 500 (or
accepted and then stalling a shard) is refused with 413/422 naming the field, on SQLite and Postgres."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from nftpulse.api.app import create_app
from nftpulse.api.limits import MAX_BODY_BYTES, MAX_EVENT_BYTES, MAX_OTHER_BODY_BYTES, MAX_STRING_CHARS
from nftpulse.core.settings import Settings
from nftpulse.store import events as event_store
from nftpulse.store import keys
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database

CONTRACT = "0x" + "ab" * 20
A, B = "0x" + "11" * 20, "0x" + "22" * 20
INT64_MAX = 2**63 - 1


@dataclass
class Door:
    http: httpx.AsyncClient
    admin: dict[str, str]
    ingest: dict[str, str]
    user: dict[str, str]


@pytest_asyncio.fixture
async def door(db: Database) -> AsyncIterator[Door]:
    settings = Settings(twilio_auth_token="tw-token", allow_private_webhooks=True)
    app = create_app(settings, db, NoCache(), None)

    def auth(scopes: list[str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys.create(db, scopes[0], scopes)}"}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://pulse.test") as http:
        yield Door(http, auth(["admin"]), auth(["ingest"]), auth(["user:alice"]))


def sale(**over: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "s-1",
        "source": "door",
        "type": "sale",
        "occurred_at": "2026-01-01T00:00:00Z",
        "chain": "ethereum",
        "contract": CONTRACT,
        "token_id": "1",
        "block_number": 1,
        "log_index": 0,
        "data": {"from": A, "to": B, "price": {"amount": "1.5", "currency": "ETH"}},
    }
    event.update(over)
    return event


def fields(resp: httpx.Response) -> set[str]:
    assert resp.status_code == 422, (resp.status_code, resp.text[:500])
    body = resp.json()
    assert body["detail"] and isinstance(body["errors"], list)
    return {e["field"] for e in body["errors"]}


@pytest.mark.parametrize(
    ("over", "field"),
    [
        (
            {"data": {"from": A, "to": B, "price": {"amount": "9" * 10_000, "currency": "ETH"}}},
            "data.price.amount",
        ),
        (
            {"data": {"from": A, "to": B, "price": {"amount": "0." + "1" * 40, "currency": "ETH"}}},
            "data.price.amount",
        ),
        ({"data": {"from": A, "to": B, "price": {"amount": "1e5", "currency": "ETH"}}}, "data.price.amount"),
        (
            {"data": {"from": A, "to": B, "price": {"amount": "\u0661\u0662", "currency": "ETH"}}},
            "data.price.amount",
        ),
        (
            {"data": {"pair": "USDC/ETH", "rate": "9" * 400}, "type": "price_tick", "token_id": None},
            "data.rate",
        ),
        ({"occurred_at": "0001-01-01T00:00:00+01:00"}, "occurred_at"),
        ({"occurred_at": "9999-12-31T23:59:59-01:00"}, "occurred_at"),
        ({"occurred_at": "1969-12-31T23:59:59Z"}, "occurred_at"),
        ({"occurred_at": "2200-01-01T00:00:00Z"}, "occurred_at"),
        ({"block_number": 2**63}, "block_number"),
        ({"log_index": 2**64}, "log_index"),
        ({"log_index": 2**63}, "log_index"),
        ({"block_number": 10**30}, "block_number"),
        ({"token_id": "\u0661"}, "token_id"),  # ARABIC-INDIC DIGIT ONE
        ({"id": "a\x00b"}, "id"),
        (
            {
                "data": {
                    "from": A,
                    "to": B,
                    "price": {"amount": "1", "currency": "ETH"},
                    "note": "x" * (MAX_STRING_CHARS + 1),
                }
            },
            "data.note",
        ),
        (
            {
                "type": "listing",
                "data": {
                    "seller": A,
                    "price": {"amount": "1", "currency": "ETH"},
                    "expires_at": "9999-12-31T23:59:59-05:00",
                },
            },
            "data.expires_at",
        ),
        (
            {
                "type": "social_signal",
                "token_id": None,
                "data": {"platform": "x", "metric": "m", "value": 1e308 * 10},
            },
            "body",
        ),
    ],
)
async def test_out_of_bounds_events_are_refused_naming_the_field(
    door: Door, over: dict[str, Any], field: str
) -> None:
    resp = await door.http.post(
        "/v1/events",
        content=json.dumps(sale(**over)).encode() if "value" not in str(over) else _raw_social(),
        headers=door.ingest | {"content-type": "application/json"},
    )
    assert field in fields(resp)


def _raw_social() -> bytes:
    # 1e400 is not a finite double: a JSON parser that turned it into inf would pass it on.
    return (
        b'{"id": "x", "source": "door", "type": "social_signal", "occurred_at": "2026-01-01T00:00:00Z",'
        b' "chain": "ethereum", "contract": "' + CONTRACT.encode() + b'",'
        b' "data": {"platform": "x", "metric": "m", "value": 1e400}}'
    )


async def test_the_bounds_themselves_are_accepted_and_stored(door: Door, db: Database) -> None:
    edge = [
        sale(id="lo", occurred_at="1970-01-01T00:00:00Z", block_number=INT64_MAX, log_index=INT64_MAX),
        sale(id="hi", occurred_at="2199-12-31T23:59:59.999999Z", block_number=0, log_index=0),
        sale(
            id="big",
            data={"from": A, "to": B, "price": {"amount": "9" * 15 + "." + "9" * 18, "currency": "ETH"}},
        ),
    ]
    resp = await door.http.post("/v1/events", json={"events": edge}, headers=door.ingest)
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == 3
    # Stored as given: log_index is a 64-bit column on Postgres too (it was 32-bit).
    row = event_store.get(db, "door", "lo")
    assert row is not None and (row.block_number, row.log_index) == (INT64_MAX, INT64_MAX)
    back = event_store.to_event(row)
    assert (back.block_number, back.log_index) == (INT64_MAX, INT64_MAX)


async def test_ids_are_nfc_and_readable_whatever_they_hold(door: Door) -> None:
    nfd = unicodedata.normalize("NFD", "café/ü 1")
    assert nfd != unicodedata.normalize("NFC", nfd)
    first = await door.http.post("/v1/events", json=sale(id=nfd), headers=door.ingest)
    again = await door.http.post(
        "/v1/events", json=sale(id=unicodedata.normalize("NFC", nfd)), headers=door.ingest
    )
    assert first.json()["accepted"] == 1 and again.json()["duplicates"] == 1
    for spelling in (nfd, unicodedata.normalize("NFC", nfd)):
        path = "/v1/events/door/" + httpx.URL("/" + spelling).raw_path.decode().lstrip("/")
        got = await door.http.get(path, headers=door.admin)
        assert got.status_code == 200, (spelling, got.text)
        assert got.json()["id"] == unicodedata.normalize("NFC", nfd)


async def test_size_limits(door: Door) -> None:
    huge = sale(
        data={"from": A, "to": B, "price": {"amount": "1", "currency": "ETH"}, "pad": ["x" * 1000] * 100}
    )
    assert len(orjson.dumps(huge)) > MAX_EVENT_BYTES
    assert "events.0" in fields(
        await door.http.post("/v1/events", json={"events": [huge]}, headers=door.ingest)
    )
    body = b"[" + b" " * MAX_BODY_BYTES + b"]"
    too_big = await door.http.post("/v1/events", content=body, headers=door.ingest)
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["errors"][0]["field"] == "body"

    # Without a Content-Length (chunked), the limit holds as the body streams in.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    streamed = await door.http.post("/v1/events", content=chunks(), headers=door.ingest)
    assert streamed.status_code == 413
    other = await door.http.put(
        "/v1/users/alice", content=b" " * (MAX_OTHER_BODY_BYTES + 1), headers=door.user
    )
    assert other.status_code == 413


async def test_the_largest_legitimate_batch_fits() -> None:
    """1,000 events each as large as an ordinary producer sends (traits, a marketplace, a tx hash)."""
    event = sale(
        id="x" * 200,
        source="s" * 100,
        tx_hash="0x" + "f" * 64,
        data={
            "from": A,
            "to": B,
            "price": {"amount": "123456789012345.123456789012345678", "currency": "USDC"},
            "marketplace": "opensea-seaport-1.6",
        },
    )
    body = orjson.dumps({"events": [event] * 1000})
    assert len(body) < MAX_BODY_BYTES // 5


@pytest.mark.parametrize("bad", ["³", "99999999999999999999", str(2**63), "-1", "1.0", " 1", "\u0663"])
async def test_ids_cursors_and_offsets_parse_strictly(door: Door, bad: str) -> None:
    http, admin = door.http, door.admin
    assert "notification_id" in fields(
        await http.post(f"/v1/users/alice/notifications/{bad}/read", headers=admin)
    )
    assert "notification_id" in fields(
        await http.post(f"/v1/users/alice/notifications/{bad}/archive", headers=admin)
    )
    assert "cursor" in fields(
        await http.get("/v1/users/alice/notifications", params={"cursor": bad}, headers=admin)
    )
    if bad == bad.strip():  # HTTP trims header values
        stream = await http.get(
            "/v1/users/alice/notifications/stream", headers=admin | {"Last-Event-ID": bad.encode()}
        )
        assert "Last-Event-ID" in fields(stream)
    assert "limit" in fields(
        await http.get("/v1/users/alice/notifications", params={"limit": bad}, headers=admin)
    )
    assert "offset" in fields(await http.get("/v1/ops/failures", params={"offset": bad}, headers=admin))


@pytest.mark.parametrize("bad", [2**63, 10**20, -1, "³", 1.5])
async def test_ops_failure_ids_are_int64(door: Door, bad: Any) -> None:
    for name in ("seqs", "notification_ids"):
        body = {"action": "cancel", name: [bad]}
        assert any(
            f.startswith(name)
            for f in fields(await door.http.post("/v1/ops/failures", json=body, headers=door.admin))
        )


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        (b'{"kind": "relative_change", "metric": "floor", "pct": Infinity}', "rules.0.pct"),
        (b'{"kind": "relative_change", "metric": "floor", "pct": NaN}', "rules.0.pct"),
        (b'{"kind": "relative_change", "metric": "floor", "pct": 1e308}', "rules.0.pct"),
        (b'{"kind": "relative_change", "metric": "floor", "window_s": 1e308}', "rules.0.window_s"),
        (b'{"kind": "anomaly", "metric": "floor", "z": -Infinity}', "rules.0.z"),
        (b'{"kind": "threshold", "metric": "trust", "level": "Infinity"}', "rules.0.level"),
        (b'{"kind": "threshold", "metric": "trust", "level": "1e999999"}', "rules.0.level"),
        (b'{"kind": "threshold", "metric": "trust", "cooldown_s": 1e300}', "rules.0.cooldown_s"),
    ],
)
async def test_rule_parameters_are_finite_and_bounded(door: Door, rule: bytes, field: str) -> None:
    await door.http.put("/v1/users/alice", json={}, headers=door.user)
    body = (
        b'{"target": "collection", "entity_key": "collection:ethereum:'
        + CONTRACT.encode()
        + b'", "rules": ['
        + rule
        + b"]}"
    )
    resp = await door.http.post(
        "/v1/users/alice/subscriptions",
        content=body,
        headers=door.user | {"content-type": "application/json"},
    )
    assert field in fields(resp)


async def test_twilio_callback_refuses_a_body_that_is_not_utf8(door: Door) -> None:
    resp = await door.http.post(
        "/v1/callbacks/twilio",
        content=b"MessageSid=\xff\xfe&MessageStatus=delivered",
        headers={"content-type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"},
    )
    assert 400 <= resp.status_code < 500, resp.text


async def test_metric_labels_name_known_sources_only(door: Door) -> None:
    """Producers choose `source`: 3,000 of them must not make 3,000 label values. Sources outside
    PULSE_METRIC_SOURCES (and PULSE_SOURCE_SECRETS) are counted as `other`."""
    from prometheus_client import REGISTRY

    def series(source: str) -> float:
        value = REGISTRY.get_sample_value(
            "pulse_events_ingested_total", {"source": source, "type": "sale", "outcome": "accepted"}
        )
        return value or 0.0

    other_before, chain_before = series("other"), series("chain")
    batch = [sale(id=f"m-{i}", source=f"producer-{i}", log_index=i) for i in range(30)]
    batch.append(sale(id="m-chain", source="chain", log_index=99))
    resp = await door.http.post("/v1/events", json={"events": batch}, headers=door.ingest)
    assert resp.status_code == 202 and resp.json()["accepted"] == 31
    assert series("other") == other_before + 30
    assert series("chain") == chain_before + 1
    assert all(series(f"producer-{i}") == 0.0 for i in range(30))
