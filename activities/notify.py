"""Notification activities: detect significant changes for their watchers, deliver one notification on one
channel, send a digest, and the in-app inbox writer the in-app channel uses.

Detection runs after the pipeline's cache invalidation with the batch's metric changes. It finds only the
subscriptions watching the changed entities (one indexed join through ``notify_subscription_keys``),
evaluates their rules with stored state (hysteresis, cooldown), routes the firings through the user's
hourly budget and quiet hours, and stores each notification under its idempotency key in the same
transaction as the rule state, so that a retried or replayed batch never creates a second notification.

The inputs and results are plain dataclasses: they cross Temporal's data converter and the workflow
sandbox as they are. Times travel as ISO strings for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import select
from sqlmodel import Session, col
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from nftpulse.activities.contracts.pipeline import ChangeSet
from nftpulse.channels.base import (
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    PushSubscription,
    Reconciling,
    TransientDeliveryError,
)
from nftpulse.channels.email import SendGridConfig, SmtpConfig
from nftpulse.channels.push import WebPushConfig
from nftpulse.channels.registry import ChannelRegistry, ChannelsConfig, UnknownChannelError, build_registry
from nftpulse.channels.sms import TwilioConfig
from nftpulse.channels.webhook import WebhookConfig, next_retry_delay
from nftpulse.core.metrics import DELIVERIES, DELIVERY_SECONDS, NOTIFICATIONS_CREATED
from nftpulse.domain.changes import MetricChange
from nftpulse.domain.exposure import (
    REFERENCE_CURRENCY,
    Position,
    collection_position,
    nft_position,
    reference_value,
)
from nftpulse.domain.rules import (
    AlertSeverity,
    BudgetState,
    Candidate,
    DeliveryPreferences,
    DeliveryRoute,
    Evaluation,
    QuietHours,
    Rule,
    RuleState,
    evaluate,
    event_cause,
    idempotency_key,
    route_candidates,
)
from nftpulse.store import entities
from nftpulse.store import notify as store
from nftpulse.store.db import Database
from nftpulse.templates.renderer import (
    DigestContext,
    DigestGroupContext,
    DigestItemContext,
    Holding,
    NotificationContext,
    render,
    render_digest,
)

log = logging.getLogger("pulse.notify")

#: Workflow starts and digest signals one detection sends to Temporal at once.
HANDOFF_CONCURRENCY = 32

#: Pulse channel name → template channel.
TEMPLATE_CHANNEL = {
    "in_app": "in_app",
    "email": "email_html",
    "sms": "sms",
    "push": "push",
    "webhook": "webhook",
}
DEFAULT_CHAIN = ("in_app", "push", "sms")
_UNITS = {
    "trust": "score",
    "trust_score": "score",
    "risk": "level",
    "fraud_findings": "count",
    "fraud_finding": "count",
    "trend": "text",
    "owner": "text",
}

# -- inputs and results ------------------------------------------------------------------------------


@dataclass
class DetectInput:
    """The metric changes of one applied batch, the time they were applied, and what caused them."""

    changes: ChangeSet
    #: ISO-8601 aware time of the change; empty: the activity's own clock. The pipeline leaves it empty
    #: because a workflow's clock stands still while one task runs a chain of local activities; a retry
    #: still answers the same, through the cause's detection record.
    at: str
    #: Identifies the batch (e.g. ``partition@seq``); makes a retried detection return its first answer.
    cause: str | None = None
    #: Instead of ``changes``: detect every batch of changes the pipeline saved for this workflow id
    #: (``store.models.ChangeBatchRecord``), each under its own cause, consuming them.
    outbox: str | None = None


@dataclass
class EscalationSpec:
    """The user's escalation policy for one critical notification."""

    chain: list[str]
    delay_s: float
    max_repeats: int


@dataclass
class NotifyRequest:
    """One notification detection created, and how to deliver it."""

    notification_id: int
    idempotency_key: str
    user_id: str
    kind: str
    severity: str
    entity_key: str
    rule_id: str
    title: str
    magnitude: float
    at: str
    #: now, digest or defer (quiet hours).
    route: str
    channels: list[str]
    not_before: str | None = None
    escalation: EscalationSpec | None = None
    #: ``QuietHours`` fields (with ``tz``), for escalation steps.
    quiet_hours: dict[str, Any] | None = None
    #: ``DigestSchedule`` fields (with ``tz``), for digest routing.
    digest: dict[str, Any] | None = None
    cause: str | None = None


@dataclass
class DetectResult:
    """What detection created; ``notifications`` need delivery (now, deferred or by digest)."""

    notifications: list[NotifyRequest] = field(default_factory=list)
    evaluated: int = 0
    suppressed: int = 0


@dataclass
class DeliverInput:
    """Deliver one notification on one channel."""

    notification_id: int
    channel: str
    #: Escalation step (0: the first send). Repeats re-send on purpose, under a distinct message id.
    step: int = 0


@dataclass
class DeliverResult:
    """The channel's answer; ``already`` when an earlier attempt delivered it (retry or replay)."""

    notification_id: int
    channel: str
    status: str
    provider_message_id: str | None = None
    already: bool = False


@dataclass
class DigestEntry:
    """One pending item of a user's digest (signal payload of the digest workflow)."""

    notification_id: int
    idempotency_key: str
    kind: str
    severity: str
    entity_key: str
    rule_id: str | None
    title: str
    at: str
    magnitude: float = 1.0
    cause: str | None = None
    #: The latest schedule (``DigestSchedule`` fields): a user's edit reaches a running digest this way.
    schedule: dict[str, Any] | None = None


@dataclass
class DigestGroupOut:
    """A digest group as the send activity needs it."""

    kind: str
    entity_key: str
    severity: str
    titles: list[str]
    notification_ids: list[int]


@dataclass
class SendDigestInput:
    """One digest send; ``digest_key`` makes a retried send a no-op on idempotent channels."""

    user_id: str
    digest_key: str
    reason: str
    groups: list[DigestGroupOut]


@dataclass
class SendDigestResult:
    """Channels that carried the digest."""

    digest_key: str
    channels: list[str]
    items: int


@dataclass
class NotificationInput:
    """Input of the per-notification workflow."""

    request: NotifyRequest


@dataclass
class DigestInput:
    """Input of the per-user digest workflow; ``pending`` carries items across continue-as-new."""

    user_id: str
    schedule: dict[str, Any]
    pending: list[DigestEntry] = field(default_factory=list)


def notification_workflow_id(prefix: str, notification_id: int) -> str:
    """Workflow id of a notification's delivery and escalation: the read endpoint signals it."""
    return f"{prefix}notification/{notification_id}"


def digest_workflow_id(prefix: str, user_id: str) -> str:
    """Workflow id of a user's digest."""
    return f"{prefix}digest/{user_id}"


# -- the inbox writer -------------------------------------------------------------------------------------


class DbInboxWriter:
    """The in-app channel's writer: shows the stored notification in the inbox (idempotent: the row
    already exists under its key; this only stamps ``inbox_at`` once). The live stream polls for it."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _write(self, message: OutboundMessage) -> str:
        with self._db.write() as s:
            row = store.by_idempotency_key(s, message.idempotency_key)
            if row is None or row.id is None:
                raise PermanentDeliveryError("in_app", "notification not stored", code="missing")
            if row.inbox_at is None:
                row.inbox_at = datetime.now(UTC)
                s.add(row)
            return str(row.id)

    async def __call__(self, message: OutboundMessage) -> str:
        """Stamp the inbox row; returns its id."""
        return await asyncio.to_thread(self._write, message)


# -- helpers ---------------------------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def parse_time(value: str) -> datetime:
    """An aware UTC datetime from ISO text (naive text is taken as UTC)."""
    parsed = datetime.fromisoformat(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def wallet_key(address: str) -> str:
    """Index key of a wallet: watched by wallet and portfolio subscriptions."""
    return f"wallet:{address.lower()}"


def entity_name(key: str) -> str:
    """A readable name for an entity key when no better one is known."""
    parts = key.split(":")
    short = lambda a: a if len(a) <= 12 else f"{a[:6]}…{a[-4:]}"  # noqa: E731 - local formatting helper
    if parts[0] == "collection" and len(parts) >= 3:
        return f"Collection {short(parts[2])}"
    if parts[0] == "nft" and len(parts) >= 4:
        return f"{short(parts[2])} #{parts[3]}"
    if parts[0] in ("creator", "wallet") and len(parts) >= 2:
        return f"{parts[0].capitalize()} {short(parts[-1])}"
    return key


def entity_url(base: str, key: str) -> str:
    """The API URL of an entity's current state."""
    parts = key.split(":")
    if parts[0] == "collection" and len(parts) >= 3:
        return f"{base}/v1/collections/{parts[1]}/{parts[2]}"
    if parts[0] == "nft" and len(parts) >= 4:
        return f"{base}/v1/nfts/{parts[1]}/{parts[2]}/{parts[3]}"
    return f"{base}/v1/entities/{key}"


def _change_pct(details: dict[str, str], before: Any, after: Any) -> float | None:
    if "change_pct" in details:
        return float(details["change_pct"])
    try:
        b, a = Decimal(str(before)), Decimal(str(after))
    except ArithmeticError:
        return None
    return float((a - b) / b) if b else None


def destinations(user: store.NotifyUser) -> set[str]:
    """Channels the user has an address for (in-app always)."""
    out = {"in_app"}
    if user.email:
        out.add("email")
    if user.phone:
        out.add("sms")
    if user.push_subscriptions:
        out.add("push")
    if any(not w.get("disabled") for w in user.webhooks):
        out.add("webhook")
    return out


class WatcherCache:
    """Who watches each entity (``store.watch_entries``), kept in memory while the watch generation stands
    still: subscriptions change rarely, detection asks for thousands of entities per batch (most of them
    watched by nobody), and the query was a fifth of a busy worker's time. Every subscription change
    moves the generation in its own transaction (``store.replace_subscription_keys``), and the generation
    is read before the watchers, so a detection never keeps watchers older than the generation it saw."""

    def __init__(self, max_keys: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._by_key: dict[str, tuple[store.WatchEntry, ...]] = {}
        self._max = max_keys

    def lookup(self, session: Session, entity_keys: Iterable[str]) -> list[store.WatchEntry]:
        """Like ``store.watch_entries``: by user, then subscription, then entity."""
        keys = set(entity_keys)
        generation = store.watch_generation(session)
        with self._lock:
            if generation != self._generation:
                self._by_key, self._generation = {}, generation
            known = {key: self._by_key[key] for key in keys if key in self._by_key}
        missing = keys - known.keys()
        if missing:
            loaded: dict[str, list[store.WatchEntry]] = {key: [] for key in missing}
            for entry in store.watch_entries(session, missing):
                loaded[entry.entity_key].append(entry)
            fresh = {key: tuple(entries) for key, entries in loaded.items()}
            with self._lock:
                if self._generation == generation:
                    if len(self._by_key) + len(fresh) > self._max:
                        self._by_key = {}
                    self._by_key.update(fresh)
            known.update(fresh)
        found = [entry for entries in known.values() for entry in entries]
        return sorted(found, key=lambda w: (w.user_id, w.subscription_id, w.entity_key))


# -- the activities --------------------------------------------------------------------------------------


class NotifyActivities:
    """Notification activities, built once by the worker.

    ``client`` (with ``task_queue``) lets detection start the per-notification workflows and signal the
    per-user digest workflows itself; without it detection only stores and returns its result and the
    calling workflow starts them (as :func:`workflows.notify.notify_changes` does).
    """

    def __init__(
        self,
        db: Database,
        registry: ChannelRegistry,
        *,
        client: Client | None = None,
        task_queue: str | None = None,
        workflow_id_prefix: str = "",
        public_base_url: str = "http://127.0.0.1:8000",
    ) -> None:
        self._db = db
        self._registry = registry
        self._watchers = WatcherCache()
        self._client = client
        self._task_queue = task_queue
        self._prefix = workflow_id_prefix
        self._base = public_base_url.rstrip("/")

    # -- detection ---------------------------------------------------------------------------------------

    @activity.defn(name="detect_significant_changes")
    async def detect_significant_changes(self, inp: DetectInput) -> DetectResult:
        """Evaluate the watchers' rules on the changes and store the notifications they produce."""
        if inp.outbox is not None:
            result = await asyncio.to_thread(self.detect_saved, inp.outbox, inp.at)
        else:
            result = await asyncio.to_thread(self.detect, inp)
        if self._client is not None and result.notifications:
            await self.dispatch(result)
        return result

    def detect_saved(self, owner: str, at: str = "") -> DetectResult:
        """Detection over the change batches saved for ``owner``, oldest first, one transaction each."""
        with self._db.read() as s:
            batches = entities.change_batches(s, owner)
        merged = DetectResult()
        for batch_id, cause, columns in batches:
            result = self.detect(DetectInput(ChangeSet(**columns), at, cause), consume=batch_id)
            merged.notifications += result.notifications
            merged.evaluated += result.evaluated
            merged.suppressed += result.suppressed
        return merged

    def detect(self, inp: DetectInput, *, consume: int | None = None) -> DetectResult:
        """The synchronous core of detection (one write transaction). ``consume``: the saved change batch
        this detection uses up, deleted in the same transaction."""
        at = parse_time(inp.at) if inp.at else datetime.now(UTC)
        with self._db.write() as s:
            if consume is not None:
                entities.delete_change_batch(s, consume)
            if inp.cause:
                done = s.get(store.DetectionRecord, inp.cause)
                if done is not None:
                    # The first attempt committed: answer the same, never create again.
                    return self._replay(s, done.notification_ids)
            changes = list(inp.changes)
            # The current owner of every changed NFT routes its changes to the wallet holding it, and
            # values rank: one query, made up front only while someone watches a wallet (wallet and
            # portfolio subscriptions); otherwise only for what fired, below.
            facts = (
                store.entity_facts(s, {ch.entity_key for ch in changes}) if store.wallets_watched(s) else {}
            )
            by_entity: dict[str, list[MetricChange]] = {}
            for ch in changes:
                by_entity.setdefault(ch.entity_key, []).append(ch)
                wallets: set[str] = set()
                if ch.metric == "owner":
                    # A transfer concerns the wallets on both sides: wallet and portfolio watchers.
                    wallets |= {
                        side.lower() for side in (ch.before, ch.after) if isinstance(side, str) and side
                    }
                held = facts.get(ch.entity_key)
                if held is not None and held.owner:
                    # Any change of a held NFT (trust, price estimate, risk …) concerns its holder's wallet.
                    wallets.add(held.owner)
                for wallet in sorted(wallets):
                    by_entity.setdefault(wallet_key(wallet), []).append(ch)
            found = self._watchers.lookup(s, by_entity)
            result = DetectResult()
            if not found:
                return result
            # Each subscription's rules parsed once, not once per change: a busy collection has hundreds
            # of watchers and a batch several changed metrics per entity.
            rules_of = {w.subscription_id: _parsed_rules(w.rules_json) for w in found}
            states = store.rule_states(
                s,
                [
                    (w.subscription_id, rule.id, ch.entity_key)
                    for w in found
                    for rule in rules_of[w.subscription_id]
                    for ch in by_entity[w.entity_key]
                    if ch.metric == rule.metric
                ],
            )
            changed_states: dict[tuple[str, str, str], orjson.Fragment] = {}
            fired: dict[str, list[tuple[Candidate, dict[str, Any]]]] = {}
            seen: set[tuple[str, str, str]] = set()
            rule_changes: dict[tuple[str, str], MetricChange] = {}
            # Evaluation is a pure function of (rule, state, change), and the watchers of a busy entity
            # often share all three (one preset, armed and fired together): each distinct triple is
            # evaluated once. Rules with the same definition are the same object (_parsed_rules).
            outcomes: dict[tuple[int, int, str], tuple[Evaluation, orjson.Fragment]] = {}
            for w in found:
                watched = {rule.metric for rule in rules_of[w.subscription_id]}
                for ch in by_entity[w.entity_key]:
                    if ch.metric not in watched:
                        continue
                    # A portfolio holding both sides of a transfer meets the change under two wallet keys.
                    if (w.subscription_id, ch.entity_key, ch.metric) in seen:
                        continue
                    seen.add((w.subscription_id, ch.entity_key, ch.metric))
                    change = rule_changes.get((ch.entity_key, ch.metric))
                    if change is None:
                        change = rule_changes[(ch.entity_key, ch.metric)] = MetricChange(
                            entity_key=ch.entity_key,
                            metric=ch.metric,
                            before=ch.before,
                            after=ch.after,
                            at=at,
                            cause=f"{inp.cause}:{ch.entity_key}:{ch.metric}" if inp.cause else None,
                        )
                    for rule in rules_of[w.subscription_id]:
                        if not rule.applies_to(change):
                            continue
                        result.evaluated += 1
                        triple = (w.subscription_id, rule.id, ch.entity_key)
                        stored_state = states.get(triple, "")
                        same = (id(rule), id(change), stored_state)
                        outcome = outcomes.get(same)
                        if outcome is None:
                            previous = orjson.loads(stored_state) if stored_state else None
                            ev = evaluate(rule, RuleState.from_dict(previous), change)
                            outcome = outcomes[same] = (ev, orjson.Fragment(orjson.dumps(ev.state.to_dict())))
                        ev, changed_states[triple] = outcome
                        if not ev.fired or ev.severity is None or ev.explanation is None:
                            result.suppressed += ev.suppressed is not None
                            continue
                        key = idempotency_key(w.user_id, rule.id, ch.entity_key, event_cause(change))
                        candidate = Candidate(
                            idempotency_key=key,
                            kind=ev.kind,
                            severity=ev.severity,
                            entity_key=ch.entity_key,
                            at=at,
                            magnitude=ev.magnitude,
                        )
                        info = {
                            "rule": rule,
                            "subscription": w.subscription_id,
                            "explanation": ev.explanation,
                            "cause": change.cause,
                        }
                        fired.setdefault(w.user_id, []).append((candidate, info))
            store.save_rule_states(s, changed_states, at)
            created: list[int] = []
            # Only now the users and subscriptions whose rules fired, the users locked for their budget.
            users = store.users_to_update(s, fired, lock=not self._db.is_sqlite)
            subscriptions = store.subscriptions_by_id(
                s, {info["subscription"] for items in fired.values() for _, info in items}
            )
            for items in fired.values():
                for _, info in items:
                    info["subscription"] = subscriptions[info["subscription"]]
            # Values rank what fired by exposure: read for the fired entities not read above.
            fired_keys = {c.entity_key for items in fired.values() for c, _ in items}
            facts |= store.entity_facts(s, fired_keys - facts.keys())
            positions = _positions(s, fired, facts, at)
            pending: list[tuple[store.NotifyUser, list[store.Notification]]] = []
            for user_id, items in fired.items():
                user = users.get(user_id)
                if user is None:
                    continue  # deleted since its subscription was read
                infos: dict[str, dict[str, Any]] = {}
                candidates: list[Candidate] = []
                for c, info in items:
                    position, exposure = positions.get((user_id, c.entity_key), (None, Decimal(0)))
                    infos[c.idempotency_key] = {**info, "position": position}
                    candidates.append(c.model_copy(update={"exposure": exposure}))
                decisions, budget = store_route(user, candidates, at)
                user.budget = budget.to_dict()
                s.add(user)
                # Decisions come most exposed first. The inbox lists newest (highest id) first, so the
                # batch is stored in reverse: the largest position tops the inbox, and is started first.
                pending.append(
                    (
                        user,
                        [
                            self._row(user, decision, infos[decision.candidate.idempotency_key], at)
                            for decision in reversed(decisions)
                        ],
                    )
                )
            # All users' notifications stored at once; ids follow the order above.
            stored = iter(store.insert_notifications(s, [row for _, rows in pending for row in rows]))
            workflow_ids: dict[int, str] = {}
            in_inbox: list[store.Notification] = []
            for user, rows in pending:
                requests: list[NotifyRequest] = []
                for _ in rows:
                    row, new = next(stored)
                    if new and row.id is not None:
                        NOTIFICATIONS_CREATED.labels(row.kind, row.severity).inc()
                        created.append(row.id)
                        requests.append(self._request(user, row))
                        if row.inbox_at is not None:
                            in_inbox.append(row)  # delivered by this commit: no workflow
                        elif row.workflow_id:
                            workflow_ids[row.id] = row.workflow_id
                result.notifications.extend(reversed(requests))
            store.set_workflow_ids(s, workflow_ids)
            store.insert_inbox_deliveries(s, [row.id or 0 for row in in_inbox], at)
            for row in in_inbox:
                _observe_delivery("in_app", "delivered", row.created_at)
            if inp.cause:
                s.add(store.DetectionRecord(cause=inp.cause, notification_ids=created, created_at=at))
            return result

    def _replay(self, s: Any, ids: list[int]) -> DetectResult:
        rows = s.execute(select(store.Notification).where(col(store.Notification.id).in_(ids))).scalars()
        result = DetectResult()
        for row in sorted(rows, key=lambda r: r.id or 0):
            user = s.get(store.NotifyUser, row.user_id)
            if user is not None:
                result.notifications.append(self._request(user, row))
        return result

    def _row(
        self, user: store.NotifyUser, decision: Any, info: dict[str, Any], at: datetime
    ) -> store.Notification:
        c: Candidate = decision.candidate
        rule: Rule = info["rule"]
        exp = info["explanation"]
        ctx = NotificationContext(
            idempotency_key=c.idempotency_key,
            severity=c.severity.value,
            timezone=user.timezone,
            entity_key=c.entity_key,
            entity_name=entity_name(c.entity_key),
            entity_url=entity_url(self._base, c.entity_key),
            rule={
                "id": rule.id,
                "kind": rule.kind.value,
                "metric": rule.metric,
                "level": rule.level,
                "direction": rule.direction if rule.kind.value == "threshold" else None,
                "pct": rule.pct if rule.kind.value == "relative_change" else None,
                "window_s": rule.window_s if rule.kind.value == "relative_change" else None,
                "name": info["subscription"].label,
            },
            metric=exp.metric,
            before=exp.before,
            after=exp.after,
            unit=_UNITS.get(exp.metric, "number"),
            change_pct=_change_pct(exp.details, exp.before, exp.after) if exp.metric not in _UNITS else None,
            data_at=exp.at,
            detected_at=at,
            holding=_holding(info.get("position")),
            preferences_url=f"{self._base}/v1/users/{user.id}",
        )
        context = ctx.model_dump(mode="json")
        context["explanation"] = exp.model_dump(mode="json")
        context["subscription_id"] = info["subscription"].id
        context["locale"] = user.locale
        title, body, inbox_at = "", "", None
        inbox_only = _inbox_only(
            decision.route.value,
            _channels(user, c.kind.value, self._available(user)),
            critical=c.severity is AlertSeverity.CRITICAL,
            not_before=decision.not_before,
        )
        if inbox_only:
            # Storing it is its whole delivery: it is in the inbox once this transaction commits. Its
            # text is rendered when read (inbox_text): most are never opened, and rendering here was a
            # third of detection's time.
            inbox_at = datetime.now(UTC)
        else:
            # Its workflow and digest show the title.
            rendered = render(c.kind.value, "in_app", user.locale, ctx)
            title, body = rendered.subject[:500], rendered.text
        return store.Notification(
            idempotency_key=c.idempotency_key,
            user_id=user.id,
            subscription_id=info["subscription"].id,
            rule_id=rule.id,
            kind=c.kind.value,
            severity=c.severity.value,
            entity_key=c.entity_key,
            title=title,
            body=body,
            inbox_at=inbox_at,
            context=context,
            route=decision.route.value,
            not_before=decision.not_before,
            magnitude=c.magnitude,
            cause=info["cause"],
            # Notification workflows are named after the row id, known only after the insert (_request).
            workflow_id=digest_workflow_id(self._prefix, user.id)
            if decision.route is DeliveryRoute.DIGEST
            else None,
            created_at=at,
        )

    def _available(self, user: store.NotifyUser) -> set[str]:
        """The channels the user set up that this worker can send on."""
        return destinations(user) & ({"in_app"} | set(self._registry.names()))

    def _request(self, user: store.NotifyUser, row: store.Notification) -> NotifyRequest:
        assert row.id is not None
        if row.route != DeliveryRoute.DIGEST.value and row.workflow_id != notification_workflow_id(
            self._prefix, row.id
        ):
            # The id exists only after the insert: point the row at its workflow for the read signal.
            row.workflow_id = notification_workflow_id(self._prefix, row.id)
        available = self._available(user)
        channels = _channels(user, row.kind, available)
        escalation = None
        if row.severity == AlertSeverity.CRITICAL.value:
            spec = user.escalation or {}
            chain = [c for c in spec.get("chain", DEFAULT_CHAIN) if c in available] or ["in_app"]
            escalation = EscalationSpec(
                chain=chain,
                delay_s=float(spec.get("delay_s", 900.0)),
                max_repeats=int(spec.get("max_repeats", 1)),
            )
        quiet = dict(user.quiet_hours, tz=user.timezone) if user.quiet_hours else None
        if quiet is not None:
            quiet["allow_critical"] = user.critical_breakthrough
        return NotifyRequest(
            notification_id=row.id,
            idempotency_key=row.idempotency_key,
            user_id=user.id,
            kind=row.kind,
            severity=row.severity,
            entity_key=row.entity_key,
            rule_id=row.rule_id or "",
            title=row.title,
            magnitude=row.magnitude,
            at=_iso(row.created_at),
            route=row.route,
            channels=channels,
            not_before=_iso(row.not_before) if row.not_before else None,
            escalation=escalation,
            quiet_hours=quiet,
            digest=dict(user.digest, tz=user.timezone) if user.digest else None,
            cause=row.cause,
        )

    async def dispatch(self, result: DetectResult) -> None:
        """Start each notification's workflow, or hand it to the user's digest; idempotent by workflow id."""
        assert self._client is not None and self._task_queue is not None
        # In-app only, due now and not critical: detection stored it in the inbox, which is its whole
        # delivery, so it needs no workflow of its own (a workflow per notification would cap delivery
        # at Temporal's rate for workflows, tens per second on one machine).
        # Concurrently, within a bound: one at a time, a batch that sends a thousand items to digests
        # holds up its shard's next batch (and every later in-app delivery) for seconds.
        slots = asyncio.Semaphore(HANDOFF_CONCURRENCY)

        async def hand_off(req: NotifyRequest) -> None:
            async with slots:
                await self._hand_off(req)

        await asyncio.gather(*(hand_off(req) for req in result.notifications if not _inbox_is_enough(req)))

    async def _hand_off(self, req: NotifyRequest) -> None:
        assert self._client is not None and self._task_queue is not None
        if req.route == DeliveryRoute.DIGEST.value and req.digest is not None:
            await self._client.start_workflow(
                "Digest",
                DigestInput(req.user_id, req.digest),
                id=digest_workflow_id(self._prefix, req.user_id),
                task_queue=self._task_queue,
                start_signal="add",
                start_signal_args=[digest_entry(req)],
            )
            return
        # A retried detection: the first attempt may have started it already.
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await self._client.start_workflow(
                "Notification",
                NotificationInput(req),
                id=notification_workflow_id(self._prefix, req.notification_id),
                task_queue=self._task_queue,
            )

    # -- delivery ----------------------------------------------------------------------------------------

    @activity.defn(name="deliver")
    async def deliver(self, inp: DeliverInput) -> DeliverResult:
        """Render and send one notification on one channel; maps delivery errors to Temporal's retry rules."""
        loaded = await asyncio.to_thread(self._load, inp.notification_id)
        if loaded is None:
            raise ApplicationError(
                f"notification {inp.notification_id} not found", type="NotFound", non_retryable=True
            )
        row, user, done = loaded
        current = next((d for d in done if d.channel == inp.channel), None)
        if (
            inp.step == 0
            and current is not None
            and store.STATUS_RANK.get(current.status, -1) >= store.STATUS_RANK["sent"]
        ):
            # An earlier attempt (or the workflow's previous run) delivered it: never send twice.
            return DeliverResult(row.id or 0, inp.channel, current.status, current.provider_message_id, True)
        nid = row.id or 0
        reconciling = self._reconciling(inp.channel)
        if reconciling is not None:
            earlier = await self._earlier_send(row, user, inp, reconciling)
            if earlier is not None:
                return earlier
        try:
            receipt = await self._send(row, user, inp.channel, inp.step)
        except TransientDeliveryError as exc:
            # A lost answer leaves the send record pending, so that the retry looks before it sends.
            finished = None if exc.outcome_unknown or reconciling is None else "failed"
            await asyncio.to_thread(
                self._record, nid, inp.channel, "queued", None, str(exc), inp.step, finished
            )
            delay = exc.retry_after
            if inp.channel == "webhook":
                # Standard Webhooks' schedule (5 s, 5 min, 30 min, …) unless the receiver asked for longer.
                scheduled = next_retry_delay(activity.info().attempt)
                delay = max(delay or 0.0, scheduled or 0.0) or None
            raise ApplicationError(
                str(exc), type="TransientDeliveryError", next_retry_delay=_seconds(delay)
            ) from exc
        except (PermanentDeliveryError, UnknownChannelError) as exc:
            DELIVERIES.labels(inp.channel, "failed").inc()
            finished = "failed" if reconciling is not None else None
            await asyncio.to_thread(
                self._record, nid, inp.channel, "failed", None, str(exc), inp.step, finished
            )
            raise ApplicationError(str(exc), type="PermanentDeliveryError", non_retryable=True) from exc
        await asyncio.to_thread(
            self._record,
            nid,
            inp.channel,
            receipt.status,
            receipt.provider_message_id,
            None,
            inp.step,
            "sent" if reconciling is not None else None,
        )
        _observe_delivery(inp.channel, receipt.status, row.created_at)
        return DeliverResult(nid, inp.channel, receipt.status, receipt.provider_message_id)

    def _reconciling(self, channel_name: str) -> Reconciling | None:
        """The channel, if it can look up messages an earlier attempt may have created."""
        try:
            channel = self._registry.get(channel_name)
        except UnknownChannelError:
            return None
        return channel if isinstance(channel, Reconciling) else None

    async def _earlier_send(
        self, row: store.Notification, user: store.NotifyUser, inp: DeliverInput, channel: Reconciling
    ) -> DeliverResult | None:
        """What an earlier attempt of this send already achieved, or None when it is safe to send now.

        The send record is written before the provider is called. Finding it pending on a retry means an
        earlier attempt timed out or died after it may have reached the provider: the provider's message
        list answers whether the message exists, and if it does, its id is recorded instead of sending a
        second one.
        """
        nid = row.id or 0
        earlier = await asyncio.to_thread(self._begin_send, nid, inp.channel, inp.step)
        if earlier is None:
            return None
        outcome, since, provider_id = earlier
        if outcome == "sent":
            return DeliverResult(nid, inp.channel, "sent", provider_id, True)
        try:
            message = self._message(row, user, inp.channel, inp.step)
        except PermanentDeliveryError:
            return None  # the send itself reports it
        try:
            found = await channel.find_sent(message, since)
        except TransientDeliveryError as exc:
            raise ApplicationError(
                str(exc), type="TransientDeliveryError", next_retry_delay=_seconds(exc.retry_after)
            ) from exc
        if found is None:
            return None
        log.info(
            "notify.send_reconciled",
            extra={"notification_id": nid, "channel": inp.channel, "provider_id": found.provider_message_id},
        )
        await asyncio.to_thread(
            self._record, nid, inp.channel, found.status, found.provider_message_id, None, inp.step, "sent"
        )
        _observe_delivery(inp.channel, found.status, row.created_at)
        return DeliverResult(nid, inp.channel, found.status, found.provider_message_id, True)

    def _begin_send(
        self, notification_id: int, channel: str, step: int
    ) -> tuple[str, datetime, str | None] | None:
        """Open the send record; returns (outcome, started_at, provider id) of an earlier attempt's record
        that is still pending or sent, None when this is the first attempt (or the last one failed)."""
        now = datetime.now(UTC)
        with self._db.write() as s:
            record = s.get(store.SendRecord, (notification_id, channel, step))
            earlier = (
                (record.outcome, record.started_at, record.provider_message_id)
                if record is not None and record.outcome in ("pending", "sent")
                else None
            )
            store.begin_send(s, notification_id, channel, step, now)
            return earlier

    def _load(
        self, notification_id: int
    ) -> tuple[store.Notification, store.NotifyUser, list[store.Delivery]] | None:
        with self._db.read() as s:
            row = s.get(store.Notification, notification_id)
            if row is None:
                return None
            user = s.get(store.NotifyUser, row.user_id)
            if user is None:
                return None
            return row, user, store.deliveries_for(s, [notification_id])[notification_id]

    def _record(
        self,
        notification_id: int,
        channel: str,
        status: str,
        provider_id: str | None,
        error: str | None,
        step: int = 0,
        finished: str | None = None,
    ) -> None:
        """Store an attempt's outcome; ``finished`` also closes its send record (sent or failed) in the
        same transaction, so the SID is never stored without the record saying so."""
        now = datetime.now(UTC)
        with self._db.write() as s:
            store.upsert_delivery(
                s,
                notification_id,
                channel,
                status,
                now,
                provider_message_id=provider_id,
                error=error,
                attempt=True,
            )
            if finished is not None:
                store.finish_send(s, notification_id, channel, step, finished, now, provider_id)

    def _disable(self, user_id: str, channel: str, address: str) -> None:
        """A destination answered "gone" (410, expired push subscription): stop sending to it."""
        with self._db.write() as s:
            user = s.get(store.NotifyUser, user_id, with_for_update=not self._db.is_sqlite)
            if user is None:
                return
            if channel == "webhook":
                user.webhooks = [
                    dict(w, disabled=True) if w.get("url") == address else w for w in user.webhooks
                ]
            elif channel == "push":
                user.push_subscriptions = [p for p in user.push_subscriptions if p.get("endpoint") != address]
            s.add(user)

    def _message(
        self, row: store.Notification, user: store.NotifyUser, channel_name: str, step: int = 0
    ) -> OutboundMessage:
        """The rendered message for ``channel_name``, addressed for single-destination channels."""
        template = TEMPLATE_CHANNEL.get(channel_name)
        if template is None:
            raise PermanentDeliveryError(channel_name, "unknown channel", code="unknown_channel")
        context = {k: v for k, v in row.context.items() if k in NotificationContext.model_fields}
        context["timezone"] = user.timezone
        try:
            ctx = NotificationContext.model_validate(context)
        except ValidationError as exc:
            raise PermanentDeliveryError(
                channel_name, f"stored context invalid: {exc}", code="context"
            ) from exc
        rendered = render(row.kind, template, user.locale, ctx)
        base = OutboundMessage(
            # A repeat of an escalation step is a new message for providers that deduplicate by id.
            idempotency_key=row.idempotency_key if step == 0 else f"{row.idempotency_key}_s{step}",
            user_id=user.id,
            kind=row.kind,
            severity=row.severity,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            payload=rendered.data or {"title": rendered.subject, "body": rendered.text},
            locale=user.locale,
            notification_id=str(row.id),
            collapse_key=f"{row.rule_id}:{row.entity_key}",
        )
        if channel_name == "in_app":
            return _with(base, to=user.id)
        if channel_name == "email":
            if not user.email:
                raise PermanentDeliveryError("email", "user has no e-mail address", code="no_destination")
            return _with(base, to=user.email)
        if channel_name == "sms":
            if not user.phone:
                raise PermanentDeliveryError("sms", "user has no phone number", code="no_destination")
            return _with(base, to=user.phone)
        return base

    async def _send(
        self, row: store.Notification, user: store.NotifyUser, channel_name: str, step: int = 0
    ) -> DeliveryReceipt:
        channel = self._registry.get(channel_name)
        base = self._message(row, user, channel_name, step)
        if channel_name in ("in_app", "email", "sms"):
            return await channel.send(base)
        if channel_name == "push":
            targets = [
                (p["endpoint"], _with(base, push_subscription=PushSubscription(**p)))
                for p in user.push_subscriptions
            ]
        else:
            targets = [
                (
                    w["url"],
                    _with(
                        base,
                        to=w["url"],
                        webhook_secret=w.get("secret"),
                        event_type=f"notification.{row.kind}",
                    ),
                )
                for w in user.webhooks
                if not w.get("disabled")
            ]
        return await self._fan_out(user.id, channel_name, channel, targets)

    async def _fan_out(
        self, user_id: str, name: str, channel: Any, targets: list[tuple[str, OutboundMessage]]
    ) -> DeliveryReceipt:
        """Send to every endpoint of a multi-endpoint channel (push subscriptions, webhooks).

        Success on any endpoint is success; endpoints that are gone are disabled; a transient failure of
        any endpoint retries the activity (endpoints are idempotent on the message id, so the ones that
        succeeded deduplicate).
        """
        if not targets:
            raise PermanentDeliveryError(name, "no active endpoint", code="no_destination")
        receipts: list[DeliveryReceipt] = []
        transient: TransientDeliveryError | None = None
        permanent: PermanentDeliveryError | None = None
        for address, message in targets:
            try:
                receipts.append(await channel.send(message))
            except TransientDeliveryError as exc:
                transient = exc
            except PermanentDeliveryError as exc:
                permanent = exc
                if exc.disable_endpoint:
                    await asyncio.to_thread(self._disable, user_id, name, address)
        if transient is not None:
            raise transient
        if receipts:
            return receipts[0]
        assert permanent is not None
        raise permanent

    # -- digests -----------------------------------------------------------------------------------------

    @activity.defn(name="send_digest")
    async def send_digest(self, inp: SendDigestInput) -> SendDigestResult:
        """Send one digest on the user's digest channels and show its items in the inbox.

        Each channel gets the digest templates (``templates/sources/*/digest.j2``) rendered in the user's
        locale and time zone, with the items' stored titles and times grouped by kind, then entity.
        """
        loaded = await asyncio.to_thread(self._digest_load, inp)
        if loaded is None:
            raise ApplicationError(f"user {inp.user_id} not found", type="NotFound", non_retryable=True)
        user, context = loaded
        ids = [i for g in inp.groups for i in g.notification_ids]
        wanted = (user.preferences or {}).get("digest") or (["email"] if user.email else ["in_app"])
        if context is None:
            wanted = []  # nothing left to show: an empty digest sends nothing
        available = destinations(user) & ({"in_app"} | set(self._registry.names()))
        severity = max((g.severity for g in inp.groups), key=lambda x: AlertSeverity(x).rank)
        sent: list[str] = []
        for name in [c for c in wanted if c in available]:
            if name == "in_app":
                continue  # the items themselves land in the inbox below
            template = TEMPLATE_CHANNEL[name]
            assert context is not None
            rendered = render_digest(template, user.locale, context)
            message = OutboundMessage(
                idempotency_key=inp.digest_key,
                user_id=user.id,
                kind="digest",
                severity=severity,
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                payload=rendered.data or {"title": rendered.subject, "body": rendered.text},
                locale=user.locale,
                event_type="notification.digest",
                collapse_key="digest",
            )
            channel = self._registry.get(name)
            try:
                if name == "webhook":
                    targets = [
                        (w["url"], _with(message, to=w["url"], webhook_secret=w.get("secret")))
                        for w in user.webhooks
                        if not w.get("disabled")
                    ]
                    await self._fan_out(user.id, name, channel, targets)
                elif name == "push":
                    targets = [
                        (p["endpoint"], _with(message, push_subscription=PushSubscription(**p)))
                        for p in user.push_subscriptions
                    ]
                    await self._fan_out(user.id, name, channel, targets)
                else:
                    await channel.send(_with(message, to=user.email if name == "email" else user.phone or ""))
            except TransientDeliveryError as exc:
                raise ApplicationError(
                    str(exc), type="TransientDeliveryError", next_retry_delay=_seconds(exc.retry_after)
                ) from exc
            except PermanentDeliveryError as exc:
                log.warning("notify.digest_channel_failed", extra={"channel": name, "error": str(exc)})
                continue
            sent.append(name)
        await asyncio.to_thread(self._mark_delivered, ids, sent)
        return SendDigestResult(inp.digest_key, ["in_app", *sent], len(ids))

    def _digest_load(self, inp: SendDigestInput) -> tuple[store.NotifyUser, DigestContext | None] | None:
        """The user and the digest's template context (items' titles, severities and times from their
        stored notifications; the group's titles where a row is gone)."""
        with self._db.read() as s:
            user = s.get(store.NotifyUser, inp.user_id)
            if user is None:
                return None
            ids = [i for g in inp.groups for i in g.notification_ids]
            stored: list[store.Notification] = list(
                s.execute(select(store.Notification).where(col(store.Notification.id).in_(ids))).scalars()
            )
            rows = {r.id: r for r in stored if r.id is not None}
        now = datetime.now(UTC)
        groups: list[DigestGroupContext] = []
        for g in inp.groups:
            found = sorted(
                (rows[i] for i in g.notification_ids if i in rows), key=lambda r: (r.created_at, r.id or 0)
            )
            items = [
                DigestItemContext(title=inbox_text(r)[0], severity=r.severity, at=r.created_at) for r in found
            ] or [DigestItemContext(title=t, severity=g.severity, at=now) for t in g.titles]
            if not items:
                continue
            groups.append(
                DigestGroupContext(
                    kind=g.kind,  # type: ignore[arg-type]
                    entity_key=g.entity_key,
                    entity_name=entity_name(g.entity_key),
                    entity_url=entity_url(self._base, g.entity_key),
                    severity=g.severity,  # type: ignore[arg-type]
                    items=items,
                )
            )
        if not groups:
            return user, None
        context = DigestContext(
            digest_key=inp.digest_key,
            reason=inp.reason if inp.reason in ("schedule", "magnitude", "manual") else "schedule",  # type: ignore[arg-type]
            timezone=user.timezone,
            generated_at=now,
            groups=groups,
            inbox_url=f"{self._base}/v1/users/{user.id}/notifications",
            preferences_url=f"{self._base}/v1/users/{user.id}",
        )
        return user, context

    def _user(self, user_id: str) -> store.NotifyUser | None:
        with self._db.read() as s:
            return s.get(store.NotifyUser, user_id)

    def _mark_delivered(self, ids: list[int], channels: list[str]) -> None:
        """In the inbox (delivered) and, for ``channels``, sent."""
        now = datetime.now(UTC)
        with self._db.write() as s:
            rows: Iterable[store.Notification] = s.execute(
                select(store.Notification).where(col(store.Notification.id).in_(ids))
            ).scalars()
            found: list[int] = []
            for row in rows:
                if row.inbox_at is None:
                    row.inbox_at = now
                    s.add(row)
                _observe_delivery("in_app", "delivered", row.created_at)
                found.append(row.id or 0)
            store.upsert_deliveries(
                s,
                [(nid, "in_app", "delivered") for nid in found]
                + [(nid, name, "sent") for nid in found for name in channels],
                now,
            )


def _positions(
    s: Any,
    fired: dict[str, list[tuple[Candidate, dict[str, Any]]]],
    facts: dict[str, store.EntityFacts],
    at: datetime,
) -> dict[tuple[str, str], tuple[Position | None, Decimal]]:
    """The position (and its value in ETH) each firing user holds in each fired entity.

    Only users with firings are looked at: their portfolio wallets (one query), the tokens those wallets
    hold in fired collections (one grouped query, only when a collection fired for a user with wallets)
    and the rates of non-ETH positions.
    """
    if not fired:
        return {}
    wallets = store.portfolio_wallets(s, fired)
    wanted_collections = {
        c.entity_key
        for user_id, items in fired.items()
        if wallets.get(user_id)
        for c, _ in items
        if c.entity_key.startswith("collection:")
    }
    every_wallet = {w for ws in wallets.values() for w in ws}
    counts = store.held_counts(s, wanted_collections, every_wallet) if wanted_collections else {}
    out: dict[tuple[str, str], Position | None] = {}
    for user_id, items in fired.items():
        mine = wallets.get(user_id) or set()
        for c, _ in items:
            fact = facts.get(c.entity_key)
            if not mine or fact is None or (user_id, c.entity_key) in out:
                continue
            if fact.kind == "nft":
                position = nft_position(
                    c.entity_key, fact.owner, mine, fact.price_estimate, fact.last_sale, fact.currency
                )
            else:
                held = sum(counts.get((c.entity_key, w), 0) for w in mine)
                position = collection_position(c.entity_key, held, fact.floor, fact.currency)
            out[(user_id, c.entity_key)] = position
    currencies = {p.currency for p in out.values() if p is not None}
    rates = store.rates_to(s, currencies, REFERENCE_CURRENCY, at) if currencies - {REFERENCE_CURRENCY} else {}
    return {k: (p, reference_value(p, rates)) for k, p in out.items()}


_RULES: dict[str, list[Rule]] = {}
_RULES_MAX = 100_000


def _parsed_rules(rules_json: str) -> list[Rule]:
    """A subscription's rules (their stored JSON text), validated once per distinct definition: a busy
    collection's watchers are read for every batch, and validating each time was a tenth of detection.
    Rules are frozen, so the cached objects are safely shared."""
    rules = _RULES.get(rules_json)
    if rules is None:
        if len(_RULES) >= _RULES_MAX:
            _RULES.clear()
        rules = _RULES[rules_json] = [Rule.model_validate(item) for item in orjson.loads(rules_json)]
    return rules


def _channels(user: store.NotifyUser, kind: str, available: set[str]) -> list[str]:
    """The channels the user wants ``kind`` on, among ``available``; the inbox when none is."""
    prefs = user.preferences or {}
    wanted = list(prefs.get(kind) or prefs.get("default") or ["in_app"])
    return [c for c in wanted if c in available] or ["in_app"]


def inbox_text(row: store.Notification) -> tuple[str, str]:
    """Title and body of an inbox row: as stored when it was rendered at detection, else rendered now
    from its stored context in the locale the user had then."""
    if row.title:
        return row.title, row.body
    rendered = render(row.kind, "in_app", str(row.context.get("locale") or "en"), row.context)
    return rendered.subject[:500], rendered.text


def _holding(position: Position | None) -> Holding | None:
    """The template's holding line for a position."""
    if position is None:
        return None
    return Holding(
        label=entity_name(position.entity_key),
        quantity=position.quantity,
        value=position.value,
        currency=position.currency,
    )


def _inbox_only(route: str, channels: list[str], *, critical: bool, not_before: object) -> bool:
    """Whether storing a notification in the inbox is its whole delivery: due now, in-app only and not
    critical (a critical one escalates)."""
    return route == DeliveryRoute.NOW.value and channels == ["in_app"] and not critical and not_before is None


def _inbox_is_enough(req: NotifyRequest) -> bool:
    return _inbox_only(
        req.route, req.channels, critical=req.escalation is not None, not_before=req.not_before
    )


def _observe_delivery(channel: str, status: str, created_at: datetime) -> None:
    """Count a delivery outcome; a notification is created right after its event is processed, so its
    age is the latency from processed to delivered."""
    DELIVERIES.labels(channel, status).inc()
    if status in ("sent", "delivered"):
        created = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
        DELIVERY_SECONDS.labels(channel).observe(max(0.0, (datetime.now(UTC) - created).total_seconds()))


def channels_config(settings: Any) -> ChannelsConfig:
    """Provider configuration from settings.

    Read with ``getattr`` so that it works before (and after) the proposed ``PULSE_*`` fields exist in
    ``core/settings.py``; a provider whose fields are unset is simply absent from the registry.
    """

    def get(name: str, default: Any = None) -> Any:
        return getattr(settings, name, default)

    base = get("public_base_url")
    sendgrid = (
        SendGridConfig(api_key=get("sendgrid_api_key"), from_email=get("email_from", "alerts@pulse.invalid"))
        if get("sendgrid_api_key")
        else None
    )
    smtp = (
        SmtpConfig(
            host=get("smtp_host"),
            port=int(get("smtp_port", 587)),
            from_email=get("email_from", "alerts@pulse.invalid"),
            username=get("smtp_username"),
            password=get("smtp_password"),
        )
        if get("smtp_host")
        else None
    )
    twilio = (
        TwilioConfig(
            account_sid=get("twilio_account_sid"),
            auth_token=get("twilio_auth_token"),
            from_number=get("twilio_from_number"),
            messaging_service_sid=get("twilio_messaging_service_sid"),
            status_callback_url=f"{base.rstrip('/')}/v1/callbacks/twilio" if base else None,
        )
        if get("twilio_account_sid") and get("twilio_auth_token")
        else None
    )
    webpush = (
        WebPushConfig(vapid_private_key=get("vapid_private_key"), vapid_subject=get("vapid_subject"))
        if get("vapid_private_key") and get("vapid_subject")
        else None
    )
    webhook = WebhookConfig(allow_private=bool(get("allow_private_webhooks", False)))
    return ChannelsConfig(sendgrid=sendgrid, smtp=smtp, twilio=twilio, webpush=webpush, webhook=webhook)


def build_notify_activities(
    settings: Any, db: Database, client: Client, task_queue: str, workflow_id_prefix: str = ""
) -> tuple[NotifyActivities, ChannelRegistry]:
    """What the worker needs: the activities (with a client, so detection starts the delivery workflows)
    and the registry to close on shutdown (``await registry.aclose()``)."""
    registry = build_registry(channels_config(settings), inbox_writer=DbInboxWriter(db))
    acts = NotifyActivities(
        db,
        registry,
        client=client,
        task_queue=task_queue,
        workflow_id_prefix=workflow_id_prefix,
        public_base_url=getattr(settings, "public_base_url", None) or "http://127.0.0.1:8000",
    )
    return acts, registry


def store_route(
    user: store.NotifyUser, candidates: list[Candidate], at: datetime
) -> tuple[list[Any], BudgetState]:
    """Route a user's firings through their budget and quiet hours (in the user's time zone)."""
    quiet = None
    if user.quiet_hours:
        quiet = QuietHours(
            start=user.quiet_hours["start"],
            end=user.quiet_hours["end"],
            tz=user.timezone,
            allow_critical=user.critical_breakthrough,
        )
    prefs = DeliveryPreferences(
        hourly_budget=user.hourly_budget, quiet_hours=quiet, has_digest=user.digest is not None
    )
    budget = BudgetState.model_validate(user.budget) if user.budget else None
    return route_candidates(candidates, prefs, budget, at)


def digest_entry(req: NotifyRequest) -> DigestEntry:
    """The digest signal payload for a notification routed to the digest."""
    return DigestEntry(
        notification_id=req.notification_id,
        idempotency_key=req.idempotency_key,
        kind=req.kind,
        severity=req.severity,
        entity_key=req.entity_key,
        rule_id=req.rule_id or None,
        title=req.title,
        at=req.at,
        magnitude=req.magnitude,
        cause=req.cause,
        schedule=req.digest,
    )


def _with(message: OutboundMessage, **changes: Any) -> OutboundMessage:
    return replace(message, **changes)


def _seconds(value: float | None) -> timedelta | None:
    """Retry-After as Temporal's next retry delay (None: the retry policy's own backoff)."""
    return timedelta(seconds=value) if value else None
