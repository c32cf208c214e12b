"""The Web UI replays: resetting a failed event's workflow (the Web UI's Reset button is the same server call
as ``temporal workflow reset``) applies the event again, once its cause is fixed."""

from __future__ import annotations

import asyncio
import subprocess
from decimal import Decimal

from temporalio.client import WorkflowExecutionStatus

from tests.conftest import RunningPulse, replay_under_sandbox, temporal_cli

CONTRACT = "0x" + "ef" * 20
ALICE, CAROL = "0x" + "a" * 40, "0x" + "c" * 40


def _event(eid: str, kind: str, data: dict[str, object], block: int) -> dict[str, object]:
    return {
        "id": eid,
        "source": "reset",
        "type": kind,
        "occurred_at": "2026-11-01T12:00:00Z",
        "chain": "ethereum",
        "contract": CONTRACT,
        "token_id": "1",
        "block_number": block,
        "log_index": 0,
        "data": data,
    }


async def _status_becomes(
    pulse: RunningPulse, eid: str, wanted: str, limit_s: float = 30
) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        status = await pulse.status("reset", eid)
        if status["status"] == wanted:
            return status
        assert asyncio.get_running_loop().time() < deadline, f"{eid} stayed {status['status']}: {status}"
        await asyncio.sleep(0.2)


async def test_reset_of_a_failed_event_workflow_applies_the_event(pulse: RunningPulse) -> None:
    mint = _event("mint", "mint", {"from": "0x" + "0" * 40, "to": ALICE}, 1)
    # No USDC/ETH rate yet: the sale cannot be valued and fails in its own workflow.
    sale = _event(
        "sale", "sale", {"from": ALICE, "to": CAROL, "price": {"amount": "3000", "currency": "USDC"}}, 2
    )
    assert (await pulse.post([mint, sale])).status_code == 202
    failed = await _status_becomes(pulse, "sale", "failed")
    workflow_id = str(failed["workflow_id"])
    handle = pulse.client.get_workflow_handle(workflow_id)
    for _ in range(100):
        if (await handle.describe()).status == WorkflowExecutionStatus.FAILED:
            break
        await asyncio.sleep(0.1)
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED

    # The cause is fixed (a rate arrives), then the operator resets the failed workflow.
    tick = {
        "id": "rate",
        "source": "reset",
        "type": "price_tick",
        "occurred_at": "2026-11-01T11:00:00Z",
        "chain": "ethereum",
        "contract": CONTRACT,
        "data": {"pair": "USDC/ETH", "rate": "0.0004"},
    }
    assert (await pulse.post(tick)).status_code == 202
    await _status_becomes(pulse, "rate", "processed")
    target = pulse.client.service_client.config.target_host
    reset = await asyncio.to_thread(
        subprocess.run,
        [
            temporal_cli(),
            "workflow",
            "reset",
            "--address",
            target,
            "--namespace",
            pulse.client.namespace,
            "--workflow-id",
            workflow_id,
            "--type",
            "FirstWorkflowTask",
            "--reason",
            "rate now known",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reset.returncode == 0, reset.stdout + reset.stderr

    await _status_becomes(pulse, "sale", "processed")
    result = await pulse.client.get_workflow_handle(workflow_id).result()
    assert result["applied"] is True
    coll = (
        await pulse.http.get(f"/v1/collections/ethereum/{CONTRACT}", headers=pulse.keys.auth("read"))
    ).json()
    assert Decimal(coll["volume"]) == Decimal("3000") * Decimal("0.0004")
    assert coll["sales_count"] == 1
    assert (await pulse.http.get("/v1/ops/failures", headers=pulse.keys.auth("admin"))).json()["items"] == []
    # The reset run's history replays, as does the failed first run's.
    assert workflow_id in await replay_under_sandbox(pulse.client, pulse.task_queue)
