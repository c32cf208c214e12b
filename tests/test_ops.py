"""The operators' failure list and its actions: retry and skip failed events, cancel workflows of events
and notifications, clear 422s for requests that name nothing or ask for the impossible."""

from __future__ import annotations

import asyncio

from temporalio.client import WorkflowExecutionStatus

from nftpulse.domain.events import utcnow
from nftpulse.store import notifications
from nftpulse.store import notify as notify_store
from nftpulse.workflows.pipeline import ShardInput, ShardWorkflow
from tests.conftest import RunningPulse

CONTRACT = "0x" + "3c" * 20


async def test_failures_list_and_actions(pulse: RunningPulse) -> None:
    admin = pulse.keys.auth("admin")
    poison = {
        "id": "bad",
        "source": "ops",
        "type": "sale",
        "occurred_at": "2026-11-01T00:00:00Z",
        "chain": "ethereum",
        "contract": CONTRACT,
        "token_id": "1",
        "data": {"from": "0x" + "1" * 40, "to": "0x" + "2" * 40, "price": {"amount": "5", "currency": "ABC"}},
    }
    assert (await pulse.post(poison)).status_code == 202
    assert (await pulse.wait_final([("ops", "bad")])) == {("ops", "bad"): "failed"}

    # A notification whose delivery failed for good, with a workflow still running under its id.
    workflow_id = f"{pulse.settings.workflow_id_prefix}ops-notification"
    handle = await pulse.client.start_workflow(
        ShardWorkflow.run, ShardInput(-1), id=workflow_id, task_queue=pulse.task_queue
    )
    with pulse.db.write() as session:
        [(row, _)] = notifications.insert_notifications(
            session,
            [
                notify_store.Notification(
                    idempotency_key="ntf_ops",
                    user_id="u1",
                    kind="risk_change",
                    severity="critical",
                    entity_key=f"collection:ethereum:{CONTRACT}",
                    workflow_id=workflow_id,
                    created_at=utcnow(),
                )
            ],
        )
        notifications.upsert_delivery(
            session, row.id or 0, "sms", "failed", utcnow(), error="21211 invalid number"
        )
        nid = row.id or 0

    listed = (await pulse.http.get("/v1/ops/failures", headers=admin)).json()
    assert [f["id"] for f in listed["items"]] == ["bad"]
    assert listed["items"][0]["category"] == "unpriced" and listed["items"][0]["web_ui"]
    [failed] = listed["notifications"]
    assert failed["notification_id"] == nid and failed["channel"] == "sms"
    assert failed["reason"] == "21211 invalid number" and failed["workflow_id"] == workflow_id

    for body, field in [
        ({"action": "retry"}, "body"),
        ({"action": "retry", "notification_ids": [nid]}, "body"),
        ({"action": "explode", "seqs": [1]}, "action"),
    ]:
        resp = await pulse.http.post("/v1/ops/failures", json=body, headers=admin)
        assert resp.status_code == 422, body
        assert resp.json()["errors"][0]["field"] == field and resp.json()["errors"][0]["reason"]

    # Cancel the notification's workflow: it stops.
    resp = await pulse.http.post(
        "/v1/ops/failures", json={"action": "cancel", "notification_ids": [nid]}, headers=admin
    )
    assert resp.status_code == 200 and resp.json()["cancelled_workflows"] == 1
    for _ in range(50):
        if (await handle.describe()).status == WorkflowExecutionStatus.CANCELED:
            break
        await asyncio.sleep(0.1)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED

    # Cancel the event: acknowledged, it leaves the list (its workflow had already failed).
    seq = listed["items"][0]["seq"]
    resp = await pulse.http.post("/v1/ops/failures", json={"action": "cancel", "seqs": [seq]}, headers=admin)
    assert resp.json()["changed"] == 1
    assert (await pulse.http.get("/v1/ops/failures", headers=admin)).json()["items"] == []
    assert (await pulse.status("ops", "bad"))["status"] == "failed"
