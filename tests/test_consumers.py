"""Consumers on real parts (the Temporal dev server, SQLite and Postgres, a local HTTP receiver that
verifies every delivery with the ``standardwebhooks`` package): a fraud finding that changes an NFT's
trust reaches each consumer whose filters it matches, once; a 500 is retried on the schedule with the same
webhook-id while other entities go on and the entity's later change waits; a 410 disables the consumer;
a replay from a cursor delivers again; URLs are held to the SSRF rules; only admin keys reach any of it."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from standardwebhooks.webhooks import Webhook
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from nftpulse.activities.consumers import ConsumerActivities
from nftpulse.activities.contracts.consumers import CONSUMER_WORKFLOW, ConsumerInput, consumer_workflow_id
from nftpulse.channels.webhook import RETRY_SCHEDULE, WebhookChannel, WebhookConfig
from nftpulse.core.delivery import generate_webhook_secret
from nftpulse.domain.changes import MetricChange
from nftpulse.store import changes as changelog
from nftpulse.store import consumers as consumer_store
from nftpulse.store import schema
from nftpulse.store.changes import LoggedChange
from nftpulse.store.db import Database
from nftpulse.store.models import ConsumerRecord
from nftpulse.workflows.consumers import ConsumerWorkflow
from tests.conftest import RunningPulse, local_http_server, replay_under_sandbox, run_pulse
from tests.notify.conftest import Receiver, Recorded, _handler

CONTRACT = "0x" + "c0" * 20
NFT = f"nft:ethereum:{CONTRACT}"
A = "0x" + "a1" * 20
B = "0x" + "b2" * 20
ZERO = "0x" + "0" * 40
SOURCE = "consumers"

_n = iter(range(100_000))


def _ev(kind: str, token: str, data: dict[str, Any]) -> dict[str, Any]:
    n = next(_n)
    return {
        "id": f"{kind}-{token}-{n}",
        "source": SOURCE,
        "type": kind,
        "occurred_at": (datetime(2026, 11, 3, 8, tzinfo=UTC) + timedelta(minutes=n)).isoformat(),
        "chain": "ethereum",
        "contract": CONTRACT,
        "token_id": token,
        "data": data,
    }


def _finding(token: str, severity: str = "low") -> dict[str, Any]:
    finding = {
        "finding_id": f"F{next(_n)}",
        "kind": "stolen_asset",
        "severity": severity,
        "wallets": [A],
        "detector": "consumer-test",
    }
    return _ev("fraud_finding", token, finding)


async def _post(pulse: RunningPulse, *events: dict[str, Any]) -> None:
    resp = await pulse.post(list(events))
    assert resp.status_code == 202, resp.text
    final = await pulse.wait_final([(SOURCE, e["id"]) for e in events])
    assert set(final.values()) == {"processed"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(url="")
    with local_http_server(_handler(rec)) as url:
        rec.url = url
        yield rec


@pytest_asyncio.fixture
async def pulse(database_url: str, temporal_client: Client) -> AsyncIterator[RunningPulse]:
    """Pulse that lets webhook URLs point at loopback, as the local receiver needs."""
    async with run_pulse(database_url, temporal_client, allow_private_webhooks=True) as running:
        yield running


async def _create(pulse: RunningPulse, **body: Any) -> dict[str, Any]:
    resp = await pulse.http.post("/v1/consumers", json=body, headers=pulse.keys.auth("admin"))
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _at(receiver: Receiver, path: str) -> list[Recorded]:
    return [r for r in receiver.requests if r.path == path]


async def _until(check: Callable[[], bool], limit_s: float = 30.0, what: str = "") -> None:
    async with asyncio.timeout(limit_s):
        while not check():  # noqa: ASYNC110 - the receiver runs in a thread and offers no event to wait on
            await asyncio.sleep(0.1)


def _verified(secret: str, rec: Recorded) -> dict[str, Any]:
    """The message, after ``standardwebhooks`` checked its signature and timestamp."""
    payload: dict[str, Any] = Webhook(secret).verify(rec.body, rec.headers)
    return payload


async def _deliveries(pulse: RunningPulse, consumer_id: str) -> list[dict[str, Any]]:
    resp = await pulse.http.get(f"/v1/consumers/{consumer_id}/deliveries", headers=pulse.keys.auth("admin"))
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]  # type: ignore[no-any-return]


async def _settled(pulse: RunningPulse, consumer_id: str) -> list[dict[str, Any]]:
    """The delivery log once nothing in it is pending (the receiver sees a request before its answer is
    recorded)."""
    async with asyncio.timeout(15):
        while True:
            log = await _deliveries(pulse, consumer_id)
            if all(row["status"] != "pending" for row in log):
                return log
            await asyncio.sleep(0.1)


async def test_changes_reach_matching_consumers_once_in_order_with_retries_410_and_replay(
    pulse: RunningPulse, receiver: Receiver
) -> None:
    await _post(pulse, _ev("mint", "1", {"from": ZERO, "to": A}), _ev("mint", "2", {"from": ZERO, "to": A}))

    # /trust: every NFT of the collection, trust only. /two: token 2 only. /sales: changes caused by sales.
    trust = await _create(pulse, url=receiver.url + "/trust", prefixes=[f"{NFT}:"], metrics=["trust"])
    two = await _create(pulse, url=receiver.url + "/two", keys=[f"{NFT}:2"])
    sales = await _create(pulse, url=receiver.url + "/sales", prefixes=[f"{NFT}:"], event_types=["sale"])
    assert trust["secret"].startswith("whsec_") and trust["status"] == "active"
    got = await pulse.http.get(f"/v1/consumers/{trust['id']}", headers=pulse.keys.auth("admin"))
    assert got.status_code == 200 and "secret" not in got.json()
    assert got.json()["prefixes"] == [f"{NFT}:"]

    # One finding on token 1 moves the collection's trust, and with it every token's.
    await _post(pulse, _finding("1"))
    await _until(lambda: len(_at(receiver, "/trust")) == 2)
    seen = {
        m["data"]["entity_key"]: (m, r)
        for r in _at(receiver, "/trust")
        for m in [_verified(trust["secret"], r)]
    }
    assert set(seen) == {f"{NFT}:1", f"{NFT}:2"}
    message, first = seen[f"{NFT}:1"]
    assert message["type"] == "entity.changed"
    data = message["data"]
    assert set(data["changes"]) == {"trust"}  # only the metric asked for
    assert data["changes"]["trust"]["after"] < data["changes"]["trust"]["before"]
    assert any(cause.startswith(f"{SOURCE}/fraud_finding-1-") for cause in data["causes"])
    assert first.headers["webhook-id"] == f"msg_consumer_{trust['id']}_{data['cursor']}"
    first_cursor = min(int(m["data"]["cursor"]) for m, _ in seen.values())

    # A retry after a 500, on the schedule (5 s), with the same webhook-id; meanwhile token 2's changes
    # go out, and token 1's next change waits until the refused one got through.
    refused: list[str] = []
    back: list[bool] = []

    def respond(rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        body = rec.json()
        if rec.path == "/trust" and body["data"]["entity_key"] == f"{NFT}:1" and not refused:
            refused.append(rec.headers["webhook-id"])
            return 500, {}, b"busy"
        if rec.path == "/gone" and not back:
            return 410, {}, b"gone"
        return 200, {}, b"{}"

    receiver.respond = respond
    await _post(pulse, _finding("1"))
    await _until(lambda: bool(refused))
    await _post(pulse, _finding("2"))
    # 2 + 2 + 2 changes, one of them sent twice.
    await _until(lambda: len(_at(receiver, "/trust")) == 7, limit_s=45)
    trust_seen = [
        (_verified(trust["secret"], r)["data"], r.headers["webhook-id"]) for r in _at(receiver, "/trust")
    ]
    ids_in_order = [w for _, w in trust_seen]
    first_try, retry = (i for i, w in enumerate(ids_in_order) if w == refused[0])
    token1 = [(i, int(d["cursor"])) for i, (d, _) in enumerate(trust_seen) if d["entity_key"] == f"{NFT}:1"]
    token2 = [(i, int(d["cursor"])) for i, (d, _) in enumerate(trust_seen) if d["entity_key"] == f"{NFT}:2"]
    # Ordered per entity: each token's changes arrive in cursor order; token 1's last change only after
    # the retry of the refused one got through.
    assert [c for _, c in token1] == sorted(c for _, c in token1)
    assert [c for _, c in token2] == sorted(c for _, c in token2) and len(token2) == 3
    assert token1[-1][0] > retry > first_try
    # Token 2 did not wait for token 1's retry: its change from the second finding arrived before it.
    assert token2[-1][0] < retry, ids_in_order

    log = await _settled(pulse, trust["id"])
    by_id = {row["webhook_id"]: row for row in log}
    retried = by_id[refused[0]]
    assert retried["status"] == "delivered" and retried["attempts"] == 2 and retried["response_code"] == 200
    assert int(retried["cursor"]) > first_cursor
    assert {row["status"] for row in log} == {"delivered"} and len(log) == 6
    assert {row["attempts"] for row in log if row is not retried} == {1}

    # Exactly once: nothing further arrives for what was delivered.
    await asyncio.sleep(2)
    counted = [r.headers["webhook-id"] for r in _at(receiver, "/trust")]
    assert len(counted) == 7 and len(set(counted)) == 6

    # Filters: /two saw token 2's changes only, each once; nothing was sold yet, so /sales saw nothing.
    two_seen = [_verified(two["secret"], r)["data"] for r in _at(receiver, "/two")]
    assert len(two_seen) == 3 and {d["entity_key"] for d in two_seen} == {f"{NFT}:2"}
    assert len({d["cursor"] for d in two_seen}) == 3
    assert not _at(receiver, "/sales")
    sale = _ev("sale", "2", {"from": A, "to": B, "price": {"amount": "1.5", "currency": "ETH"}})
    await _post(pulse, sale)
    await _until(
        lambda: any(
            _verified(sales["secret"], r)["data"]["entity_key"] == f"{NFT}:2" for r in _at(receiver, "/sales")
        )
    )
    for r in _at(receiver, "/sales"):
        assert f"{SOURCE}/{sale['id']}" in _verified(sales["secret"], r)["data"]["causes"]

    # Replay from a cursor: the changes after it, again, under their webhook-ids, as generation 1.
    await asyncio.sleep(1)
    live = {r.headers["webhook-id"] for r in _at(receiver, "/trust")}
    before = len(_at(receiver, "/trust"))
    resp = await pulse.http.post(
        f"/v1/consumers/{trust['id']}/replay",
        json={"from_cursor": str(first_cursor - 1)},
        headers=pulse.keys.auth("admin"),
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["generation"] == 1
    await _until(lambda: len(_at(receiver, "/trust")) >= before + len(live))
    await asyncio.sleep(1)
    replayed = [r.headers["webhook-id"] for r in _at(receiver, "/trust")[before:]]
    assert sorted(replayed) == sorted(live)
    log = await _deliveries(pulse, trust["id"])
    assert {row["generation"] for row in log} == {0, 1}
    old = await pulse.http.post(
        f"/v1/consumers/{trust['id']}/replay",
        json={"from_cursor": "99999999"},
        headers=pulse.keys.auth("admin"),
    )
    assert old.status_code == 422 and old.json()["errors"][0]["field"] == "from_cursor"

    # 410 Gone disables the consumer: GET shows it, the log records the answer, nothing more is sent.
    gone = await _create(pulse, url=receiver.url + "/gone", prefixes=[f"{NFT}:"])
    await _post(pulse, _finding("2"))
    await _until(lambda: bool(_at(receiver, "/gone")))
    status: dict[str, Any] = {}

    async def disabled() -> bool:
        resp = await pulse.http.get(f"/v1/consumers/{gone['id']}", headers=pulse.keys.auth("admin"))
        status.update(resp.json())
        return status["status"] == "disabled"

    async with asyncio.timeout(15):
        while not await disabled():  # noqa: ASYNC110 - polled over HTTP, as a client would
            await asyncio.sleep(0.2)
    assert "410" in status["disabled_reason"]
    gone_log = await _settled(pulse, gone["id"])
    assert "gone" in {row["status"] for row in gone_log}
    assert {row["status"] for row in gone_log} == {"gone"}
    assert 410 in {row["response_code"] for row in gone_log}
    handle = pulse.client.get_workflow_handle(
        consumer_workflow_id(pulse.settings.workflow_id_prefix, gone["id"])
    )
    assert (await handle.result())["reason"] == "disabled"
    sent = len(_at(receiver, "/gone"))
    await _post(pulse, _finding("1"))
    await asyncio.sleep(1)
    assert len(_at(receiver, "/gone")) == sent
    # The endpoint is back: a replay enables the consumer again and sends what it missed.
    back.append(True)
    gone_from = min(int(row["cursor"]) for row in gone_log) - 1
    resp = await pulse.http.post(
        f"/v1/consumers/{gone['id']}/replay",
        json={"from_cursor": str(gone_from)},
        headers=pulse.keys.auth("admin"),
    )
    assert resp.status_code == 202, resp.text
    with pulse.db.read() as session:
        missed = {str(c.cursor) for c in changelog.after(session, gone_from, prefixes=[f"{NFT}:"])}
    assert len(missed) >= 3  # both tokens' changes it refused, token 1's since

    def cursors() -> set[str]:
        return {_verified(gone["secret"], r)["data"]["cursor"] for r in _at(receiver, "/gone")[sent:]}

    await _until(lambda: cursors() == missed)
    resumed = await pulse.http.get(f"/v1/consumers/{gone['id']}", headers=pulse.keys.auth("admin"))
    assert resumed.json()["status"] == "active" and resumed.json()["disabled_reason"] is None

    # Delete: gone from the list, the runner ends.
    resp = await pulse.http.delete(f"/v1/consumers/{two['id']}", headers=pulse.keys.auth("admin"))
    assert resp.status_code == 204
    listed = await pulse.http.get("/v1/consumers", headers=pulse.keys.auth("admin"))
    assert two["id"] not in {c["id"] for c in listed.json()["items"]}
    assert (
        await pulse.http.get(f"/v1/consumers/{two['id']}", headers=pulse.keys.auth("admin"))
    ).status_code == 404

    # The runners' histories (retries, a replay, a 410, a cancel) replay under the sandbox: deterministic.
    replayed = await replay_under_sandbox(pulse.client, pulse.task_queue)
    assert consumer_workflow_id(pulse.settings.workflow_id_prefix, gone["id"]) in replayed


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_runner_continues_as_new_with_its_queue_and_retry_timers(
    pulse: RunningPulse, receiver: Receiver
) -> None:
    """A runner whose history grows past its limit carries its cursor, queued deliveries and a waiting
    retry into the next run: everything arrives, once (the refused one twice), in order per entity."""
    await _post(pulse, _ev("mint", "1", {"from": ZERO, "to": A}), _ev("mint", "2", {"from": ZERO, "to": A}))
    with pulse.db.write() as session:
        row = consumer_store.create(
            session,
            url=receiver.url + "/can",
            secret=generate_webhook_secret(),
            keys=[],
            prefixes=[f"{NFT}:"],
            metrics=["trust"],
            event_types=[],
            now=datetime.now(UTC),
        )
        consumer_id, secret, start = row.id, row.secret, row.cursor
    refused: list[str] = []

    def respond(rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        if not refused:
            refused.append(rec.headers["webhook-id"])
            return 503, {}, b"later"
        return 200, {}, b"{}"

    receiver.respond = respond
    handle = await pulse.client.start_workflow(
        CONSUMER_WORKFLOW,
        ConsumerInput(consumer_id, history_limit=30),
        id=consumer_workflow_id(pulse.settings.workflow_id_prefix, consumer_id),
        task_queue=pulse.task_queue,
    )
    for _ in range(4):
        await _post(pulse, _finding("1"))
    with pulse.db.read() as session:
        expected = {str(c.cursor) for c in changelog.after(session, start, prefixes=[f"{NFT}:"])}
    assert len(expected) >= 5

    def arrived() -> list[dict[str, Any]]:
        return [_verified(secret, r)["data"] for r in _at(receiver, "/can")]

    await _until(lambda: {d["cursor"] for d in arrived()} == expected, limit_s=60)
    await asyncio.sleep(1)
    ids = [r.headers["webhook-id"] for r in _at(receiver, "/can")]
    assert len(ids) == len(expected) + 1 and ids.count(refused[0]) == 2
    for key in {d["entity_key"] for d in arrived()}:
        cursors = [int(d["cursor"]) for d in arrived() if d["entity_key"] == key]
        assert cursors == sorted(cursors), (key, cursors)
    runs = [e async for e in pulse.client.list_workflows(f"WorkflowId = '{handle.id}'")]
    assert len(runs) >= 2, "the runner never continued as new"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_replay_revives_a_runner_still_finishing_after_a_410(
    pulse: RunningPulse, receiver: Receiver
) -> None:
    """A 410 on one token while another token's delivery is still in flight: the run waits for it, and a
    replay arriving meanwhile revives that same run, which sends the changes again."""
    await _post(pulse, _ev("mint", "1", {"from": ZERO, "to": A}), _ev("mint", "2", {"from": ZERO, "to": A}))
    back: list[bool] = []
    held: list[str] = []

    def respond(rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        if back:
            return 200, {}, b""
        if rec.json()["data"]["entity_key"] == f"{NFT}:1":
            return 410, {}, b""
        held.append(rec.headers["webhook-id"])
        time.sleep(4)  # token 2's delivery stays in flight meanwhile
        return 200, {}, b""

    receiver.respond = respond
    consumer = await _create(pulse, url=receiver.url + "/r", prefixes=[f"{NFT}:"], metrics=["trust"])
    handle = pulse.client.get_workflow_handle(
        consumer_workflow_id(pulse.settings.workflow_id_prefix, consumer["id"])
    )
    first_run = (await handle.describe()).run_id
    await _post(pulse, _finding("1"))
    admin = pulse.keys.auth("admin")
    url = f"/v1/consumers/{consumer['id']}"
    async with asyncio.timeout(15):
        while (await pulse.http.get(url, headers=admin)).json()["status"] != "disabled":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert held, "token 2's delivery is not in flight"
    back.append(True)
    resp = await pulse.http.post(
        f"/v1/consumers/{consumer['id']}/replay", json={"from_cursor": consumer["cursor"]}, headers=admin
    )
    assert resp.status_code == 202, resp.text
    await _until(lambda: len(_at(receiver, "/r")) >= 4)
    again = [_verified(consumer["secret"], r)["data"]["entity_key"] for r in _at(receiver, "/r")[2:]]
    assert sorted(again) == [f"{NFT}:1", f"{NFT}:2"]
    described = await handle.describe()
    assert described.run_id == first_run and described.status == WorkflowExecutionStatus.RUNNING
    got = (await pulse.http.get(f"/v1/consumers/{consumer['id']}", headers=admin)).json()
    assert got["status"] == "active"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_consumer_stored_without_a_runner_gets_one_when_a_worker_starts(
    database_url: str, temporal_client: Client, receiver: Receiver
) -> None:
    """Created while Temporal was away (the API stores it and answers 201): the next worker starts it."""
    db = Database(database_url)
    schema.upgrade(db)
    with db.write() as session:
        row = consumer_store.create(
            session,
            url=receiver.url + "/late",
            secret=generate_webhook_secret(),
            keys=[],
            prefixes=[f"{NFT}:"],
            metrics=[],
            event_types=[],
            now=datetime.now(UTC),
        )
        consumer_id = row.id
    db.dispose()
    async with run_pulse(database_url, temporal_client, allow_private_webhooks=True) as pulse:
        await _post(pulse, _ev("mint", "5", {"from": ZERO, "to": A}))
        await _until(lambda: bool(_at(receiver, "/late")))
        handle = pulse.client.get_workflow_handle(
            consumer_workflow_id(pulse.settings.workflow_id_prefix, consumer_id)
        )
        assert (await handle.describe()).workflow_type == CONSUMER_WORKFLOW


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_ssrf_validation_and_admin_only(database_url: str, temporal_client: Client) -> None:
    async with run_pulse(database_url, temporal_client, worker=False, dispatcher=False) as pulse:
        admin = pulse.keys.auth("admin")
        for url in (
            "http://127.0.0.1:9/hook",
            "https://127.0.0.1/hook",
            "https://10.0.0.1/x",
            "https://[::1]/",
        ):
            resp = await pulse.http.post("/v1/consumers", json={"url": url}, headers=admin)
            assert resp.status_code == 422, (url, resp.text)
            assert resp.json()["errors"][0]["field"] == "url"
        resp = await pulse.http.post(
            "/v1/consumers",
            json={"url": "https://127.0.0.1/", "prefixes": ["contract:x"], "secret": "whsec_" + "A" * 17},
            headers=admin,
        )
        assert resp.status_code == 422
        fields = {e["field"] for e in resp.json()["errors"]}
        assert {"url", "prefixes.0", "secret"} <= fields, fields
        unknown = await pulse.http.post(
            "/v1/consumers", json={"url": "https://x.test/", "nope": 1}, headers=admin
        )
        assert unknown.status_code == 422
        for caller in ("read", "ingest"):
            for method, path in (("GET", "/v1/consumers"), ("POST", "/v1/consumers")):
                resp = await pulse.http.request(
                    method, path, headers=pulse.keys.auth(caller), json={"url": "x"}
                )
                assert resp.status_code == 403, (caller, method, resp.text)
        assert (await pulse.http.get("/v1/consumers")).status_code == 401


def _change(cursor: int, key: str = f"{NFT}:1") -> LoggedChange:
    return LoggedChange(cursor, key, 1, {"trust": [90, 80]}, [], datetime.now(UTC))


def test_reading_stops_at_a_missing_cursor_until_it_settles() -> None:
    """Postgres hands out ids before commit: a lower one may show up after a higher one."""
    now = datetime.now(UTC)
    rows = [_change(11), _change(12), _change(14)]
    taken, gap, since = consumer_store._contiguous(rows, 10, None, None, now)
    assert [r.cursor for r in taken] == [11, 12] and gap == 13 and since == now
    # Still missing a moment later: still waiting, since the first sighting.
    taken, gap2, since2 = consumer_store._contiguous(rows[2:], 12, gap, since, now + timedelta(seconds=1))
    assert taken == [] and gap2 == 13 and since2 == now
    # Missing for longer than the settle time: a rolled-back transaction; passed over.
    later = now + timedelta(seconds=consumer_store.SETTLE_S)
    taken, gap3, _ = consumer_store._contiguous(rows[2:], 12, gap, since, later)
    assert [r.cursor for r in taken] == [14] and gap3 is None


def test_filters() -> None:
    consumer = ConsumerRecord(
        id="con_0",
        url="https://x",
        secret="whsec_x",
        keys=[f"{NFT}:7"],
        prefixes=["collection:"],
        metrics=["trust"],
        event_types=["sale"],
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
    )
    sale = LoggedChange(1, f"{NFT}:7", 1, {"trust": [1, 2]}, ["s/1"], datetime.now(UTC))
    assert consumer_store.wants(consumer, sale, {"s/1": "sale"})
    assert not consumer_store.wants(consumer, sale, {"s/1": "transfer"})
    assert not consumer_store.wants(consumer, _change(2, f"{NFT}:8"), {})
    owner = LoggedChange(3, "collection:ethereum:0x1", 1, {"owner": [A, B]}, ["s/1"], datetime.now(UTC))
    assert not consumer_store.wants(consumer, owner, {"s/1": "sale"})


def _test_server() -> str | None:
    found = Path(sys.executable).parent / "temporal-test-server"
    return str(found) if found.exists() else shutil.which("temporal-test-server")


@pytest.mark.skipif(_test_server() is None, reason="temporal-test-server not installed")
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_change_the_endpoint_keeps_refusing_is_retried_on_the_schedule_then_given_up(
    db: Database, receiver: Receiver
) -> None:
    """The time-skipping server runs the whole schedule (5 s … 10 h, about 33 hours) in seconds: eight
    attempts under one webhook-id, the workflow's timers exactly the webhook schedule, then ``failed``, and
    the entity's next change is delivered after it."""
    statuses = iter([500] * 8 + [200] * 10)
    receiver.respond = lambda _rec: (next(statuses), {}, b"")
    now = datetime.now(UTC)
    with db.write() as session:
        row = consumer_store.create(
            session,
            url=receiver.url + "/hook",
            secret=generate_webhook_secret(),
            keys=[f"{NFT}:1"],
            prefixes=[],
            metrics=[],
            event_types=[],
            now=now,
        )
        consumer_id = row.id
        for trust in (80.0, 70.0):
            changelog.append(session, [MetricChange(f"{NFT}:1", "trust", trust + 10, trust)], {}, {}, now)
    channel = WebhookChannel(WebhookConfig(allow_private=True))
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=_test_server())
    queue = f"consumer-retries-{uuid.uuid4().hex[:8]}"
    activities = ConsumerActivities(db, channel, timedelta(days=3))
    try:
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[ConsumerWorkflow],
            activities=[activities.read_changes, activities.deliver_change],
        ):
            handle = await env.client.start_workflow(
                CONSUMER_WORKFLOW,
                # No long poll (a running activity holds skipping back): an hour's timer between reads.
                ConsumerInput(consumer_id, read_wait_s=0.0, idle_s=3600.0),
                id=f"consumer/{consumer_id}",
                task_queue=queue,
            )
            async with asyncio.timeout(120):
                while len(receiver.requests) < 9:
                    await env.sleep(timedelta(hours=1))
            history = await handle.fetch_history()
            await handle.cancel()
    finally:
        await env.shutdown()
        await channel.aclose()
    first, *retries, after = receiver.requests
    assert {r.headers["webhook-id"] for r in retries} == {first.headers["webhook-id"]} and len(retries) == 7
    assert after.headers["webhook-id"] != first.headers["webhook-id"]
    timers = [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds()
        for e in history.events
        if e.HasField("timer_started_event_attributes")
    ]
    retry_timers = [t for t in timers if t != 3600.0]  # the rest: the idle timer between reads
    assert retry_timers == list(RETRY_SCHEDULE), timers
    with db.read() as session:
        log = consumer_store.deliveries(session, consumer_id, limit=10)
    assert [(r.status, r.attempts, r.response_code) for r in log] == [
        ("delivered", 1, 200),
        ("failed", 8, 500),
    ]


def test_a_read_behind_the_retention_resumes_at_what_is_kept_and_says_so(db: Database) -> None:
    now = datetime.now(UTC)
    with db.write() as session:
        consumer_id = consumer_store.create(
            session,
            url="https://hooks.example.com/",
            secret=generate_webhook_secret(),
            keys=[],
            prefixes=[],
            metrics=[],
            event_types=[],
            now=now,
        ).id
        for i in range(3):
            changelog.append(session, [MetricChange(f"{NFT}:{i}", "trust", 1.0, 2.0)], {}, {}, now)
    with db.write() as session:
        assert changelog.prune(session, now + timedelta(days=2), timedelta(hours=24)) == 2
    with db.write() as session:
        outcome = consumer_store.read(
            session, consumer_id, 0, 0, gap_id=None, gap_since=None, limit=10, now=now
        )
    assert outcome.lost_from == 0 and [c for _, _, c in outcome.queued] == [outcome.cursor]
    with db.write() as session:
        again = consumer_store.read(
            session, consumer_id, None, 0, gap_id=None, gap_since=None, limit=10, now=now
        )
    assert again.lost_from is None and again.queued == [] and again.cursor == outcome.cursor
