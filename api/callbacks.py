"""Provider status callbacks: Twilio's message status callbacks and SendGrid's event webhook move the
delivery status of the notifications they name (statuses only move forward, ``store.notify``).

Each provider signs its calls; an unsigned or wrongly signed call is refused (403), and a provider that
is not configured answers 503. What the providers' statuses mean for Pulse, and the custom args the
e-mail channel sets for SendGrid to echo back, are in ``core.delivery`` (shared with the channels that
send); the verification and parsing of the inbound calls are here.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from sendgrid.helpers.eventwebhook import EventWebhook
from sqlalchemy import select
from sqlmodel import col
from starlette.concurrency import run_in_threadpool
from twilio.request_validator import RequestValidator

from nftpulse.api.common import parse_row_id
from nftpulse.api.deps import Services, ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.api.inbox import _signal_read
from nftpulse.core.delivery import (
    SENDGRID_EVENTS,
    SENDGRID_IDEMPOTENCY_ARG,
    SENDGRID_NOTIFICATION_ARG,
    DeliveryStatus,
    map_twilio_status,
)
from nftpulse.core.metrics import NOTIFICATION_CLICKS
from nftpulse.store import notifications
from nftpulse.store import notify as store

router = APIRouter(prefix="/v1/callbacks", tags=["provider callbacks"])

_REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"description": "bad signature"},
    503: {"description": "the provider is not configured"},
}

# -- Twilio -----------------------------------------------------------------------------------------------


def validate_status_callback(
    auth_token: str, url: str, params: Mapping[str, str], signature: str | None
) -> bool:
    """Check ``X-Twilio-Signature`` of a status callback: ``url`` is the full public URL Twilio called
    (with query string), ``params`` the form fields of the POST body."""
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))


def twilio_callback_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The signature Twilio would send for ``url`` and ``params`` (for tests of the callback endpoint)."""
    return str(RequestValidator(auth_token).compute_signature(url, dict(params)))


def _update_by_provider_id(services: Services, channel: str, provider_id: str, status: str) -> int:
    with services.db.write() as s:
        rows: list[store.Delivery] = list(
            s.execute(
                select(store.Delivery).where(
                    col(store.Delivery.provider_message_id) == provider_id,
                    col(store.Delivery.channel) == channel,
                )
            ).scalars()
        )
        for row in rows:
            notifications.upsert_delivery(s, row.notification_id, channel, status, datetime.now(UTC))
        return len(rows)


@router.post("/twilio", status_code=204, response_class=Response, responses=_REFUSED)
async def twilio_callback(
    request: Request,
    services: ServicesDep,
    x_twilio_signature: Annotated[str | None, Header()] = None,
) -> Response:
    """Twilio message status callbacks (form-encoded), signature checked with the auth token."""
    secret = services.settings.twilio_auth_token
    if not secret:
        raise HTTPException(503, "Twilio is not configured")
    token = secret.get_secret_value()
    try:
        form = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput([{"field": "body", "reason": "not UTF-8 text"}]) from exc
    params = dict(parse_qsl(form, keep_blank_values=True))
    base = services.settings.public_base_url
    # Twilio signs the public URL it called; behind a proxy that is not the URL this process sees.
    url = f"{base.rstrip('/')}{request.url.path}" if base else str(request.url.remove_query_params([]))
    if base and request.url.query:
        url += "?" + request.url.query
    if not validate_status_callback(token, url, params, x_twilio_signature):
        raise HTTPException(403, "bad X-Twilio-Signature")
    sid, status = params.get("MessageSid"), params.get("MessageStatus")
    if not sid or not status:
        raise InvalidInput([{"field": "MessageSid" if not sid else "MessageStatus", "reason": "required"}])
    await run_in_threadpool(_update_by_provider_id, services, "sms", sid, map_twilio_status(status))
    return Response(status_code=204)


# -- SendGrid ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendGridStatus:
    """One event of a SendGrid event-webhook post that moves a delivery status."""

    status: DeliveryStatus
    #: From ``custom_args``: the notification's row id (preferred) and its idempotency key (fallback).
    notification_id: int | None
    idempotency_key: str | None
    #: SendGrid's event name (``open``, ``click`` …): counts clicks, not part of the status update.
    event: str = field(default="", compare=False)


class SendGridEventError(ValueError):
    """A malformed event-webhook body; ``field`` names the offending part (``body``, ``body.3.event``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_sendgrid_events(body: str) -> list[SendGridStatus]:
    """The status updates in a SendGrid event-webhook body (a JSON array of event objects).

    Events of other kinds and events of mail Pulse did not send (no custom args) are skipped: SendGrid
    posts every event of the account here. A body that is not such an array, an event without its
    ``event`` name, or a custom arg of the wrong shape raises :class:`SendGridEventError`.
    """
    try:
        events = json.loads(body)
    except ValueError as exc:
        raise SendGridEventError("body", f"not JSON: {exc}") from exc
    if not isinstance(events, list):
        raise SendGridEventError("body", "must be a JSON array of events")
    out: list[SendGridStatus] = []
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise SendGridEventError(f"body.{i}", "must be an object")
        name = event.get("event")
        if not isinstance(name, str) or not name:
            raise SendGridEventError(f"body.{i}.event", "required, a string")
        status = SENDGRID_EVENTS.get(name)
        if status is None:
            continue
        raw_id = event.get(SENDGRID_NOTIFICATION_ARG)
        notification_id: int | None = None
        if raw_id is not None:
            # Custom args travel as strings; anything but a positive integer was not set by Pulse.
            text = str(raw_id)
            if isinstance(raw_id, bool) or not text.isdigit() or int(text) <= 0:
                raise SendGridEventError(
                    f"body.{i}.{SENDGRID_NOTIFICATION_ARG}", "must be a positive integer"
                )
            notification_id = int(text)
        raw_key = event.get(SENDGRID_IDEMPOTENCY_ARG)
        if raw_key is not None and not isinstance(raw_key, str):
            raise SendGridEventError(f"body.{i}.{SENDGRID_IDEMPOTENCY_ARG}", "must be a string")
        if notification_id is None and not raw_key:
            continue
        out.append(SendGridStatus(status, notification_id, raw_key or None, name))
    return out


def verify_sendgrid_event_signature(public_key: str, payload: str, signature: str, timestamp: str) -> bool:
    """Check a signed SendGrid event webhook (headers ``X-Twilio-Email-Event-Webhook-Signature`` and
    ``…-Timestamp``) with the ECDSA verification key from the SendGrid console."""
    verifier = EventWebhook()
    try:
        key = verifier.convert_public_key_to_ecdsa(public_key)
        return bool(verifier.verify_signature(payload, signature, timestamp, key))
    except (ValueError, TypeError):
        return False


def fresh(timestamp: str, max_age_s: float, now: float | None = None) -> bool:
    """Whether a signed callback's timestamp (Unix seconds, ASCII digits) is within ``max_age_s`` of now,
    either way (a provider's clock may run a little ahead)."""
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs((time.time() if now is None else now) - int(timestamp)) <= max_age_s


def _apply_sendgrid(services: Services, updates: list[SendGridStatus]) -> list[store.Notification]:
    """Move the e-mail deliveries; an open or a click is the user acting on the notification, marked read
    like an in-app read. Returns the notifications that became read (their escalations stop)."""
    by_id = [(u.notification_id, u.status) for u in updates if u.notification_id is not None]
    # Escalation repeats carry a "_s<step>" suffix on the provider side.
    by_key = [
        (re.sub(r"_s\d+$", "", u.idempotency_key), u.status)
        for u in updates
        if u.notification_id is None and u.idempotency_key
    ]
    now = datetime.now(UTC)
    with services.db.write() as s:
        notifications.apply_provider_statuses(s, "email", by_id, by_key, now)
        acted = [nid for nid, status in by_id if status == "read"]
        acted += notifications.ids_for_keys(s, [key for key, status in by_key if status == "read"])
        clicked = [u.notification_id for u in updates if u.event == "click" and u.notification_id]
        if clicked:
            kinds: Iterable[str] = s.execute(
                select(col(store.Notification.kind)).where(col(store.Notification.id).in_(clicked))
            ).scalars()
            for kind in kinds:
                NOTIFICATION_CLICKS.labels(kind, "email").inc()
        return notifications.mark_acted_on(s, acted, now)


@router.post(
    "/sendgrid",
    status_code=204,
    response_class=Response,
    responses={401: {"description": "signature headers missing"}, **_REFUSED},
)
async def sendgrid_callback(
    request: Request,
    services: ServicesDep,
    signature: Annotated[str | None, Header(alias="X-Twilio-Email-Event-Webhook-Signature")] = None,
    timestamp: Annotated[str | None, Header(alias="X-Twilio-Email-Event-Webhook-Timestamp")] = None,
) -> Response:
    """SendGrid event webhook: a JSON array of events, signed with the account's ECDSA key.

    Each event finds its delivery through the ``pulse_notification_id`` custom arg the e-mail channel sets
    (``pulse_idempotency_key`` as a fallback); statuses only move forward. Events Pulse cannot place are
    skipped, since SendGrid posts every event of the account and retries a batch answered with an error.
    """
    public_key = services.settings.sendgrid_webhook_public_key
    if not public_key:
        raise HTTPException(503, "the SendGrid event webhook is not configured")
    if not signature or not timestamp:
        missing = "X-Twilio-Email-Event-Webhook-" + ("Signature" if not signature else "Timestamp")
        raise HTTPException(401, f"{missing} header required")
    try:
        raw = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput([{"field": "body", "reason": "not UTF-8 text"}]) from exc
    if not verify_sendgrid_event_signature(public_key, raw, signature, timestamp):
        raise HTTPException(403, "bad event webhook signature")
    if not fresh(timestamp, services.settings.callback_max_age_s):
        # Correctly signed, once: a recorded request sent again later is a replay.
        raise HTTPException(403, "event webhook timestamp outside the accepted window (a replay?)")
    try:
        updates = parse_sendgrid_events(raw)
    except SendGridEventError as exc:
        raise InvalidInput([{"field": exc.field, "reason": exc.reason}]) from exc
    if updates:
        acted = await run_in_threadpool(_apply_sendgrid, services, updates)
        await _signal_read(services, acted, "email")
    return Response(status_code=204)


# -- the user acting elsewhere: a web-push click, an SMS reply ---------------------------------------------


def _twilio_params(
    services: Services, request: Request, body: bytes, signature: str | None
) -> dict[str, str]:
    """The form fields of a signed Twilio call (403 on a bad signature, 503 when Twilio is not set up)."""
    secret = services.settings.twilio_auth_token
    if not secret:
        raise HTTPException(503, "Twilio is not configured")
    token = secret.get_secret_value()
    try:
        form = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput([{"field": "body", "reason": "not UTF-8 text"}]) from exc
    params = dict(parse_qsl(form, keep_blank_values=True))
    base = services.settings.public_base_url
    url = f"{base.rstrip('/')}{request.url.path}" if base else str(request.url.remove_query_params([]))
    if base and request.url.query:
        url += "?" + request.url.query
    if not validate_status_callback(token, url, params, signature):
        raise HTTPException(403, "bad X-Twilio-Signature")
    return params


def _sms_reply(services: Services, phone: str) -> list[store.Notification]:
    with services.db.write() as s:
        users: list[str] = list(
            s.execute(select(col(store.NotifyUser.id)).where(col(store.NotifyUser.phone) == phone)).scalars()
        )
        ids = notifications.unread_with_delivery(s, users, "sms")
        return notifications.mark_acted_on(s, ids, datetime.now(UTC))


#: Twilio expects TwiML in answer to an inbound message; an empty response sends no reply.
_EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


@router.post(
    "/twilio/inbound",
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}}, **_REFUSED},
)
async def twilio_inbound(
    request: Request,
    services: ServicesDep,
    x_twilio_signature: Annotated[str | None, Header()] = None,
) -> Response:
    """Twilio's inbound-message webhook: any reply from a user's phone number acts on the SMS alerts that
    user has not acted on yet (marked read, escalation stopped)."""
    params = _twilio_params(services, request, await request.body(), x_twilio_signature)
    phone = params.get("From")
    if not phone:
        raise InvalidInput([{"field": "From", "reason": "required"}])
    acted = await run_in_threadpool(_sms_reply, services, phone)
    await _signal_read(services, acted, "sms")
    return Response(_EMPTY_TWIML, media_type="application/xml")


def _push_click(services: Services, notification_id: int, token: str) -> tuple[str, list[store.Notification]]:
    """Check the click token of a notification; mark it read and its push delivery read. Returns where to
    send the browser and the rows that changed; 404 for an unknown id or a wrong token (the same answer,
    so a token cannot be probed for)."""
    now = datetime.now(UTC)
    with services.db.write() as s:
        row = s.get(store.Notification, notification_id)
        expected = str(row.context.get("click_token") or "") if row is not None else ""
        if row is None or not expected or not hmac.compare_digest(expected, token):
            raise HTTPException(404, f"no notification {notification_id} with this click token")
        notifications.upsert_delivery(s, notification_id, "push", "read", now)
        changed = notifications.mark_acted_on(s, [notification_id], now)
        NOTIFICATION_CLICKS.labels(row.kind, "push").inc()
        return str(row.context.get("entity_url") or "/"), changed


_CLICK_DOC = (
    "The web-push click beacon: the push payload's ``url`` points here, with the notification's click "
    "token. The click marks the notification read, which stops its escalation."
)


@router.get(
    "/push/{notification_id}/click",
    status_code=303,
    response_class=RedirectResponse,
    responses={404: {"description": "unknown notification or wrong token"}},
    description=_CLICK_DOC + " Redirects (303) to the entity.",
)
async def push_click(notification_id: str, token: str, services: ServicesDep) -> RedirectResponse:
    """A click on a web-push notification (opened by the service worker)."""
    nid = parse_row_id(notification_id, "notification_id", "must be a notification id")
    target, acted = await run_in_threadpool(_push_click, services, nid, token)
    await _signal_read(services, acted, "push")
    return RedirectResponse(target, status_code=303)


@router.post(
    "/push/{notification_id}/click",
    status_code=204,
    response_class=Response,
    responses={404: {"description": "unknown notification or wrong token"}},
    description=_CLICK_DOC + " For ``navigator.sendBeacon``: answers 204.",
)
async def push_click_beacon(notification_id: str, token: str, services: ServicesDep) -> Response:
    """A click on a web-push notification, reported by the service worker itself."""
    nid = parse_row_id(notification_id, "notification_id", "must be a notification id")
    _, acted = await run_in_threadpool(_push_click, services, nid, token)
    await _signal_read(services, acted, "push")
    return Response(status_code=204)
