"""Ingest → Temporal → entity state, against the real dev server and real SQLite and Postgres."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client import generate_latest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.worker import Replayer

from nftpulse.api import events as events_api
from nftpulse.core.settings import Settings
from nftpulse.dispatcher import Dispatcher
from nftpulse.domain.book import CollectionBook
from nftpulse.store import events as event_store
from nftpulse.store.cache import MemoryCache
from nftpulse.store.entities import RateBook, view_versions
from nftpulse.store.events import ReplayFilter
from nftpulse.store.models import EventRecord, Route
from nftpulse.verify import verify
from nftpulse.worker import WORKFLOWS, build_worker
from tests.conftest import RunningPulse, replay_under_sandbox, run_pulse

CONTRACT = "0x" + "ab" * 20
ALICE, BOB, CAROL = ("0x" + c * 40 for c in "abc")
ZERO = "0x" + "0" * 40


def ev(
    eid: str,
    kind: str,
    data: dict[str, Any],
    token: str | None = "1",
    at: str = "2026-11-01T10:00:00Z",
    block: int | None = None,
    log: int | None = None,
    contract: str = CONTRACT,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": eid,
        "source": "test",
        "type": kind,
        "occurred_at": at,
        "chain": "ethereum",
        "contract": contract,
        "data": data,
    }
    if token is not None:
        event["token_id"] = token
    if block is not None:
        event["block_number"], event["log_index"] = block, log or 0
    return event


def eth(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "ETH"}


async def test_ingest_to_entity_state(pulse: RunningPulse) -> None:
    batch = [
        ev("m1", "mint", {"from": ZERO, "to": ALICE, "traits": {"hat": "crown"}}, "1", block=1),
        ev("m2", "mint", {"from": ZERO, "to": BOB, "traits": {"hat": "cap"}}, "2", block=1, log=1),
        ev("l1", "listing", {"seller": ALICE, "price": eth("2.5")}, "1", block=2),
        ev("l2", "listing", {"seller": BOB, "price": eth("1.5")}, "2", block=2, log=1),
        ev("s1", "sale", {"from": BOB, "to": CAROL, "price": eth("1.5")}, "2", block=3),
    ]
    resp = await pulse.post(batch)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["accepted"] == 5 and body["duplicates"] == 0
    assert [r["id"] for r in body["accepted_ids"]] == ["m1", "m2", "l1", "l2", "s1"]
    final = await pulse.wait_final([("test", e["id"]) for e in batch])
    assert set(final.values()) == {"processed"}

    status = await pulse.status("test", "s1")
    assert status["processed_at"] is not None and status["received_at"] <= status["processed_at"]

    nft = (await pulse.http.get(f"/v1/nfts/ethereum/{CONTRACT}/2", headers=pulse.keys.auth("read"))).json()
    assert nft["owner"] == CAROL
    assert nft["last_sale"]["price"] == "1.5"
    assert nft["active_listing"] is None  # the sale ended Bob's listing
    assert nft["version"] >= 1 and nft["updated_at"]

    coll = (
        await pulse.http.get(f"/v1/collections/ethereum/{CONTRACT}", headers=pulse.keys.auth("read"))
    ).json()
    assert Decimal(coll["floor"]) == Decimal("2.5")
    assert Decimal(coll["volume"]) == Decimal("1.5")
    assert coll["sales_count"] == 1
    assert coll["holders_count"] == 2  # Alice and Carol
    first_version = coll["version"]

    # A later event moves the collection: the read shows the new version at once (cache invalidated).
    resp = await pulse.post([ev("c1", "listing_cancelled", {"seller": ALICE}, "1", block=4)])
    await pulse.wait_final([("test", "c1")])
    coll = (
        await pulse.http.get(f"/v1/collections/ethereum/{CONTRACT}", headers=pulse.keys.auth("read"))
    ).json()
    assert coll["floor"] is None and coll["version"] > first_version

    assert verify(pulse.db).ok


async def test_duplicates_are_harmless(pulse: RunningPulse) -> None:
    sale = [
        ev("m1", "mint", {"from": ZERO, "to": ALICE}, "7", block=1),
        ev("s1", "sale", {"from": ALICE, "to": BOB, "price": eth("3")}, "7", block=2),
    ]
    first = (await pulse.post(sale)).json()
    again = (await pulse.post([*sale, sale[1]])).json()
    assert first["accepted"] == 2
    assert again["accepted"] == 0 and again["duplicates"] == 3
    assert [r["index"] for r in again["duplicate_ids"]] == [0, 1, 2]
    await pulse.wait_final([("test", "m1"), ("test", "s1")])
    coll = (
        await pulse.http.get(f"/v1/collections/ethereum/{CONTRACT}", headers=pulse.keys.auth("read"))
    ).json()
    assert coll["sales_count"] == 1 and Decimal(coll["volume"]) == 3


async def test_invalid_batch_rejected_whole_with_fields(pulse: RunningPulse) -> None:
    good = ev("ok", "mint", {"from": ZERO, "to": ALICE})
    bad_price = ev("bad", "sale", {"from": ALICE, "to": BOB, "price": {"amount": "1,5", "currency": "ETH"}})
    no_token = ev("nt", "transfer", {"from": ALICE, "to": BOB}, token=None)
    naive_time = {**good, "id": "tz", "occurred_at": "2026-11-01T10:00:00"}
    resp = await pulse.post([good, bad_price, no_token, naive_time])
    assert resp.status_code == 422
    errors = resp.json()["errors"]
    by_index = {(e["index"], e["field"]) for e in errors}
    assert (1, "events.1.data.price.amount") in by_index
    assert any(i == 2 for i, _ in by_index)
    assert (3, "events.3.occurred_at") in by_index
    assert all(e["reason"] for e in errors)
    assert (await pulse.http.get("/v1/events/test/ok", headers=pulse.keys.auth("read"))).status_code == 404

    for raw, field in [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"events": "x"}', "events"),
        (b'{"events": []}', "events"),
    ]:
        resp = await pulse.http.post("/v1/events", content=raw, headers=pulse.keys.auth("ingest"))
        assert resp.status_code == 422, raw
        assert resp.json()["errors"][0]["field"] == field
    too_many = [ev(f"e{i}", "mint", {"from": ZERO, "to": ALICE}, str(i)) for i in range(1001)]
    resp = await pulse.post(too_many)
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "events"

    resp = await pulse.http.get("/v1/nfts/ethereum/0x12/1", headers=pulse.keys.auth("read"))
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "contract"
    resp = await pulse.http.get(f"/v1/nfts/ethereum/{CONTRACT}/999", headers=pulse.keys.auth("read"))
    assert resp.status_code == 404


async def test_openapi_describes_the_ingest_body(database_url: str, temporal_client: Client) -> None:
    """`POST /v1/events` parses its raw body itself, yet OpenAPI still describes it: one event or
    ``{"events": [...]}``, with each type's ``data``; real events validate against it, bad ones do not."""
    async with run_pulse(database_url, temporal_client, worker=False, dispatcher=False) as pulse:
        spec = (await pulse.http.get("/openapi.json")).json()
    body = spec["paths"]["/v1/events"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator(schema)
    one = ev("o1", "sale", {"from": ALICE, "to": BOB, "price": eth("1.5")}, block=3)
    validator.validate(one)
    validator.validate({"events": [one, ev("o2", "mint", {"from": ZERO, "to": ALICE}, "2")]})
    bad: list[Any] = [{"events": []}, {**one, "chain": "Not A Chain"}, {**one, "extra": 1}, [one]]
    for body_ in bad:
        assert not validator.is_valid(body_), body_
    data_shapes = {s["title"] for s in jsonschema_event(schema)["properties"]["data"]["anyOf"]}
    assert {"sale data", "mint data", "fraud_finding data"} <= data_shapes
    refused = spec["paths"]["/v1/events"]["post"]["responses"]["422"]["content"]["application/json"]
    assert refused["schema"]["$ref"].endswith("/InvalidBatch")
    assert set(spec["components"]["schemas"]["FieldError"]["properties"]) == {"index", "field", "reason"}


def jsonschema_event(schema: dict[str, Any]) -> dict[str, Any]:
    """The single-event branch of the ingest body's schema."""
    return next(s for s in schema["anyOf"] if "events" not in s.get("properties", {}))


async def test_events_are_classified_at_ingest_against_the_floor(pulse: RunningPulse) -> None:
    """The one classification of an event happens at ingest, against the collection's floor (read again
    every few seconds): a sale at ten times the floor counts as a large move; before any floor, the
    same sale is a routine one."""
    await pulse.post(
        [
            ev("fm1", "mint", {"from": ZERO, "to": ALICE}, "1", block=1),
            ev("fm2", "mint", {"from": ZERO, "to": BOB}, "2", block=1, log=1),
        ]
    )
    blind = ev("fs0", "sale", {"from": ALICE, "to": CAROL, "price": eth("10")}, "1", block=2)
    await pulse.post(blind)
    await pulse.post(ev("fl", "listing", {"seller": BOB, "price": eth("1")}, "2", block=3))
    await pulse.wait_final([("test", "fm1"), ("test", "fm2"), ("test", "fs0"), ("test", "fl")])
    events_api._FLOORS.clear()  # the next ingest reads the floors afresh instead of within seconds
    await pulse.post(ev("fs1", "sale", {"from": CAROL, "to": ALICE, "price": eth("10")}, "1", block=4))
    await pulse.wait_final([("test", "fs1")])
    without, against = await pulse.status("test", "fs0"), await pulse.status("test", "fs1")
    assert without["priority_class"] == "normal"
    assert against["priority_class"] == "high" and against["priority"] >= without["priority"] + 30


def test_dispatcher_routes_by_the_priority_classified_at_ingest() -> None:
    """The dispatcher neither parses nor classifies an event again: it routes fraud findings and events
    classified past the threshold alone; a wait only makes a routine event's shard urgent."""
    settings = Settings(significant_priority=80.0, workflow_id_prefix="t/", shards=4)
    dispatcher = Dispatcher(settings, None, None)  # type: ignore[arg-type]  # route() touches neither
    now = datetime.now(UTC)

    def row(seq: int, kind: str, priority: float, waited_s: float, **data: Any) -> EventRecord:
        return EventRecord(
            seq=seq, source="test", external_id=f"e{seq}", type=kind, occurred_at=now,
            received_at=now - timedelta(seconds=waited_s), chain="ethereum", contract=CONTRACT,
            token_id="1", data=data, partition=f"collection:ethereum:{CONTRACT}", priority=priority,
        )  # fmt: skip

    routed = dispatcher.route(
        [
            row(1, "sale", 40.0, 0),
            row(2, "sale", 79.0, 0),
            row(3, "sale", 40.0, 3600),  # waited an hour: +60 aging points
            row(4, "fraud_finding", 10.0, 0, severity="low"),
        ]
    )
    marks = {m.seq: m for m in routed.marks}
    assert marks[1].route is Route.PARTITION and marks[1].priority == 40.0
    assert marks[1].priority_class == "normal"
    assert marks[2].route is Route.PARTITION and marks[2].priority_class == "high"
    # Waited an hour: still routine, stored at its classified priority (a second dispatch ages it once).
    assert marks[3].route is Route.PARTITION and marks[3].priority == 40.0
    assert marks[4].route is Route.OWN
    assert [(r.seq, severity) for r, _, severity in routed.own] == [(4, "low")]
    assert routed.urgent  # the high-priority routine sale wakes its shard at once


async def test_auth_scopes(pulse: RunningPulse) -> None:
    event = ev("a1", "mint", {"from": ZERO, "to": ALICE})
    assert (await pulse.http.post("/v1/events", json=event)).status_code == 401
    resp = await pulse.http.post("/v1/events", json=event, headers={"Authorization": "Bearer pk_nope"})
    assert resp.status_code == 401
    assert (await pulse.post(event, key="read")).status_code == 403
    assert (await pulse.post(event, key="ingest")).status_code == 202
    assert (await pulse.post(event, key="admin")).status_code == 202
    resp = await pulse.http.get("/v1/events/test/a1", headers=pulse.keys.auth("ingest"))
    assert resp.status_code == 403
    assert (await pulse.http.get("/v1/ops/failures", headers=pulse.keys.auth("read"))).status_code == 403
    assert (await pulse.http.get("/healthz")).status_code == 200
    # Metrics are not on the API's public port (``pulse api`` serves them on PULSE_API_METRICS_PORT).
    assert (await pulse.http.get("/metrics")).status_code in (401, 404)
    assert "pulse_events_ingested_total" in generate_latest().decode()
    ready = await pulse.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "temporal": True}


async def test_poison_event_is_isolated_and_replayable(pulse: RunningPulse) -> None:
    stream = [
        ev("m1", "mint", {"from": ZERO, "to": ALICE}, "1", block=1),
        ev("m2", "mint", {"from": ZERO, "to": BOB}, "2", block=1, log=1),
        # No USDC/ETH rate is known yet: this sale cannot be valued, a permanent failure for now.
        ev(
            "usdc",
            "sale",
            {"from": ALICE, "to": CAROL, "price": {"amount": "3000", "currency": "USDC"}},
            "1",
            block=2,
            at="2026-11-01T12:00:00Z",
        ),
        ev("s2", "sale", {"from": BOB, "to": CAROL, "price": eth("2")}, "2", block=3),
    ]
    assert (await pulse.post(stream)).status_code == 202
    final = await pulse.wait_final([("test", e["id"]) for e in stream])
    assert final == {
        ("test", "m1"): "processed",
        ("test", "m2"): "processed",
        ("test", "usdc"): "failed",
        ("test", "s2"): "processed",
    }
    failed = await pulse.status("test", "usdc")
    assert failed["error_category"] == "unpriced" and "USDC/ETH" in failed["error"]
    assert failed["workflow_id"] == f"{pulse.settings.workflow_id_prefix}event/test/usdc"

    # Visible in the Web UI: the isolated event's own workflow failed with the reason.
    handle = pulse.client.get_workflow_handle(failed["workflow_id"])
    for _ in range(100):
        desc = await handle.describe()
        if desc.status == WorkflowExecutionStatus.FAILED:
            break
        import asyncio

        await asyncio.sleep(0.1)
    assert desc.status == WorkflowExecutionStatus.FAILED

    failures = (await pulse.http.get("/v1/ops/failures", headers=pulse.keys.auth("admin"))).json()["items"]
    assert [f["id"] for f in failures] == ["usdc"] and failures[0]["web_ui"].endswith(
        "/workflows/" + failed["workflow_id"].replace("/", "%2F")
    )

    # The fix: a rate arrives; then re-drive the event (what `pulse replay --source test --id usdc` does).
    tick = {
        "id": "rate1",
        "source": "test",
        "type": "price_tick",
        "occurred_at": "2026-11-01T11:00:00Z",
        "chain": "ethereum",
        "contract": "0x" + "cd" * 20,
        "data": {"pair": "USDC/ETH", "rate": "0.0004"},
    }
    assert (await pulse.post(tick)).status_code == 202
    await pulse.wait_final([("test", "rate1")])
    seqs = event_store.seqs_matching(pulse.db, ReplayFilter(source="test", external_id="usdc"))
    assert event_store.requeue(pulse.db, seqs) == 1
    final = await pulse.wait_final([("test", "usdc")])
    assert final[("test", "usdc")] == "processed"
    coll = (
        await pulse.http.get(f"/v1/collections/ethereum/{CONTRACT}", headers=pulse.keys.auth("read"))
    ).json()
    assert Decimal(coll["volume"]) == Decimal("2") + Decimal("3000") * Decimal("0.0004")
    assert coll["sales_count"] == 2
    assert verify(pulse.db).ok
    # The shards' and the isolated event's workflows replay deterministically.
    replayed = await replay_under_sandbox(pulse.client, pulse.task_queue)
    assert failed["workflow_id"] in replayed and any("/shard/" in w for w in replayed)


async def test_significant_event_gets_its_own_workflow(pulse: RunningPulse) -> None:
    finding = ev("f1", "fraud_finding", {"finding_id": "F-1", "kind": "stolen", "severity": "critical"}, "1")
    assert (await pulse.post(finding)).status_code == 202
    await pulse.wait_final([("test", "f1")])
    status = await pulse.status("test", "f1")
    assert status["status"] == "processed"
    assert status["workflow_id"] == f"{pulse.settings.workflow_id_prefix}event/test/f1"
    found = [
        wf.id
        async for wf in pulse.client.list_workflows(
            f"EventType = 'fraud_finding' AND EntityKey = 'nft:ethereum:{CONTRACT}:1'"
        )
    ]
    assert status["workflow_id"] in found
    # On the events queue, whose local-activity slots the shards' batches never hold.
    desc = await pulse.client.get_workflow_handle(status["workflow_id"]).describe()
    assert desc.task_queue == pulse.settings.event_task_queue != pulse.settings.task_queue


async def test_worker_roles_split_the_task_queues(database_url: str, temporal_client: Client) -> None:
    """`--role shards` and `--role events` serve one queue each: with the shards' worker alone a routine
    event is processed and a fraud finding waits; an events worker started later processes it."""
    async with run_pulse(database_url, temporal_client, worker_role="shards") as pulse:
        finding = {"finding_id": "F-9", "kind": "stolen", "severity": "critical"}
        await pulse.post([ev("rm", "mint", {"from": ZERO, "to": ALICE}, "1")])
        await pulse.wait_final([("test", "rm")])
        await pulse.post([ev("rf", "fraud_finding", finding, "1")])
        await asyncio.sleep(1.5)
        assert (await pulse.status("test", "rf"))["status"] == "dispatched"

        events_settings = pulse.settings.model_copy(update={"worker_role": "events"})
        events_only, registry = build_worker(temporal_client, events_settings, pulse.db, MemoryCache())
        assert [w.task_queue for w in events_only.workers] == [pulse.settings.event_task_queue]
        task = asyncio.create_task(events_only.run())
        try:
            await pulse.wait_final([("test", "rf")])
            status = await pulse.status("test", "rf")
            assert status["status"] == "processed" and "/event/" in status["workflow_id"]
        finally:
            await events_only.shutdown()
            await asyncio.gather(task, return_exceptions=True)
            await registry.aclose()


async def test_replay_of_processed_events_does_not_double_count(pulse: RunningPulse) -> None:
    stream = [
        ev("m1", "mint", {"from": ZERO, "to": ALICE}, "1", block=1),
        ev("s1", "sale", {"from": ALICE, "to": BOB, "price": eth("1")}, "1", block=2),
        ev("s2", "sale", {"from": BOB, "to": CAROL, "price": eth("2")}, "1", block=3),
    ]
    await pulse.post(stream)
    await pulse.wait_final([("test", e["id"]) for e in stream])
    seqs = event_store.seqs_matching(pulse.db, ReplayFilter(source="test", statuses=("processed",)))
    assert event_store.requeue(pulse.db, seqs) == 3
    await pulse.wait_final([("test", e["id"]) for e in stream])
    coll = (
        await pulse.http.get(f"/v1/collections/ethereum/{CONTRACT}", headers=pulse.keys.auth("read"))
    ).json()
    assert coll["sales_count"] == 2 and Decimal(coll["volume"]) == 3
    assert verify(pulse.db).ok


@pytest.mark.parametrize("kind", ["shard", "event"])
async def test_histories_from_before_the_invalidation_fold_still_replay(kind: str) -> None:
    """A shard's and a significant event's histories recorded by the worker that still ran invalidation as
    a step of its own (a mint, a sale and a fraud finding) replay on today's workflows, sandboxed: the
    step survives behind ``workflow.patched`` for them."""
    path = Path(__file__).parent / "histories" / f"{kind}-before-invalidation-fold.json"
    history = WorkflowHistory.from_json(f"recorded-{kind}", path.read_text())
    steps = [
        json.loads(event.marker_recorded_event_attributes.details["data"].payloads[0].data)["activity_type"]
        for event in history.events
        if event.HasField("marker_recorded_event_attributes")
    ]
    assert "invalidate_cache" in steps
    result = await Replayer(workflows=WORKFLOWS).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, repr(result.replay_failure)


async def test_a_collection_wide_finding_rewrites_no_nft_row(pulse: RunningPulse) -> None:
    """A critical finding about a whole collection moves every NFT's risk and trust, and no NFT row is
    written for it: each read derives them from the token's stored part and the collection's factors, and
    equals the view a recompute of the log gives."""
    tokens = [str(i) for i in range(1, 41)]
    batch = [
        ev(
            f"m{t}",
            "mint",
            {"from": ZERO, "to": ALICE if int(t) % 2 else BOB, "traits": {"n": t}},
            t,
            block=1,
            log=int(t),
        )
        for t in tokens
    ]
    batch += [ev("l1", "listing", {"seller": ALICE, "price": eth("2")}, "1", block=2)]
    batch += [ev("s2", "sale", {"from": BOB, "to": CAROL, "price": eth("1.5")}, "2", block=3)]
    await pulse.post(batch)
    assert set((await pulse.wait_final([("test", e["id"]) for e in batch])).values()) == {"processed"}
    keys = [f"nft:ethereum:{CONTRACT}:{t}" for t in tokens]
    with pulse.db.read() as session:
        before = view_versions(session, keys)
        coll_before = view_versions(session, [f"collection:ethereum:{CONTRACT}"])
    read = pulse.keys.auth("read")
    first = (await pulse.http.get(f"/v1/nfts/ethereum/{CONTRACT}/3", headers=read)).json()
    assert first["risk"]["level"] == "low" and "inputs" not in first

    finding = ev(
        "f1", "fraud_finding", {"finding_id": "F1", "kind": "rug_pull", "severity": "critical"}, None, block=4
    )
    await pulse.post([finding])
    assert (await pulse.wait_final([("test", "f1")])) == {("test", "f1"): "processed"}
    with pulse.db.read() as session:
        assert view_versions(session, keys) == before
        assert view_versions(session, [f"collection:ethereum:{CONTRACT}"]) != coll_before
        history = [
            event_store.to_event(r)
            for r in event_store.processed_events_of(session, f"collection:ethereum:{CONTRACT}")
        ]
        fresh = CollectionBook.recompute("ethereum", CONTRACT, history, RateBook(session))
    for token in tokens:
        nft = (await pulse.http.get(f"/v1/nfts/ethereum/{CONTRACT}/{token}", headers=read)).json()
        assert nft["risk"]["level"] == "critical", nft
        assert nft["trust"]["score"] < first["trust"]["score"]
        served = {k: v for k, v in nft.items() if k not in ("version", "collection_version", "updated_at")}
        assert served == fresh.nft_view(token), token
        assert nft["version"] == before[f"nft:ethereum:{CONTRACT}:{token}"]
    coll = (await pulse.http.get(f"/v1/collections/ethereum/{CONTRACT}", headers=read)).json()
    assert coll["risk"]["level"] == "critical" and "nft_factors" not in coll
    assert nft["collection_version"] == coll["version"]
    assert verify(pulse.db).ok
