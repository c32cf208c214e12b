"""Feedback: a user's verdict on a notification (``useful``, ``not_useful``, ``too_many``) and the
sensitivity of the rules it adapts (``domain.feedback``).

Three ways in, one effect (the latest verdict on a notification wins; the same verdict again changes
nothing):

- ``POST /v1/users/{id}/notifications/{nid}/feedback`` with the user's key (the in-app inbox);
- the links in e-mails, web pushes and webhook payloads: ``/v1/callbacks/feedback/{nid}?token=…`` with the
  notification's own token (as the push click beacon, ``api.callbacks``), GET from a link (answers a small
  page) or POST with a JSON body (a webhook receiver, a service worker).

A rule's sensitivity can be read and reset to the user's own setting
(``/v1/users/{id}/subscriptions/{sub}/sensitivity``). Access and errors: see ``api/common.py``.
"""

from __future__ import annotations

import hmac
import html
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from nftpulse.api.common import IsoTime, Strict, UserId, authorize, parse_row_id
from nftpulse.api.deps import PrincipalDep, Services, ServicesDep
from nftpulse.api.errors import InvalidInput
from nftpulse.core.metrics import FEEDBACK, RULES_ADAPTED
from nftpulse.domain.feedback import VERDICTS, RuleAdaptation, Verdict, factor
from nftpulse.domain.rules import Rule
from nftpulse.store import feedback
from nftpulse.store import notify as store

router = APIRouter(prefix="/v1", tags=["notifications"])

#: Where a verdict may come from (a link names its channel with ``via``).
Via = Literal["in_app", "email", "push", "webhook", "sms"]


class FeedbackIn(Strict):
    """A verdict on one notification."""

    verdict: Verdict


class Sensitivity(BaseModel):
    """How sensitive one rule of a subscription is now, next to the user's own setting."""

    subscription_id: str
    rule_id: str
    step: int = Field(description="0: the user's own setting; each step widens it x1.5, at most x4")
    factor: float
    mode: Literal["widen", "digest", "cooldown"]
    reason: Literal["not_useful", "too_many", "useful", "reset"] | None
    pinned: bool = Field(description="reset by the user and no longer adapted")
    since: IsoTime | None
    rule: Rule = Field(description="the rule detection evaluates now")
    own_rule: Rule = Field(description="the rule as the user set it")


class FeedbackOut(BaseModel):
    """The verdict stored for a notification."""

    notification_id: str
    verdict: Verdict
    previous: Verdict | None = Field(description="the verdict this one replaced")
    channel: Via
    updated_at: IsoTime
    adapted: Sensitivity | None = Field(description="the rule's new sensitivity when this verdict changed it")


class SensitivityList(BaseModel):
    items: list[Sensitivity]


class ResetIn(Strict):
    """Which rules go back to the user's own setting (all of the subscription's when omitted)."""

    rule_ids: list[str] | None = Field(default=None, max_length=50)
    pin: bool = Field(default=False, description="also stop these rules adapting to feedback")


def sensitivity(sub: store.Subscription, rule_id: str) -> Sensitivity | None:
    """The API shape of one rule's adaptive state."""
    own = feedback.own_rule(sub, rule_id)
    current = next((r for r in sub.rules if r.get("id") == rule_id), None)
    if own is None or current is None:
        return None
    state = feedback.adaptations(sub).get(rule_id, RuleAdaptation())
    return Sensitivity(
        subscription_id=sub.id,
        rule_id=rule_id,
        step=state.step,
        factor=factor(state.step),
        mode=state.mode,
        reason=state.reason,
        pinned=state.pinned,
        since=state.since,
        rule=Rule.model_validate(current),
        own_rule=Rule.model_validate(own),
    )


def _verdict(raw: Any) -> str:
    if raw not in VERDICTS:
        raise InvalidInput([{"field": "verdict", "reason": f"must be one of {', '.join(VERDICTS)}"}])
    return str(raw)


def _record(services: Services, row_check: Any, nid: int, verdict: str, channel: str) -> FeedbackOut:
    """Store the verdict on notification ``nid`` if ``row_check(row)`` lets the caller reach it (else 404),
    adapt its rule, count it."""
    with services.db.write() as s:
        row = s.get(store.Notification, nid)
        if row is None or not row_check(row):
            raise HTTPException(404, f"no notification {nid} reachable here")
        done = feedback.record_verdict(s, row, verdict, channel, datetime.now(UTC))
        adapted = None
        if done.adaptation is not None and row.subscription_id and row.rule_id:
            sub = s.get(store.Subscription, row.subscription_id)
            adapted = sensitivity(sub, row.rule_id) if sub is not None else None
        record = done.record
        out = FeedbackOut.model_validate(
            {
                "notification_id": str(nid),
                "verdict": record.verdict,
                "previous": done.previous,
                "channel": record.channel,
                "updated_at": record.updated_at,
                "adapted": adapted,
            }
        )
    if done.previous != verdict:
        FEEDBACK.labels(verdict, record.kind, record.rule_kind, channel).inc()
    if done.adaptation is not None:
        direction = "less" if done.adaptation.reason in ("not_useful", "too_many") else "more"
        RULES_ADAPTED.labels(direction, done.adaptation.mode).inc()
    return out


@router.post(
    "/users/{user_id}/notifications/{notification_id}/feedback",
    responses={404: {"description": "no such notification for this user"}},
)
async def give_feedback(
    user_id: UserId, notification_id: str, body: FeedbackIn, principal: PrincipalDep, services: ServicesDep
) -> FeedbackOut:
    """Rate a notification ``useful``, ``not_useful`` or ``too_many``; the latest verdict wins. A rule whose
    notifications keep being rated negatively becomes less sensitive (see the README)."""
    authorize(principal, user_id)
    nid = parse_row_id(notification_id, "notification_id", "must be a notification id")
    return await run_in_threadpool(
        _record, services, lambda row: row.user_id == user_id, nid, body.verdict, "in_app"
    )


def _token_check(token: str) -> Any:
    def check(row: store.Notification) -> bool:
        expected = str(row.context.get("click_token") or "")
        return bool(expected) and hmac.compare_digest(expected, token)

    return check


_LINK_DOC = (
    "A feedback link of an e-mail, web push or webhook payload: the notification's token proves the link. "
    "An unknown id and a wrong token get the same 404, so a token cannot be probed for."
)
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Pulse: thanks for your feedback</title></head>
<body style="font-family:Helvetica,Arial,sans-serif;max-width:32rem;margin:3rem auto;color:#18181b;">
<h1 style="font-size:1.3rem;">Thanks, noted: {label}</h1>
<p>Pulse uses your verdicts to decide what is worth telling you. Changed your mind?</p>
<p>{links}</p>
</body></html>
"""
_LABELS = {"useful": "useful", "not_useful": "not useful", "too_many": "too many alerts like this"}


@router.get(
    "/callbacks/feedback/{notification_id}",
    response_class=HTMLResponse,
    responses={404: {"description": "unknown notification or wrong token"}},
    description=_LINK_DOC + " Records ``verdict`` and answers a short page.",
)
async def feedback_link(
    notification_id: str,
    token: Annotated[str, Query(max_length=100)],
    verdict: Annotated[str, Query(max_length=20)],
    services: ServicesDep,
    via: Via = "email",
) -> HTMLResponse:
    """A click on a feedback link."""
    nid = parse_row_id(notification_id, "notification_id", "must be a notification id")
    chosen = _verdict(verdict)
    await run_in_threadpool(_record, services, _token_check(token), nid, chosen, via)
    others = " · ".join(
        f'<a href="?token={html.escape(token)}&amp;verdict={v}&amp;via={via}">{_LABELS[v]}</a>'
        for v in VERDICTS
        if v != chosen
    )
    return HTMLResponse(_PAGE.format(label=html.escape(_LABELS[chosen]), links=others))


@router.post(
    "/callbacks/feedback/{notification_id}",
    responses={404: {"description": "unknown notification or wrong token"}},
    description=_LINK_DOC + " For receivers of webhooks and service workers: the verdict in the body.",
)
async def feedback_post(
    notification_id: str,
    token: Annotated[str, Query(max_length=100)],
    body: FeedbackIn,
    services: ServicesDep,
    via: Via = "webhook",
) -> FeedbackOut:
    """A verdict sent with the notification's token."""
    nid = parse_row_id(notification_id, "notification_id", "must be a notification id")
    return await run_in_threadpool(_record, services, _token_check(token), nid, body.verdict, via)


def _reset_by_link(services: Services, nid: int, token: str) -> str:
    """Reset the rule of notification ``nid`` (token-checked, else 404); returns the rule's id."""
    check = _token_check(token)
    with services.db.write() as s:
        row = s.get(store.Notification, nid)
        if row is None or not check(row):
            raise HTTPException(404, f"no notification {nid} reachable here")
        sub = (
            s.get(store.Subscription, row.subscription_id, with_for_update=True)
            if row.subscription_id
            else None
        )
        if sub is None or not row.rule_id or feedback.own_rule(sub, row.rule_id) is None:
            raise HTTPException(404, f"notification {nid} has no rule of yours to reset")
        before = feedback.adaptations(sub).get(row.rule_id)
        feedback.reset(s, sub, [row.rule_id], False, datetime.now(UTC))
        sub.updated_at = datetime.now(UTC)
        s.add(sub)
    if before is not None and before.step > 0:
        RULES_ADAPTED.labels("more", before.mode).inc()
    return row.rule_id


@router.get(
    "/callbacks/feedback/{notification_id}/reset",
    response_class=HTMLResponse,
    responses={404: {"description": "unknown notification, wrong token, or no rule to reset"}},
    description="The link in an adapted rule's notice: puts the rule back to the user's own setting. "
    + _LINK_DOC,
)
async def reset_link(
    notification_id: str, token: Annotated[str, Query(max_length=100)], services: ServicesDep
) -> HTMLResponse:
    """A click on "keep your own setting"."""
    nid = parse_row_id(notification_id, "notification_id", "must be a notification id")
    rule_id = await run_in_threadpool(_reset_by_link, services, nid, token)
    return HTMLResponse(
        _PAGE.format(
            label=f"your rule {html.escape(rule_id)} is back to your own setting",
            links="It adapts to your feedback again from now on.",
        )
    )


# -- sensitivity ------------------------------------------------------------------------------------------


def _own_sub(services: Services, user_id: str, sub_id: str) -> store.Subscription:
    with services.db.read() as s:
        sub = s.get(store.Subscription, sub_id)
    if sub is None or sub.user_id != user_id:
        raise HTTPException(404, f"no subscription {sub_id!r} for user {user_id!r}")
    return sub


def _list(sub: store.Subscription) -> SensitivityList:
    items = [sensitivity(sub, str(r.get("id"))) for r in sub.rules]
    return SensitivityList(items=[i for i in items if i is not None])


@router.get(
    "/users/{user_id}/subscriptions/{sub_id}/sensitivity",
    responses={404: {"description": "no such subscription for this user"}},
)
async def get_sensitivity(
    user_id: UserId, sub_id: str, principal: PrincipalDep, services: ServicesDep
) -> SensitivityList:
    """How far feedback has moved each rule of the subscription from the user's own setting."""
    authorize(principal, user_id)
    return _list(await run_in_threadpool(_own_sub, services, user_id, sub_id))


@router.post(
    "/users/{user_id}/subscriptions/{sub_id}/sensitivity/reset",
    responses={404: {"description": "no such subscription for this user"}},
)
async def reset_sensitivity(
    user_id: UserId, sub_id: str, body: ResetIn, principal: PrincipalDep, services: ServicesDep
) -> SensitivityList:
    """Put rules back to the user's own setting; with ``pin`` they stop adapting."""
    authorize(principal, user_id)
    current = await run_in_threadpool(_own_sub, services, user_id, sub_id)
    known = [str(r.get("id")) for r in current.rules]
    wanted = body.rule_ids if body.rule_ids is not None else known
    unknown = [i for i, rid in enumerate(wanted) if rid not in known]
    if unknown:
        raise InvalidInput(
            [{"field": f"rule_ids.{i}", "reason": "not a rule of this subscription"} for i in unknown]
        )

    def write() -> store.Subscription:
        with services.db.write() as s:
            sub = s.get(store.Subscription, sub_id, with_for_update=True)
            if sub is None:
                raise HTTPException(404, f"no subscription {sub_id!r}")
            before = feedback.adaptations(sub)
            feedback.reset(s, sub, wanted, body.pin, datetime.now(UTC))
            sub.updated_at = datetime.now(UTC)
            s.add(sub)
            s.flush()
        for rid in wanted:
            if rid in before and before[rid].step > 0:
                RULES_ADAPTED.labels("more", before[rid].mode).inc()
        return sub

    return _list(await run_in_threadpool(write))
