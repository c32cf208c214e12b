"""Escalation stops when the user acts anywhere: an e-mail open or click (SendGrid's signed event
webhook), a click on the web push (the click beacon the push payload links to), a reply to the SMS
(Twilio's signed inbound-message webhook). Each runs a critical notification's workflow on Temporal's
time-skipping server with a stand-in ``deliver`` activity, and the real API (SQLite and Postgres)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from nftpulse.activities.contracts.notify import (
    DeliverInput,
    DeliverResult,
    EscalationSpec,
    NotificationInput,
    NotifyRequest,
)
from nftpulse.activities.notify.delivery import click_url
from nftpulse.api.app import create_app
from nftpulse.api.callbacks import twilio_callback_signature
from nftpulse.core.settings import Settings
from nftpulse.store import notifications
from nftpulse.store import notify as store
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database
from nftpulse.workflows.notify import NotificationOutcome, NotificationWorkflow
from tests.test_notify_timers import _test_server

pytestmark = pytest.mark.skipif(_test_server() is None, reason="temporal-test-server not installed")

SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC_KEY = base64.b64encode(
    SENDGRID_KEY.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
).decode()
TWILIO_TOKEN = "twilio-test-token"
BASE = "https://pulse.example"
PHONE = "+4915112345678"


@dataclass
class Acting:
    env: WorkflowEnvironment
    http: httpx.AsyncClient
    db: Database
    queue: str
    deliveries: list[tuple[str, int]]


@pytest_asyncio.fixture
async def acting(db: Database) -> AsyncIterator[Acting]:
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=_test_server())
    deliveries: list[tuple[str, int]] = []

    @activity.defn(name="deliver")
    async def deliver(inp: DeliverInput) -> DeliverResult:
        deliveries.append((inp.channel, inp.step))
        return DeliverResult(inp.notification_id, inp.channel, "delivered")

    queue = f"acted-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        public_base_url=BASE,
        twilio_auth_token=TWILIO_TOKEN,
        sendgrid_webhook_public_key=SENDGRID_PUBLIC_KEY,
    )
    app = create_app(settings, db, NoCache(), env.client)
    try:
        async with (
            Worker(env.client, task_queue=queue, workflows=[NotificationWorkflow], activities=[deliver]),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http,
        ):
            yield Acting(env, http, db, queue, deliveries)
    finally:
        await env.shutdown()


def _store(db: Database, channel: str) -> store.Notification:
    """A critical notification already sent on ``channel``, pointing at the workflow the test starts."""
    now = datetime.now(UTC)
    user = f"u-{uuid.uuid4().hex[:8]}"
    with db.write() as s:
        s.add(store.NotifyUser(id=user, email=f"{user}@example.com", phone=PHONE, updated_at=now))
        s.flush()
        row = store.Notification(
            idempotency_key=f"ntf_{uuid.uuid4().hex}",
            user_id=user,
            kind="fraud_finding",
            severity="critical",
            entity_key="collection:ethereum:0x" + "cd" * 20,
            context={
                "click_token": "tok-" + uuid.uuid4().hex,
                "click_base": BASE,
                "entity_url": f"{BASE}/v1/collections/ethereum/0x{'cd' * 20}",
            },
            created_at=now,
        )
        s.add(row)
        s.flush()
        assert row.id is not None
        row.workflow_id = f"acted/{row.id}/{uuid.uuid4().hex[:6]}"
        s.add(row)
        notifications.upsert_delivery(s, row.id, channel, "delivered", now, provider_message_id=f"p-{row.id}")
        s.flush()
        s.expunge(row)
        return row


async def _escalating(a: Acting, row: store.Notification) -> Any:
    assert row.id is not None and row.workflow_id is not None
    req = NotifyRequest(
        notification_id=row.id,
        idempotency_key=row.idempotency_key,
        user_id=row.user_id,
        kind=row.kind,
        severity="critical",
        entity_key=row.entity_key,
        rule_id="watch:finding",
        title="Fraud finding",
        magnitude=3.0,
        at=datetime.now(UTC).isoformat(),
        route="now",
        channels=["in_app"],
        escalation=EscalationSpec(["in_app", "email", "sms"], 600.0, 1),
    )
    handle = await a.env.client.start_workflow(
        NotificationWorkflow.run, NotificationInput(req), id=row.workflow_id, task_queue=a.queue
    )
    for _ in range(500):
        if a.deliveries:
            break
        await asyncio.sleep(0.01)
    assert a.deliveries == [("in_app", 0)]
    return handle


def _read_at(db: Database, nid: int) -> datetime | None:
    with db.read() as s:
        row = s.get(store.Notification, nid)
        assert row is not None
        return row.read_at


async def _email_open(a: Acting, row: store.Notification) -> None:
    body = json.dumps([{"event": "open", "pulse_notification_id": str(row.id)}]).encode()
    timestamp = str(int(time.time()))
    signature = SENDGRID_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    resp = await a.http.post(
        "/v1/callbacks/sendgrid",
        content=body,
        headers={
            "content-type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        },
    )
    assert resp.status_code == 204, resp.text


async def _email_click_by_key(a: Acting, row: store.Notification) -> None:
    # Escalation repeats carry "_s<step>" on the provider side; the key still finds the notification.
    body = json.dumps([{"event": "click", "pulse_idempotency_key": f"{row.idempotency_key}_s2"}]).encode()
    timestamp = str(int(time.time()))
    signature = SENDGRID_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    resp = await a.http.post(
        "/v1/callbacks/sendgrid",
        content=body,
        headers={
            "content-type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        },
    )
    assert resp.status_code == 204, resp.text


async def _push_click(a: Acting, row: store.Notification) -> None:
    url = click_url(row)
    assert url is not None and url.startswith(f"{BASE}/v1/callbacks/push/{row.id}/click?token=")
    wrong = await a.http.get(f"/v1/callbacks/push/{row.id}/click", params={"token": "guess"})
    assert wrong.status_code == 404
    assert _read_at(a.db, row.id or 0) is None
    resp = await a.http.get(url)
    assert resp.status_code == 303
    assert resp.headers["location"] == row.context["entity_url"]
    with a.db.read() as s:
        statuses = {d.channel: d.status for d in notifications.deliveries_for(s, [row.id or 0])[row.id or 0]}
    assert statuses["push"] == "read"


async def _sms_reply(a: Acting, row: store.Notification) -> None:
    params = {"From": PHONE, "To": "+15005550006", "Body": "ok", "MessageSid": "SMreply1"}
    url = f"{BASE}/v1/callbacks/twilio/inbound"
    headers = {"content-type": "application/x-www-form-urlencoded"}
    bad = await a.http.post(
        "/v1/callbacks/twilio/inbound",
        content=urlencode(params),
        headers={**headers, "x-twilio-signature": "x"},
    )
    assert bad.status_code == 403
    signature = twilio_callback_signature(TWILIO_TOKEN, url, params)
    resp = await a.http.post(
        "/v1/callbacks/twilio/inbound",
        content=urlencode(params),
        headers={**headers, "x-twilio-signature": signature},
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/xml")
    assert "<Response>" in resp.text


ACTS: dict[str, tuple[str, Callable[[Acting, store.Notification], Any]]] = {
    "email_open": ("email", _email_open),
    "email_click": ("email", _email_click_by_key),
    "push_click": ("push", _push_click),
    "sms_reply": ("sms", _sms_reply),
}


@pytest.fixture(params=sorted(ACTS))
def act(request: pytest.FixtureRequest) -> Iterator[tuple[str, Callable[[Acting, store.Notification], Any]]]:
    yield ACTS[request.param]


async def test_acting_anywhere_stops_the_escalation(
    acting: Acting, act: tuple[str, Callable[[Acting, store.Notification], Any]]
) -> None:
    channel, do = act
    row = _store(acting.db, channel)
    handle = await _escalating(acting, row)
    await do(acting, row)
    outcome: NotificationOutcome = await handle.result()
    # Read before the first step was due: nothing beyond the first send, and the inbox shows it read.
    assert outcome.read and outcome.steps == 0
    assert acting.deliveries == [("in_app", 0)]
    assert _read_at(acting.db, row.id or 0) is not None


async def test_unacted_notification_escalates(acting: Acting) -> None:
    """The control: without any action the chain runs (so the test above can fail)."""
    row = _store(acting.db, "email")
    handle = await _escalating(acting, row)
    outcome: NotificationOutcome = await handle.result()
    assert not outcome.read and outcome.steps > 0
    assert [c for c, _ in acting.deliveries][:3] == ["in_app", "email", "sms"]
