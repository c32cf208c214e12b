"""Users: a user's delivery profile (where they can be reached, locale and time zone, quiet hours, digest,
channels per notification kind, hourly budget and escalation of critical alerts).

Access and errors: see ``api/common.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.core import Locale, UnknownLocaleError
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from nftpulse.api.common import IsoTime, LocalTime, Strict, UserId, authorize
from nftpulse.api.deps import PrincipalDep, Services, ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.core.delivery import (
    InvalidWebhookUrl,
    generate_webhook_secret,
    is_e164,
    is_email,
    validate_webhook_url,
)
from nftpulse.domain.escalation import DEFAULT_CHAIN, DEFAULT_DELAY_S, DEFAULT_MAX_REPEATS
from nftpulse.domain.rules import ChannelName, NotificationKind
from nftpulse.store import notify as store

router = APIRouter(prefix="/v1", tags=["notifications"])

_PREF_KEYS = {k.value for k in NotificationKind} | {"default", "digest"}
SendTime = Literal["immediate", "learned"]
#: The bounds a user may set on escalation: no faster than every 30 s, no slower than weekly.
_MIN_DELAY_S, _MAX_DELAY_S, _MAX_REPEATS = 30, 7 * 86400, 10

# -- request bodies ---------------------------------------------------------------------------------------


class QuietHoursIn(Strict):
    """Daily quiet window in the user's time zone; may wrap midnight."""

    start: LocalTime
    end: LocalTime


class DigestIn(Strict):
    """When the digest goes out, in the user's time zone."""

    frequency: Literal["hourly", "daily", "weekly"] = "daily"
    at: LocalTime = time(8, 0)
    weekday: int | None = Field(default=None, ge=0, le=6)
    flush_magnitude: float = Field(default=5.0, gt=0)


class PushSubscriptionIn(Strict):
    """A browser's ``PushSubscription.toJSON()`` (endpoint and keys flattened)."""

    endpoint: str = Field(pattern=r"^https://", max_length=2000)
    p256dh: str = Field(min_length=20, max_length=200)
    auth: str = Field(min_length=8, max_length=100)


class WebhookIn(Strict):
    """A webhook endpoint; without a secret one is generated (and returned once)."""

    url: str = Field(max_length=2000)
    secret: str | None = Field(default=None, pattern=r"^whsec_[A-Za-z0-9+/=]{16,}$")


class ChannelsIn(Strict):
    """Where the user can be reached."""

    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, description="E.164, e.g. +4915112345678")
    push: list[PushSubscriptionIn] = Field(default_factory=list, max_length=20)
    webhooks: list[WebhookIn] = Field(default_factory=list, max_length=10)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if v is not None and not is_email(v):
            raise ValueError("not an e-mail address")
        return v

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str | None) -> str | None:
        if v is not None and not is_e164(v):
            raise ValueError("must be an E.164 number such as +4915112345678")
        return v


class EscalationIn(Strict):
    """How critical alerts escalate when unread."""

    chain: list[ChannelName] = Field(default_factory=lambda: list(DEFAULT_CHAIN), min_length=1)
    delay_s: float = Field(default=DEFAULT_DELAY_S, ge=_MIN_DELAY_S, le=_MAX_DELAY_S)
    max_repeats: int = Field(default=DEFAULT_MAX_REPEATS, ge=0, le=_MAX_REPEATS)


class UserIn(Strict):
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
    send_time: SendTime = Field(
        default="immediate",
        description="learned: informational alerts wait for the hour this user reads most, and a daily or "
        "weekly digest goes out then",
    )

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


# -- responses --------------------------------------------------------------------------------------------


class QuietHoursOut(BaseModel):
    start: LocalTime
    end: LocalTime


class DigestOut(BaseModel):
    frequency: Literal["hourly", "daily", "weekly"]
    at: LocalTime
    weekday: int | None = None
    flush_magnitude: float


class PushSubscriptionOut(BaseModel):
    endpoint: str
    p256dh: str
    auth: str


class WebhookOut(BaseModel):
    url: str
    disabled: bool
    secret: str | None = Field(description="the signing secret: in the answer to the PUT that set it only")


class ChannelsOut(BaseModel):
    email: str | None
    phone: str | None
    push: list[PushSubscriptionOut]
    webhooks: list[WebhookOut]


class EscalationOut(BaseModel):
    """The escalation that applies; a profile stored without one gets the defaults."""

    chain: list[ChannelName] = Field(default_factory=lambda: list(DEFAULT_CHAIN))
    delay_s: float = DEFAULT_DELAY_S
    max_repeats: int = DEFAULT_MAX_REPEATS


class UserOut(BaseModel):
    """A user's delivery profile."""

    id: str
    locale: str
    timezone: str
    channels: ChannelsOut
    quiet_hours: QuietHoursOut | None
    digest: DigestOut | None
    preferences: dict[str, list[ChannelName]]
    critical_breakthrough: bool
    hourly_budget: int
    escalation: EscalationOut
    send_time: SendTime = "immediate"
    updated_at: IsoTime


def user_out(user: store.NotifyUser, *, reveal_secrets: bool = False) -> UserOut:
    """The API shape of a user; webhook secrets only right after they were set."""
    webhooks = [
        WebhookOut(
            url=w["url"],
            disabled=bool(w.get("disabled")),
            secret=w.get("secret") if reveal_secrets else None,
        )
        for w in user.webhooks
    ]
    return UserOut.model_validate(
        {
            "id": user.id,
            "locale": user.locale,
            "timezone": user.timezone,
            "channels": {
                "email": user.email,
                "phone": user.phone,
                "push": user.push_subscriptions,
                "webhooks": webhooks,
            },
            "quiet_hours": user.quiet_hours,
            "digest": user.digest,
            "preferences": user.preferences,
            "critical_breakthrough": user.critical_breakthrough,
            "hourly_budget": user.hourly_budget,
            "escalation": user.escalation or {},
            "send_time": user.send_time or "immediate",
            "updated_at": user.updated_at,
        }
    )


# -- routes -----------------------------------------------------------------------------------------------


@router.put("/users/{user_id}")
async def put_user(user_id: UserId, body: UserIn, principal: PrincipalDep, services: ServicesDep) -> UserOut:
    """Create or replace a user's delivery profile. Webhook secrets are answered this once."""
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
        secret = hook.secret or generate_webhook_secret()
        webhooks.append({"url": hook.url, "secret": secret, "disabled": False})
    # A push endpoint is a URL the user hands in too: the same rules as a webhook's.
    for i, sub in enumerate(body.channels.push):
        try:
            await validate_webhook_url(sub.endpoint, allow_private=allow_private)
        except InvalidWebhookUrl as exc:
            errors.append({"field": f"channels.push.{i}.endpoint", "reason": str(exc)})
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
            user.send_time = body.send_time
            user.updated_at = datetime.now(UTC)
            s.add(user)
            return user

    return user_out(await run_in_threadpool(write), reveal_secrets=True)


def load_user(services: Services, user_id: str) -> store.NotifyUser:
    """The user, or 404 saying how to create it."""
    with services.db.read() as s:
        user = s.get(store.NotifyUser, user_id)
    if user is None:
        raise HTTPException(404, f"no user {user_id!r}; create it with PUT /v1/users/{user_id}")
    return user


@router.get("/users/{user_id}")
async def get_user(user_id: UserId, principal: PrincipalDep, services: ServicesDep) -> UserOut:
    """A user's delivery profile (webhook secrets withheld)."""
    authorize(principal, user_id)
    return user_out(await run_in_threadpool(load_user, services, user_id))
