"""OpenTelemetry: one trace from the API request (FastAPI traces requests itself once a tracer provider
is set) through the dispatcher into the event's workflow and its activities; a partition's hand-off
links back to the requests it carries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client

from nftpulse.core import tracing
from nftpulse.core.settings import Settings
from tests.conftest import run_pulse

CONTRACT = "0x" + "7a" * 20


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    # A process has one global tracer provider: configure it once, and switch Pulse's use of it off
    # again afterwards so later tests run as without tracing.
    if not tracing.enabled():
        tracing.configure(Settings(), "pulse-test", exporter=exporter)
    yield exporter
    tracing._enabled = False


async def test_trace_runs_from_request_to_activities(
    database_url: str, temporal_client: Client, spans: InMemorySpanExporter
) -> None:
    if not tracing.enabled():
        pytest.skip("another tracer provider was installed first in this process")
    target = temporal_client.service_client.config.target_host
    client = await Client.connect(target, interceptors=tracing.client_interceptors())
    spans.clear()
    async with run_pulse(database_url, client) as pulse:
        finding = {
            "id": "tr-1",
            "source": "trace",
            "type": "fraud_finding",
            "occurred_at": "2026-11-01T00:00:00Z",
            "chain": "ethereum",
            "contract": CONTRACT,
            "data": {"finding_id": "F-9", "kind": "stolen", "severity": "critical"},
        }
        mint = {
            "id": "tr-2",
            "source": "trace",
            "type": "mint",
            "occurred_at": "2026-11-01T00:00:00Z",
            "chain": "ethereum",
            "contract": CONTRACT,
            "token_id": "1",
            "data": {"to": "0x" + "1" * 40},
        }
        assert (await pulse.post(finding)).status_code == 202
        assert (await pulse.post(mint)).status_code == 202
        await pulse.wait_final([("trace", "tr-1"), ("trace", "tr-2")])

    finished = spans.get_finished_spans()
    requests = [s for s in finished if s.name == "POST /v1/events"]
    assert len(requests) == 2
    finding_trace = requests[0].context.trace_id
    in_finding_trace = {s.name for s in finished if s.context.trace_id == finding_trace}
    # API → dispatcher → the event's own workflow → its activities, all one trace.
    assert {"dispatch event", "StartWorkflow:Event", "RunWorkflow:Event"} <= in_finding_trace
    assert {"RunActivity:analyze_impact", "RunActivity:recalculate"} <= in_finding_trace

    # The partition hand-off carries events of many requests: it links to the mint's request.
    mint_request = requests[1].context
    handoffs = [s for s in finished if s.name == "dispatch shard"]
    assert any(link.context.trace_id == mint_request.trace_id for s in handoffs for link in s.links)
