"""Subscriptions: what a user watches (an NFT, a collection, a creator, a wallet, or a portfolio of
wallets) and the rules that decide what is worth a notification (``domain/rules.py``).

Every change goes through ``watching.replace_subscription_keys``, which keeps detection's index of who
watches what (and the watch generation its cache follows) in the same transaction. Access and errors:
see ``api/common.py``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import delete, select
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from nftpulse.api.common import IsoTime, Strict, UserId, authorize
from nftpulse.api.deps import PrincipalDep, Services, ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.api.users import load_user
from nftpulse.domain.events import wallet_key
from nftpulse.domain.rules import Rule
from nftpulse.store import feedback, watching
from nftpulse.store import notify as store

router = APIRouter(prefix="/v1", tags=["notifications"])

Target = Literal["nft", "collection", "creator", "wallet", "portfolio"]

_ADDR = r"0x[0-9a-fA-F]{40}"
_CHAIN = r"[a-z0-9-]{1,32}"
_ENTITY = {
    "collection": re.compile(rf"^collection:{_CHAIN}:{_ADDR}$"),
    "nft": re.compile(rf"^nft:{_CHAIN}:{_ADDR}:\d{{1,78}}$"),
    "creator": re.compile(rf"^creator:{_CHAIN}:{_ADDR}$"),
    "wallet": re.compile(rf"^wallet:{_ADDR}$"),
}
_EXAMPLES = {
    "collection": "collection:ethereum:0x…",
    "nft": "nft:ethereum:0x…:42",
    "creator": "creator:ethereum:0x…",
    "wallet": "wallet:0x…",
}
_WALLET = re.compile(rf"^{_ADDR}$")


class SubscriptionIn(Strict):
    """Watch one entity (``entity_key``) or a portfolio of wallets (``wallets``) with rules."""

    target: Target
    entity_key: str | None = Field(default=None, max_length=200)
    wallets: list[str] = Field(default_factory=list, max_length=100)
    label: str | None = Field(default=None, max_length=200)
    rules: list[dict[str, Any]] = Field(min_length=1, max_length=50)


class SubscriptionPatch(Strict):
    """Fields to change; the target stays."""

    entity_key: str | None = Field(default=None, max_length=200)
    wallets: list[str] | None = Field(default=None, max_length=100)
    label: str | None = Field(default=None, max_length=200)
    rules: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=50)


class InvalidRule(BaseModel):
    """A stored rule that does not validate any more, and why."""

    index: int
    id: str | None
    reason: str


class SubscriptionOut(BaseModel):
    """A subscription as stored: its entity (or wallets) and its validated rules."""

    id: str
    user_id: str
    target: Target
    entity_key: str | None
    wallets: list[str]
    label: str | None
    rules: list[Rule]
    created_at: IsoTime
    updated_at: IsoTime
    #: ``disabled`` once one of its rules failed in detection: it notifies nothing until its rules are
    #: updated (``PATCH`` with ``rules``, validated again, re-enables it).
    status: Literal["active", "disabled"] = "active"
    disabled_at: IsoTime | None = None
    disabled_reason: str | None = None
    #: Stored rules that no longer validate (kept by an earlier version): listed here, not in ``rules``.
    invalid_rules: list[InvalidRule] = Field(default_factory=list)


class SubscriptionList(BaseModel):
    items: list[SubscriptionOut]


def sub_out(sub: store.Subscription) -> SubscriptionOut:
    """The API shape of a subscription."""
    rules: list[Rule] = []
    invalid: list[InvalidRule] = []
    for i, raw in enumerate(sub.rules):
        try:
            rules.append(Rule.model_validate(raw))
        except ValidationError as exc:
            # Reasons name fields only, never the stored values (Infinity or NaN would not render).
            reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            rule_id = raw.get("id") if isinstance(raw, dict) else None
            invalid.append(
                InvalidRule(index=i, id=str(rule_id)[:80] if rule_id else None, reason=reason[:500])
            )
    return SubscriptionOut.model_validate(
        {
            "id": sub.id,
            "user_id": sub.user_id,
            "target": sub.target,
            "entity_key": sub.entity_key,
            "wallets": sub.wallets,
            "label": sub.label,
            "rules": rules,
            "invalid_rules": invalid,
            "created_at": sub.created_at,
            "updated_at": sub.updated_at,
            "status": "active" if sub.disabled_at is None else "disabled",
            "disabled_at": sub.disabled_at,
            "disabled_reason": sub.disabled_reason,
        }
    )


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
        raise InvalidInput([{"field": "entity_key", "reason": f"must look like {_EXAMPLES[target]}"}])
    return key, [], [key]


def _own_sub(services: Services, user_id: str, sub_id: str) -> store.Subscription:
    with services.db.read() as s:
        sub = s.get(store.Subscription, sub_id)
    if sub is None or sub.user_id != user_id:
        raise HTTPException(404, f"no subscription {sub_id!r} for user {user_id!r}")
    return sub


@router.post("/users/{user_id}/subscriptions", status_code=201)
async def create_subscription(
    user_id: UserId, body: SubscriptionIn, principal: PrincipalDep, services: ServicesDep
) -> SubscriptionOut:
    """Watch an entity or a portfolio with rules."""
    authorize(principal, user_id)
    key, wallets, index = _keys(body.target, body.entity_key, body.wallets)
    rules = _rules(body.rules)

    def write() -> store.Subscription:
        load_user(services, user_id)
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
            watching.replace_subscription_keys(s, sub.id, index)
        return sub

    return sub_out(await run_in_threadpool(write))


@router.get("/users/{user_id}/subscriptions")
async def list_subscriptions(
    user_id: UserId, principal: PrincipalDep, services: ServicesDep
) -> SubscriptionList:
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

    return SubscriptionList(items=[sub_out(x) for x in await run_in_threadpool(read)])


@router.get("/users/{user_id}/subscriptions/{sub_id}")
async def get_subscription(
    user_id: UserId, sub_id: str, principal: PrincipalDep, services: ServicesDep
) -> SubscriptionOut:
    """One subscription."""
    authorize(principal, user_id)
    return sub_out(await run_in_threadpool(_own_sub, services, user_id, sub_id))


@router.patch("/users/{user_id}/subscriptions/{sub_id}")
async def patch_subscription(
    user_id: UserId, sub_id: str, body: SubscriptionPatch, principal: PrincipalDep, services: ServicesDep
) -> SubscriptionOut:
    """Change a subscription's entity, wallets, label or rules. Changed rules start with fresh state, and
    re-enable a subscription that a failing rule disabled."""
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
            if body.rules is not None:
                # Validated again above: a subscription a failing rule disabled watches again.
                sub.disabled_at = sub.disabled_reason = None
            if body.rules is not None:
                # The user's new rules are their own setting: feedback starts adapting them afresh.
                feedback.forget_adaptation(sub)
            if "label" in fields:
                sub.label = body.label
            sub.updated_at = datetime.now(UTC)
            s.add(sub)
            watching.replace_subscription_keys(s, sub_id, index)
            if body.rules is not None or "entity_key" in fields or body.wallets is not None:
                # Old hysteresis belongs to old parameters: re-arm from scratch.
                s.execute(
                    delete(store.RuleStateRecord).where(col(store.RuleStateRecord.subscription_id) == sub_id)
                )
            return sub

    return sub_out(await run_in_threadpool(write))


@router.delete("/users/{user_id}/subscriptions/{sub_id}", status_code=204, response_class=Response)
async def delete_subscription(
    user_id: UserId, sub_id: str, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """Stop watching."""
    authorize(principal, user_id)
    await run_in_threadpool(_own_sub, services, user_id, sub_id)

    def write() -> None:
        with services.db.write() as s:
            watching.delete_subscription(s, sub_id)

    await run_in_threadpool(write)
    return Response(status_code=204)
