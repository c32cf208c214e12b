"""Usefulness in the database: users' verdicts on notifications, the adaptive state of their rules
(``domain.feedback``) and the hours at which they read (``domain.sendtime``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from nftpulse.domain.feedback import (
    VERDICTS,
    WINDOW,
    RuleAdaptation,
    adapted_rule,
    dominant_reason,
    mode_for,
    next_step,
)
from nftpulse.domain.rules import Rule
from nftpulse.domain.sendtime import add_read
from nftpulse.store.notify import FeedbackRecord, Notification, NotifyUser, ReadHours, Subscription
from nftpulse.store.sql import one_of
from nftpulse.store.watching import bump_watch_generation


@dataclass(frozen=True)
class Recorded:
    """The outcome of one verdict: the stored record, the verdict it replaced (None: the first), and
    the rule's new adaptation when the verdict changed its sensitivity."""

    record: FeedbackRecord
    previous: str | None
    adaptation: RuleAdaptation | None


def rule_kind_of(row: Notification) -> str:
    """The kind of the rule that produced a notification (``watch`` for alerts without a rule)."""
    rule = row.context.get("rule")
    return str(rule.get("kind") or "unknown") if isinstance(rule, dict) else "unknown"


def record_verdict(
    session: Session, row: Notification, verdict: str, channel: str, now: datetime
) -> Recorded:
    """Store the user's verdict on ``row`` (the latest wins) and adapt the rule that produced it. The same
    verdict again changes nothing."""
    assert row.id is not None
    record = session.get(FeedbackRecord, row.id)
    previous = record.verdict if record is not None else None
    if record is not None and record.verdict == verdict:
        return Recorded(record, previous, None)
    if record is None:
        record = FeedbackRecord(
            notification_id=row.id,
            user_id=row.user_id,
            subscription_id=row.subscription_id,
            rule_id=row.rule_id,
            kind=row.kind,
            rule_kind=rule_kind_of(row),
            channel=channel,
            verdict=verdict,
            created_at=now,
            updated_at=now,
        )
    else:
        record.verdict, record.channel, record.updated_at = verdict, channel, now
    session.add(record)
    session.flush()
    adaptation = None
    if row.subscription_id and row.rule_id:
        adaptation = adapt(session, row.subscription_id, row.rule_id, now)
    return Recorded(record, previous, adaptation)


def recent_verdicts(
    session: Session, subscription_id: str, rule_id: str, since: datetime | None
) -> list[str]:
    """The rule's latest verdicts, newest first, given after ``since``."""
    stmt = select(col(FeedbackRecord.verdict)).where(
        col(FeedbackRecord.subscription_id) == subscription_id, col(FeedbackRecord.rule_id) == rule_id
    )
    if since is not None:
        stmt = stmt.where(col(FeedbackRecord.updated_at) > since)
    stmt = stmt.order_by(col(FeedbackRecord.updated_at).desc(), col(FeedbackRecord.notification_id).desc())
    found: Iterable[Any] = session.execute(stmt.limit(WINDOW)).scalars()
    return [str(v) for v in found]


def adaptations(sub: Subscription) -> dict[str, RuleAdaptation]:
    """A subscription's adaptive state by rule id."""
    return {rid: RuleAdaptation.model_validate(raw) for rid, raw in (sub.adaptation or {}).items()}


def _own_rule(sub: Subscription, rule_id: str) -> dict[str, Any] | None:
    for raw in sub.original_rules or sub.rules:
        if raw.get("id") == rule_id:
            return raw
    return None


def _set_rule(sub: Subscription, rule_id: str, state: RuleAdaptation, session: Session) -> None:
    """Store ``state`` for the rule and rewrite the rule detection evaluates from the user's own one."""
    original = sub.original_rules or [dict(r) for r in sub.rules]
    own = next(r for r in original if r.get("id") == rule_id)
    effective = adapted_rule(own, state.step, state.mode)
    sub.rules = [effective if r.get("id") == rule_id else r for r in sub.rules]
    states = dict(sub.adaptation or {})
    states[rule_id] = state.to_dict()
    adapted = any(RuleAdaptation.model_validate(s).step > 0 for s in states.values())
    sub.adaptation = states
    # The user's own rules are kept while any rule differs from them.
    sub.original_rules = original if adapted else None
    session.add(sub)
    # Detection keeps the rules it evaluates in memory until the watch generation moves.
    bump_watch_generation(session)


def adapt(session: Session, subscription_id: str, rule_id: str, now: datetime) -> RuleAdaptation | None:
    """Apply the adaptation rule (``domain.feedback``) to one rule after a verdict; returns its new state
    when the step changed."""
    # Locked (Postgres; SQLite writes take turns anyway): two verdicts at once must not both step.
    sub = session.get(Subscription, subscription_id, with_for_update=True)
    if sub is None:
        return None
    own = _own_rule(sub, rule_id)
    if own is None:
        return None  # an alert without a rule of the user's (fraud findings, a wallet's activity)
    state = adaptations(sub).get(rule_id, RuleAdaptation())
    if state.pinned:
        return None
    verdicts = recent_verdicts(session, subscription_id, rule_id, state.since)
    step = next_step(verdicts, state.step)
    if step == state.step:
        return None
    user = session.get(NotifyUser, sub.user_id)
    mode = state.mode if state.step > 0 else mode_for(Rule.model_validate(own), bool(user and user.digest))
    new = RuleAdaptation(
        step=step, mode=mode, reason=dominant_reason(verdicts), since=now, announce=True, pinned=False
    )
    _set_rule(sub, rule_id, new, session)
    return new


def reset(session: Session, sub: Subscription, rule_ids: Iterable[str], pin: bool, now: datetime) -> None:
    """Put the given rules back to the user's own setting; ``pin`` stops them adapting again."""
    for rule_id in rule_ids:
        state = RuleAdaptation(step=0, reason="reset", since=now, announce=False, pinned=pin)
        _set_rule(sub, rule_id, state, session)


def forget_adaptation(sub: Subscription) -> None:
    """The user set new rules: they are the user's own, nothing adapted."""
    sub.original_rules = None
    sub.adaptation = None


def due_notice(sub: Subscription, rule_id: str) -> RuleAdaptation | None:
    """The rule's adaptation when its next notification is to explain it."""
    state = adaptations(sub).get(rule_id)
    return state if state is not None and state.announce else None


def announced(sub: Subscription, rule_id: str) -> None:
    """A notification explained the rule's change: the next ones need not."""
    states = dict(sub.adaptation or {})
    if rule_id in states:
        states[rule_id] = {**states[rule_id], "announce": False}
        sub.adaptation = states


def own_rule(sub: Subscription, rule_id: str) -> dict[str, Any] | None:
    """The rule as the user set it."""
    return _own_rule(sub, rule_id)


# -- when users read --------------------------------------------------------------------------------------


def record_read(session: Session, user_id: str, at: datetime) -> None:
    """Count a read by the user at ``at`` in their local hour (one per reading, however many rows)."""
    user = session.get(NotifyUser, user_id)
    tz = user.timezone if user is not None else "UTC"
    row = session.get(ReadHours, user_id)
    if row is None:
        row = ReadHours(user_id=user_id, hours=add_read([], at, tz), reads=1, updated_at=at)
    else:
        row.hours = add_read(row.hours, at, tz)
        row.reads += 1
        row.updated_at = at
    session.add(row)


def read_hours(session: Session, user_ids: Iterable[str]) -> dict[str, list[int]]:
    """The read histograms of these users (users without reads are absent)."""
    wanted = sorted(set(user_ids))
    if not wanted:
        return {}
    rows: Iterable[ReadHours] = session.execute(
        select(ReadHours).where(one_of(session, col(ReadHours.user_id), wanted))
    ).scalars()
    return {r.user_id: list(r.hours) for r in rows}


# -- links ------------------------------------------------------------------------------------------------


def feedback_links(row: Notification, via: str) -> dict[str, str] | None:
    """The notification's feedback links for channel ``via`` (``api.feedback``), one per verdict, proved
    by the notification's own token; None for rows stored without one."""
    token, base = row.context.get("click_token"), row.context.get("click_base")
    if not token or not base or row.id is None:
        return None
    url = f"{base}/v1/callbacks/feedback/{row.id}?token={token}&via={via}"
    return {verdict: f"{url}&verdict={verdict}" for verdict in VERDICTS}


def feedback_url(row: Notification, via: str) -> str | None:
    """Where a machine POSTs ``{"verdict": …}`` for the notification (the webhook payload's link)."""
    token, base = row.context.get("click_token"), row.context.get("click_base")
    if not token or not base or row.id is None:
        return None
    return f"{base}/v1/callbacks/feedback/{row.id}?token={token}&via={via}"


def verdicts_of(session: Session, notification_ids: Iterable[int]) -> dict[int, str]:
    """The current verdict on each of these notifications that has one."""
    wanted = sorted(set(notification_ids))
    if not wanted:
        return {}
    rows: Iterable[Any] = session.execute(
        select(col(FeedbackRecord.notification_id), col(FeedbackRecord.verdict)).where(
            one_of(session, col(FeedbackRecord.notification_id), wanted)
        )
    ).all()
    return {int(nid): str(v) for nid, v in rows}
