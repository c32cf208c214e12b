"""Users, subscriptions, the inbox (with a live server-sent event stream) and provider status callbacks.

Access: a key with scope ``user:<id>`` reaches only that user's data, ``admin`` everyone's; any other key
gets 403. Bad input is answered 422 naming each field (``api/errors.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.core import Locale, UnknownLocaleError
from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import delete, select
from sqlmodel import col
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError

from nftpulse.activities.notify import inbox_text, wallet_key
from nftpulse.api.deps import PrincipalDep, Services, ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.channels.email import (
    SendGridEventError,
    SendGridStatus,
    parse_sendgrid_events,
    verify_sendgrid_event_signature,
)
from nftpulse.channels.sms import is_e164, map_twilio_status, validate_status_callback
from nftpulse.channels.webhook import InvalidWebhookUrl, generate_secret, validate_webhook_url
from nftpulse.core.metrics import DELIVERIES, NOTIFICATIONS_READ
from nftpulse.domain.rules import NotificationKind, Rule
from nftpulse.store import notify as store
from nftpulse.store.keys import Principal

router = APIRouter(prefix="/v1", tags=["notifications"])

ChannelName = Literal["in_app", "email", "sms", "push", "webhook"]
_USER_ID = r"^[A-Za-z0-9_.@:-]{1,120}$"
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_ADDR = r"0x[0-9a-fA-F]{40}"
_CHAIN = r"[a-z0-9-]{1,32}"
_ENTITY = {
    "collection": re.compile(rf"^collection:{_CHAIN}:{_ADDR}$"),
    "nft": re.compile(rf"^nft:{_CHAIN}:{_ADDR}:\d{{1,78}}$"),
    "creator": re.compile(rf"^creator:{_CHAIN}:{_ADDR}$"),
    "wallet": re.compile(rf"^wallet:{_ADDR}$"),
}
_WALLET = re.compile(rf"^{_ADDR}$")
_PREF_KEYS = {k.value for k in NotificationKind} | {"default", "digest"}
UserId = Annotated[str, Path(pattern=_USER_ID)]
_DEFAULT_CHAIN: list[ChannelName] = ["in_app", "push", "sms"]


def authorize(principal: Principal, user_id: str) -> None:
    """Only the user's own key (``user:<id>``) or an admin key reaches a user's data."""
    if "admin" in principal.scopes or user_id in principal.user_ids():
        return
    raise HTTPException(403, f"this key does not reach user {user_id!r}")


# -- users ----------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuietHoursIn(_Strict):
    """Daily quiet window in the user's time zone; may wrap midnight."""

    start: time
    end: time


class DigestIn(_Strict):
    """When the digest goes out, in the user's time zone."""

    frequency: Literal["hourly", "daily", "weekly"] = "daily"
    at: time = time(8, 0)
    weekday: int | None = Field(default=None, ge=0, le=6)
    flush_magnitude: float = Field(default=5.0, gt=0)


class PushSubscriptionIn(_Strict):
    """A browser's ``PushSubscription.toJSON()`` (endpoint and keys flattened)."""

    endpoint: str = Field(pattern=r"^https://", max_length=2000)
    p256dh: str = Field(min_length=20, max_length=200)
    auth: str = Field(min_length=8, max_length=100)


class WebhookIn(_Strict):
    """A webhook endpoint; without a secret one is generated (and returned once)."""

    url: str = Field(max_length=2000)
    secret: str | None = Field(default=None, pattern=r"^whsec_[A-Za-z0-9+/=]{16,}$")


class ChannelsIn(_Strict):
    """Where the user can be reached."""

    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, description="E.164, e.g. +4915112345678")
    push: list[PushSubscriptionIn] = Field(default_factory=list, max_length=20)
    webhooks: list[WebhookIn] = Field(default_factory=list, max_length=10)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if v is not None and not _EMAIL.match(v):
            raise ValueError("not an e-mail address")
        return v

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str | None) -> str | None:
        if v is not None and not is_e164(v):
            raise ValueError("must be an E.164 number such as +4915112345678")
        return v


class EscalationIn(_Strict):
    """How critical alerts escalate when unread."""

    chain: list[ChannelName] = Field(default_factory=lambda: _DEFAULT_CHAIN.copy(), min_length=1)
    delay_s: float = Field(default=900.0, ge=30, le=7 * 86400)
    max_repeats: int = Field(default=1, ge=0, le=10)


class UserIn(_Strict):
    """``PUT /v1/users/{id}``: the whole profile (a PUT replaces it)."""

    locale: str = "en"
    timezone: str = "UTC"
    channels: ChannelsIn = Field(default_factory=ChannelsIn)
    quiet_hours: QuietHoursIn | None = None
    digest: DigestIn | None = None
    preferences: dict[str, list[ChannelName]] = Field(
        default_factory=dict, description="channels per notification kind, plus 'default' and 'digest'"
    )
    critical_breakthrough: bool = Field(
        default=False, description="critical alerts break through quiet hours"
    )
    hourly_budget: int = Field(default=10, ge=0, le=1000)
    escalation: EscalationIn = Field(default_factory=EscalationIn)

    @field_validator("locale")
    @classmethod
    def _locale(cls, v: str) -> str:
        try:
            Locale.parse(v.replace("-", "_"))
        except (UnknownLocaleError, ValueError) as exc:
            raise ValueError(f"unknown locale {v!r}") from exc
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v

    @field_validator("preferences")
    @classmethod
    def _prefs(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        bad = sorted(set(v) - _PREF_KEYS)
        if bad:
            raise ValueError(f"unknown keys {bad}; use {sorted(_PREF_KEYS)}")
        return v


def user_out(user: store.NotifyUser, *, reveal_secrets: bool = False) -> dict[str, Any]:
    """The API shape of a user; webhook secrets only right after they were set."""
    return {
        "id": user.id,
        "locale": user.locale,
        "timezone": user.timezone,
        "channels": {
            "email": user.email,
            "phone": user.phone,
            "push": user.push_subscriptions,
            "webhooks": [
                {
                    "url": w["url"],
                    "disabled": bool(w.get("disabled")),
                    "secret": w.get("secret") if reveal_secrets else None,
                }
                for w in user.webhooks
            ],
        },
        "quiet_hours": user.quiet_hours,
        "digest": user.digest,
        "preferences": user.preferences,
        "critical_breakthrough": user.critical_breakthrough,
        "hourly_budget": user.hourly_budget,
        "escalation": user.escalation,
        "updated_at": user.updated_at.isoformat(),
    }


@router.put("/users/{user_id}")
async def put_user(
    user_id: UserId, body: UserIn, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Create or replace a user's delivery profile."""
    authorize(principal, user_id)
    allow_private = services.settings.allow_private_webhooks
    webhooks: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for i, hook in enumerate(body.channels.webhooks):
        try:
            await validate_webhook_url(hook.url, allow_private=allow_private)
        except InvalidWebhookUrl as exc:
            errors.append({"field": f"channels.webhooks.{i}.url", "reason": str(exc)})
            continue
        webhooks.append({"url": hook.url, "secret": hook.secret or generate_secret(), "disabled": False})
    if errors:
        raise InvalidInput(errors)

    def write() -> store.NotifyUser:
        with services.db.write() as s:
            user = s.get(store.NotifyUser, user_id) or store.NotifyUser(
                id=user_id, updated_at=datetime.now(UTC)
            )
            user.locale = body.locale
            user.timezone = body.timezone
            user.email = body.channels.email
            user.phone = body.channels.phone
            user.push_subscriptions = [p.model_dump() for p in body.channels.push]
            user.webhooks = webhooks
            user.quiet_hours = body.quiet_hours.model_dump(mode="json") if body.quiet_hours else None
            user.digest = body.digest.model_dump(mode="json") if body.digest else None
            user.preferences = {k: list(v) for k, v in body.preferences.items()}
            user.critical_breakthrough = body.critical_breakthrough
            user.hourly_budget = body.hourly_budget
            user.escalation = body.escalation.model_dump(mode="json")
            user.updated_at = datetime.now(UTC)
            s.add(user)
            return user

    return user_out(await run_in_threadpool(write), reveal_secrets=True)


def _get_user(services: Services, user_id: str) -> store.NotifyUser:
    with services.db.read() as s:
        user = s.get(store.NotifyUser, user_id)
    if user is None:
        raise HTTPException(404, f"no user {user_id!r}; create it with PUT /v1/users/{user_id}")
    return user


@router.get("/users/{user_id}")
async def get_user(user_id: UserId, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """A user's delivery profile (webhook secrets withheld)."""
    authorize(principal, user_id)
    return user_out(await run_in_threadpool(_get_user, services, user_id))


# -- subscriptions ---------------------------------------------------------------------------------------


class SubscriptionIn(_Strict):
    """Watch one entity (``entity_key``) or a portfolio of wallets (``wallets``) with rules."""

    target: Literal["nft", "collection", "creator", "wallet", "portfolio"]
    entity_key: str | None = Field(default=None, max_length=200)
    wallets: list[str] = Field(default_factory=list, max_length=100)
    label: str | None = Field(default=None, max_length=200)
    rules: list[dict[str, Any]] = Field(min_length=1, max_length=50)


class SubscriptionPatch(_Strict):
    """Fields to change; the target stays."""

    entity_key: str | None = Field(default=None, max_length=200)
    wallets: list[str] | None = Field(default=None, max_length=100)
    label: str | None = Field(default=None, max_length=200)
    rules: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=50)


def _rules(raw: list[dict[str, Any]], prefix: str = "rules") -> list[dict[str, Any]]:
    """Validate rules with the domain model; each error names ``rules.<i>.<field>``."""
    out: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        data = {"id": f"r{i + 1}", **item}
        try:
            rule = Rule.model_validate(data)
        except ValidationError as exc:
            errors.extend(
                {
                    "field": ".".join([prefix, str(i), *(str(p) for p in e["loc"])]),
                    "reason": str(e["msg"]).removeprefix("Value error, "),
                }
                for e in exc.errors()
            )
            continue
        if rule.id in seen:
            errors.append({"field": f"{prefix}.{i}.id", "reason": "duplicate rule id"})
        seen.add(rule.id)
        out.append(rule.model_dump(mode="json"))
    if errors:
        raise InvalidInput(errors)
    return out


def _keys(target: str, entity_key: str | None, wallets: list[str]) -> tuple[str | None, list[str], list[str]]:
    """Normalised entity key, wallets and the index keys of a subscription (or 422)."""
    if target == "portfolio":
        bad = [i for i, w in enumerate(wallets) if not _WALLET.match(w)]
        if not wallets or bad:
            field = f"wallets.{bad[0]}" if bad else "wallets"
            raise InvalidInput(
                [{"field": field, "reason": "a portfolio needs 0x-prefixed 20-byte wallet addresses"}]
            )
        norm = sorted({w.lower() for w in wallets})
        return None, norm, [wallet_key(w) for w in norm]
    if entity_key is None:
        raise InvalidInput([{"field": "entity_key", "reason": f"required for a {target} subscription"}])
    parts = entity_key.split(":")
    # Addresses are case-insensitive; the pipeline keys them in lower case.
    key = ":".join(p.lower() if p.startswith("0x") else p for p in parts)
    if parts[0] != target or not _ENTITY[target].match(key):
        examples = {
            "collection": "collection:ethereum:0x…",
            "nft": "nft:ethereum:0x…:42",
            "creator": "creator:ethereum:0x…",
            "wallet": "wallet:0x…",
        }
        raise InvalidInput([{"field": "entity_key", "reason": f"must look like {examples[target]}"}])
    return key, [], [key]


def sub_out(sub: store.Subscription) -> dict[str, Any]:
    """The API shape of a subscription."""
    return {
        "id": sub.id,
        "user_id": sub.user_id,
        "target": sub.target,
        "entity_key": sub.entity_key,
        "wallets": sub.wallets,
        "label": sub.label,
        "rules": sub.rules,
        "created_at": sub.created_at.isoformat(),
        "updated_at": sub.updated_at.isoformat(),
    }


@router.post("/users/{user_id}/subscriptions", status_code=201)
async def create_subscription(
    user_id: UserId, body: SubscriptionIn, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Watch an entity or a portfolio with rules."""
    authorize(principal, user_id)
    key, wallets, index = _keys(body.target, body.entity_key, body.wallets)
    rules = _rules(body.rules)

    def write() -> store.Subscription:
        _get_user(services, user_id)
        now = datetime.now(UTC)
        sub = store.Subscription(
            id="sub_" + uuid.uuid4().hex[:20],
            user_id=user_id,
            target=body.target,
            entity_key=key,
            wallets=wallets,
            label=body.label,
            rules=rules,
            created_at=now,
            updated_at=now,
        )
        with services.db.write() as s:
            s.add(sub)
            s.flush()
            store.replace_subscription_keys(s, sub.id, index)
        return sub

    return sub_out(await run_in_threadpool(write))


def _own_sub(services: Services, user_id: str, sub_id: str) -> store.Subscription:
    with services.db.read() as s:
        sub = s.get(store.Subscription, sub_id)
    if sub is None or sub.user_id != user_id:
        raise HTTPException(404, f"no subscription {sub_id!r} for user {user_id!r}")
    return sub


@router.get("/users/{user_id}/subscriptions")
async def list_subscriptions(
    user_id: UserId, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """The user's subscriptions, oldest first."""
    authorize(principal, user_id)

    def read() -> list[store.Subscription]:
        with services.db.read() as s:
            stmt = (
                select(store.Subscription)
                .where(col(store.Subscription.user_id) == user_id)
                .order_by(col(store.Subscription.created_at))
            )
            return list(s.execute(stmt).scalars())

    return {"items": [sub_out(x) for x in await run_in_threadpool(read)]}


@router.get("/users/{user_id}/subscriptions/{sub_id}")
async def get_subscription(
    user_id: UserId, sub_id: str, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """One subscription."""
    authorize(principal, user_id)
    return sub_out(await run_in_threadpool(_own_sub, services, user_id, sub_id))


@router.patch("/users/{user_id}/subscriptions/{sub_id}")
async def patch_subscription(
    user_id: UserId, sub_id: str, body: SubscriptionPatch, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Change a subscription's entity, wallets, label or rules. Changed rules start with fresh state."""
    authorize(principal, user_id)
    current = await run_in_threadpool(_own_sub, services, user_id, sub_id)
    fields = body.model_fields_set
    key, wallets, index = _keys(
        current.target,
        body.entity_key if "entity_key" in fields else current.entity_key,
        body.wallets if body.wallets is not None else current.wallets,
    )
    rules = _rules(body.rules) if body.rules is not None else current.rules

    def write() -> store.Subscription:
        with services.db.write() as s:
            sub = s.get(store.Subscription, sub_id)
            if sub is None:
                raise HTTPException(404, f"no subscription {sub_id!r}")
            sub.entity_key, sub.wallets, sub.rules = key, wallets, rules
            if "label" in fields:
                sub.label = body.label
            sub.updated_at = datetime.now(UTC)
            s.add(sub)
            store.replace_subscription_keys(s, sub_id, index)
            if body.rules is not None or "entity_key" in fields or body.wallets is not None:
                # Old hysteresis belongs to old parameters: re-arm from scratch.
                s.execute(
                    delete(store.RuleStateRecord).where(col(store.RuleStateRecord.subscription_id) == sub_id)
                )
            return sub

    return sub_out(await run_in_threadpool(write))


@router.delete("/users/{user_id}/subscriptions/{sub_id}", status_code=204)
async def delete_subscription(
    user_id: UserId, sub_id: str, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """Stop watching."""
    authorize(principal, user_id)
    await run_in_threadpool(_own_sub, services, user_id, sub_id)

    def write() -> None:
        with services.db.write() as s:
            store.delete_subscription(s, sub_id)

    await run_in_threadpool(write)
    return Response(status_code=204)


# -- inbox ------------------------------------------------------------------------------------------------


def notification_out(row: store.Notification, deliveries: list[store.Delivery]) -> dict[str, Any]:
    """The API shape of an inbox row, with its per-channel delivery status and the evidence."""
    title, body = inbox_text(row)
    return {
        "id": str(row.id),
        "idempotency_key": row.idempotency_key,
        "kind": row.kind,
        "severity": row.severity,
        "entity_key": row.entity_key,
        "title": title,
        "body": body,
        "rule_id": row.rule_id,
        "subscription_id": row.subscription_id,
        "evidence": row.context.get("explanation"),
        "created_at": row.created_at.isoformat(),
        "read_at": row.read_at.isoformat() if row.read_at else None,
        "archived_at": row.archived_at.isoformat() if row.archived_at else None,
        "deliveries": {d.channel: d.status for d in deliveries},
    }


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit():
        raise InvalidInput([{"field": "cursor", "reason": "use next_cursor from the previous page"}])
    return int(cursor)


@router.get("/users/{user_id}/notifications")
async def list_notifications(
    user_id: UserId,
    principal: PrincipalDep,
    services: ServicesDep,
    unread: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The inbox, newest first; ``next_cursor`` pages on."""
    authorize(principal, user_id)
    before = _cursor(cursor)

    def read() -> dict[str, Any]:
        with services.db.read() as s:
            rows = store.inbox(s, user_id, unread=unread, before_id=before, limit=limit + 1)
            page = rows[:limit]
            deliveries = store.deliveries_for(s, [r.id for r in page if r.id is not None])
            return {
                "items": [notification_out(r, deliveries.get(r.id or 0, [])) for r in page],
                "next_cursor": str(page[-1].id) if len(rows) > limit else None,
                "unread_count": store.unread_count(s, user_id),
            }

    return await run_in_threadpool(read)


async def _signal_read(services: Services, rows: list[store.Notification]) -> None:
    """Tell escalation workflows their notification was read, so they stop."""
    NOTIFICATIONS_READ.inc(len(rows))
    DELIVERIES.labels("in_app", "read").inc(len(rows))
    if services.temporal is None:
        return
    for row in rows:
        if not row.workflow_id or row.route == "digest":
            continue
        # A finished (or never started) workflow answers "not found": nothing is escalating then.
        with contextlib.suppress(RPCError):
            await services.temporal.get_workflow_handle(row.workflow_id).signal("read")


@router.post("/users/{user_id}/notifications/read-all")
async def read_all(user_id: UserId, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Mark every unread notification read."""
    authorize(principal, user_id)

    def write() -> list[store.Notification]:
        with services.db.write() as s:
            return store.mark_read(s, user_id, None, datetime.now(UTC))

    rows = await run_in_threadpool(write)
    await _signal_read(services, rows)
    return {"read": len(rows)}


def _notification_id(raw: str) -> int:
    if not raw.isdigit():
        raise InvalidInput([{"field": "notification_id", "reason": "must be a notification id"}])
    return int(raw)


@router.post("/users/{user_id}/notifications/{notification_id}/read")
async def read_one(
    user_id: UserId, notification_id: str, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Mark one notification read; stops its escalation."""
    authorize(principal, user_id)
    nid = _notification_id(notification_id)

    def write() -> tuple[store.Notification | None, list[store.Notification], list[store.Delivery]]:
        with services.db.write() as s:
            row = s.get(store.Notification, nid)
            if row is None or row.user_id != user_id:
                return None, [], []
            changed = store.mark_read(s, user_id, [nid], datetime.now(UTC))
            s.flush()
            return row, changed, store.deliveries_for(s, [nid])[nid]

    row, changed, deliveries = await run_in_threadpool(write)
    if row is None:
        raise HTTPException(404, f"no notification {notification_id} for user {user_id!r}")
    await _signal_read(services, changed)
    return notification_out(row, deliveries)


@router.post("/users/{user_id}/notifications/{notification_id}/archive")
async def archive_one(
    user_id: UserId, notification_id: str, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Hide a notification from the inbox (archived rows count as read)."""
    authorize(principal, user_id)
    nid = _notification_id(notification_id)

    def write() -> tuple[store.Notification | None, list[store.Notification]]:
        with services.db.write() as s:
            row = s.get(store.Notification, nid)
            if row is None or row.user_id != user_id:
                return None, []
            now = datetime.now(UTC)
            changed = store.mark_read(s, user_id, [nid], now)
            row.archived_at = row.archived_at or now
            s.add(row)
            return row, changed

    row, changed = await run_in_threadpool(write)
    if row is None:
        raise HTTPException(404, f"no notification {notification_id} for user {user_id!r}")
    await _signal_read(services, changed)
    return {"id": str(row.id), "archived_at": row.archived_at.isoformat() if row.archived_at else None}


@router.get("/users/{user_id}/notifications/stream")
async def stream(
    user_id: UserId,
    principal: PrincipalDep,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: str | None = None,
    max_s: Annotated[float, Query(gt=0, le=3600)] = 300.0,
) -> StreamingResponse:
    """Server-sent events: each new inbox row as ``event: notification`` with ``id`` = its id.

    The stream polls the inbox's index (the worker writing rows may be another process) and ends after
    ``max_s`` seconds; EventSource reconnects by itself with ``Last-Event-ID`` and misses nothing.
    Without an id, the stream starts with what arrives from now on.
    """
    authorize(principal, user_id)
    start = _cursor(last_event_id or after)

    def latest() -> int:
        with services.db.read() as s:
            rows = store.inbox(s, user_id, include_archived=True, limit=1)
            return rows[0].id or 0 if rows else 0

    def newer(after_id: int) -> list[dict[str, Any]]:
        with services.db.read() as s:
            rows = store.inbox(s, user_id, include_archived=True, after_id=after_id, limit=100)
            deliveries = store.deliveries_for(s, [r.id for r in rows if r.id is not None])
            return [notification_out(r, deliveries.get(r.id or 0, [])) for r in rows]

    async def events() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_s
        cursor = start if start is not None else await run_in_threadpool(latest)
        yield b"retry: 2000\n\n"
        idle = 0.0
        while loop.time() < deadline:
            items = await run_in_threadpool(newer, cursor)
            for item in items:
                cursor = int(item["id"])
                yield f"id: {item['id']}\nevent: notification\ndata: {json.dumps(item)}\n\n".encode()
            if items:
                idle = 0.0
                continue
            await asyncio.sleep(0.5)
            idle += 0.5
            if idle >= 15:
                idle = 0.0
                yield b": keep-alive\n\n"  # proxies close silent connections

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


# -- provider callbacks ------------------------------------------------------------------------------------


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
            store.upsert_delivery(s, row.notification_id, channel, status, datetime.now(UTC))
        return len(rows)


@router.post("/callbacks/twilio", status_code=204)
async def twilio_callback(
    request: Request,
    services: ServicesDep,
    x_twilio_signature: Annotated[str | None, Header()] = None,
) -> Response:
    """Twilio message status callbacks (form-encoded), signature checked with the auth token."""
    token: str | None = getattr(services.settings, "twilio_auth_token", None)
    if not token:
        raise HTTPException(503, "Twilio is not configured")
    params = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
    base: str | None = getattr(services.settings, "public_base_url", None)
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


def _apply_sendgrid(services: Services, updates: list[SendGridStatus]) -> int:
    by_id = [(u.notification_id, u.status) for u in updates if u.notification_id is not None]
    # Escalation repeats carry a "_s<step>" suffix on the provider side.
    by_key = [
        (re.sub(r"_s\d+$", "", u.idempotency_key), u.status)
        for u in updates
        if u.notification_id is None and u.idempotency_key
    ]
    with services.db.write() as s:
        return store.apply_provider_statuses(s, "email", by_id, by_key, datetime.now(UTC))


@router.post("/callbacks/sendgrid", status_code=204)
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
    public_key: str | None = getattr(services.settings, "sendgrid_webhook_public_key", None)
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
    try:
        updates = parse_sendgrid_events(raw)
    except SendGridEventError as exc:
        raise InvalidInput([{"field": exc.field, "reason": exc.reason}]) from exc
    if updates:
        await run_in_threadpool(_apply_sendgrid, services, updates)
    return Response(status_code=204)
