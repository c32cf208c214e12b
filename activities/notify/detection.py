"""Detection: evaluate the watchers' rules on a batch's metric changes and store the notifications.

Detection runs after each recalculation with the batch's metric changes. It finds only the subscriptions
watching the changed entities (one indexed join through ``notify_subscription_keys``, kept in memory
while nobody changes a subscription), evaluates their rules with stored state (hysteresis, cooldown),
routes the firings through the user's hourly budget and quiet hours, and stores each notification under
its idempotency key in the same transaction as the rule state, so that a retried or replayed batch never
creates a second notification. With a Temporal client it then starts each notification's workflow (or
hands it to the user's digest) itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import select
from sqlmodel import Session, col
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError

from nftpulse.activities.contracts.notify import (
    DETECT,
    DIGEST_WORKFLOW,
    NOTIFICATION_WORKFLOW,
    DetectInput,
    DetectResult,
    DigestInput,
    EscalationSpec,
    NotificationInput,
    NotifyRequest,
    digest_entry,
    digest_workflow_id,
    notification_workflow_id,
    parse_time,
)
from nftpulse.activities.contracts.pipeline import ChangeSet
from nftpulse.activities.notify import holdings
from nftpulse.activities.notify.common import (
    available_channels,
    channels_for,
    entity_name,
    entity_url,
    inbox_only,
    log,
    observe_delivery,
)
from nftpulse.activities.notify.watchers import WatcherCache, by_watched_key, parsed_rules
from nftpulse.channels.registry import ChannelRegistry
from nftpulse.core.metrics import NOTIFICATIONS_CREATED, RULES_FAILED
from nftpulse.domain.changes import MetricChange
from nftpulse.domain.escalation import DEFAULT_CHAIN, DEFAULT_DELAY_S, DEFAULT_MAX_REPEATS
from nftpulse.domain.evaluation import evaluate
from nftpulse.domain.exposure import (
    Position,
)
from nftpulse.domain.feedback import notice
from nftpulse.domain.routing import (
    BudgetState,
    Candidate,
    DeliveryPreferences,
    DeliveryRoute,
    QuietHours,
    RoutingDecision,
    route_candidates,
)
from nftpulse.domain.rules import (
    ACTIVITY_METRIC,
    FINDING_METRIC,
    WATCH_METRICS,
    AlertSeverity,
    Evaluation,
    Explanation,
    NotificationKind,
    Rule,
    RuleState,
    event_cause,
    finding_alert_severity,
    idempotency_key,
    watch_rule,
)
from nftpulse.domain.sendtime import best_hour, digest_schedule
from nftpulse.domain.sendtime import next_send_at as learned_send_at
from nftpulse.store import entities, feedback, notifications, retractions, watching
from nftpulse.store import notify as store
from nftpulse.store.db import Database
from nftpulse.templates.renderer import Activity, Finding, Holding, NotificationContext, render

#: Workflow starts and digest signals one detection sends to Temporal at once.
HANDOFF_CONCURRENCY = 32

_UNITS = {
    FINDING_METRIC: "text",
    ACTIVITY_METRIC: "text",
    "trust": "score",
    "trust_score": "score",
    "risk": "level",
    "fraud_findings": "count",
    "fraud_finding": "count",
    "trend": "text",
    "owner": "text",
}

#: (subscription, rule, entity): the key of a rule's stored state.
StateKey = tuple[str, str, str]


@dataclass(slots=True)
class Firing:
    """A rule that fired for one user, waiting for routing and storage."""

    candidate: Candidate
    rule: Rule
    subscription_id: str
    explanation: Explanation
    cause: str | None
    #: A watch alert's object (``activities.notify.alerts``): the finding or the wallet's activity.
    payload: dict[str, Any] | None = None


class DetectionActivities:
    """Detection, built once by the worker.

    ``client`` (with ``task_queue``) lets detection start the per-notification workflows and signal the
    per-user digest workflows itself; without it detection only stores and returns its result.
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
        send_time_default_hour: int = 9,
        send_time_min_reads: int = 5,
    ) -> None:
        self._db = db
        self._registry = registry
        self._watchers = WatcherCache()
        self._client = client
        self._task_queue = task_queue
        self._prefix = workflow_id_prefix
        self._base = public_base_url.rstrip("/")
        self._default_hour = send_time_default_hour
        self._min_reads = send_time_min_reads

    @DETECT.implement
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
        merged.notifications += self._corrections()
        return merged

    def _corrections(self) -> list[NotifyRequest]:
        """Corrections the pipeline stored for notifications whose cause it retracted: titled, put in the
        inbox, and handed to delivery like any notification when more than the inbox carries them."""
        out: list[NotifyRequest] = []
        now = datetime.now(UTC)
        with self._db.write() as s:
            for row in retractions.pending_corrections(s):
                user = s.get(store.NotifyUser, row.user_id)
                if user is None:
                    continue
                rendered = render(row.kind, "in_app", user.locale, row.context)
                row.title, row.body = rendered.subject[:500], rendered.text
                channels = channels_for(user, row.kind, available_channels(user, self._registry))
                critical = row.severity == AlertSeverity.CRITICAL.value
                if inbox_only(row.route, channels, critical=critical, not_before=None):
                    row.inbox_at = now
                    s.add(row)
                    s.flush()
                    notifications.insert_inbox_deliveries(s, [row.id or 0], now)
                    continue
                out.append(self._request(user, row))
                s.add(row)
        return out

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
            watched = watching.wallets_watched(s)
            if not watched:
                # A wallet's trades concern only its watchers: nobody watches a wallet, nobody to tell.
                changes = [ch for ch in changes if ch.metric != ACTIVITY_METRIC]
            facts = watching.entity_facts(s, {ch.entity_key for ch in changes}) if watched else {}
            if watching.creators_watched(s):
                # A collection's creator routes its changes to the creator's watchers.
                colls = {ch.entity_key for ch in changes if ch.entity_key.startswith("collection:")}
                facts |= watching.entity_facts(s, colls - facts.keys())
            by_entity = by_watched_key(changes, facts)
            found = self._watchers.lookup(s, by_entity)
            result = DetectResult()
            if not found:
                return result
            fired = _evaluate(s, found, by_entity, at, inp.cause, result)
            _watch_alerts(found, by_entity, at, inp.cause, fired)
            created = self._store(s, fired, facts, at, result)
            if inp.cause:
                s.add(store.DetectionRecord(cause=inp.cause, notification_ids=created, created_at=at))
            return result

    def _store(
        self,
        s: Session,
        fired: dict[str, list[Firing]],
        facts: dict[str, watching.EntityFacts],
        at: datetime,
        result: DetectResult,
    ) -> list[int]:
        """Route each user's firings and store them as notifications; adds the new ones to ``result`` and
        returns their ids."""
        # Only now the users and subscriptions whose rules fired, the users locked for their budget.
        users = watching.users_to_update(s, fired, lock=not self._db.is_sqlite)
        subscriptions = watching.subscriptions_by_id(
            s, {f.subscription_id for fs in fired.values() for f in fs}
        )
        # Values rank what fired by exposure: read for the fired entities not read above.
        fired_keys = {f.candidate.entity_key for fs in fired.values() for f in fs}
        facts |= watching.entity_facts(s, fired_keys - facts.keys())
        positions = holdings.positions(
            s, {user: [f.candidate.entity_key for f in fs] for user, fs in fired.items()}, facts, at
        )
        learning = [u.id for u in users.values() if u.send_time == "learned"]
        read_hours = feedback.read_hours(s, learning) if learning else {}
        hours = {
            uid: best_hour(read_hours.get(uid, []), self._default_hour, self._min_reads) for uid in learning
        }
        pending: list[tuple[store.NotifyUser, list[store.Notification]]] = []
        for user_id, firings in fired.items():
            user = users.get(user_id)
            if user is None:
                continue  # deleted since its subscription was read
            by_key: dict[str, tuple[Firing, Position | None]] = {}
            candidates: list[Candidate] = []
            for f in firings:
                position, exposure = positions.get((user_id, f.candidate.entity_key), (None, Decimal(0)))
                by_key[f.candidate.idempotency_key] = (f, position)
                candidates.append(f.candidate.model_copy(update={"exposure": exposure}))
            decisions, budget = route_user(user, candidates, at)
            decisions = [
                _adjust(
                    user, d, by_key[d.candidate.idempotency_key][0], subscriptions, hours.get(user.id), at
                )
                for d in decisions
            ]
            user.budget = budget.to_dict()
            s.add(user)
            # Decisions come most exposed first. The inbox lists newest (highest id) first, so the
            # batch is stored in reverse: the largest position tops the inbox, and is started first.
            rows = []
            for decision in reversed(decisions):
                firing, position = by_key[decision.candidate.idempotency_key]
                subscription = subscriptions[firing.subscription_id]
                rows.append(self._row(user, decision, firing, subscription, position, at))
            pending.append((user, rows))
        return self._insert(s, pending, at, result, hours)

    def _insert(
        self,
        s: Session,
        pending: list[tuple[store.NotifyUser, list[store.Notification]]],
        at: datetime,
        result: DetectResult,
        hours: dict[str, int] | None = None,
    ) -> list[int]:
        """Store every user's notifications at once (ids follow the order given); the new ones become
        requests in ``result``, and those whose whole delivery is the inbox are recorded delivered."""
        stored = iter(notifications.insert_notifications(s, [row for _, rows in pending for row in rows]))
        created: list[int] = []
        workflow_ids: dict[int, str] = {}
        in_inbox: list[store.Notification] = []
        for user, rows in pending:
            requests: list[NotifyRequest] = []
            for _ in rows:
                row, new = next(stored)
                if new and row.id is not None:
                    NOTIFICATIONS_CREATED.labels(row.kind, row.severity).inc()
                    created.append(row.id)
                    requests.append(self._request(user, row, (hours or {}).get(user.id)))
                    if row.inbox_at is not None:
                        in_inbox.append(row)  # delivered by this commit: no workflow
                    elif row.workflow_id:
                        workflow_ids[row.id] = row.workflow_id
            result.notifications.extend(reversed(requests))
        notifications.set_workflow_ids(s, workflow_ids)
        notifications.insert_inbox_deliveries(s, [row.id or 0 for row in in_inbox], at)
        for row in in_inbox:
            observe_delivery("in_app", "delivered", row.created_at)
        return created

    def _replay(self, s: Session, ids: list[int]) -> DetectResult:
        rows: Iterable[store.Notification] = s.execute(
            select(store.Notification).where(col(store.Notification.id).in_(ids))
        ).scalars()
        result = DetectResult()
        for row in sorted(rows, key=lambda r: r.id or 0):
            user = s.get(store.NotifyUser, row.user_id)
            if user is not None:
                result.notifications.append(self._request(user, row, self._learned_hour(s, user)))
        return result

    def _learned_hour(self, s: Session, user: store.NotifyUser) -> int | None:
        """The user's send hour when they chose learned send times."""
        if user.send_time != "learned":
            return None
        counts = feedback.read_hours(s, [user.id]).get(user.id, [])
        return best_hour(counts, self._default_hour, self._min_reads)

    def _row(
        self,
        user: store.NotifyUser,
        decision: RoutingDecision,
        firing: Firing,
        subscription: store.Subscription,
        position: Position | None,
        at: datetime,
    ) -> store.Notification:
        c = decision.candidate
        rule = firing.rule
        exp = firing.explanation
        watch = rule.metric in WATCH_METRICS
        state = feedback.due_notice(subscription, rule.id)
        own = feedback.own_rule(subscription, rule.id) if state is not None else None
        adaptation = None
        if state is not None and own is not None:
            # The first notification since feedback changed the rule says so, and how to undo it.
            adaptation = notice(
                own,
                rule.model_dump(mode="json"),
                state,
                settings_url=f"{self._base}/v1/users/{user.id}/subscriptions/{subscription.id}/sensitivity",
            )
            feedback.announced(subscription, rule.id)
        ctx = NotificationContext(
            idempotency_key=c.idempotency_key,
            severity=c.severity.value,
            timezone=user.timezone,
            entity_key=c.entity_key,
            entity_name=entity_name(c.entity_key),
            entity_url=entity_url(self._base, c.entity_key),
            rule={
                "id": rule.id,
                "kind": "watch" if watch else rule.kind.value,
                "metric": rule.metric,
                "level": rule.level,
                "direction": rule.direction if rule.kind.value == "threshold" else None,
                "pct": rule.pct if rule.kind.value == "relative_change" else None,
                "window_s": rule.window_s if rule.kind.value == "relative_change" else None,
                "name": None if watch else subscription.label,
            },
            metric=exp.metric,
            before=exp.before,
            after=exp.after,
            unit=_UNITS.get(exp.metric, "number"),
            change_pct=_change_pct(exp.details, exp.before, exp.after) if exp.metric not in _UNITS else None,
            data_at=exp.at,
            detected_at=at,
            holding=_holding(position),
            finding=finding_context(firing.payload) if exp.metric == FINDING_METRIC else None,
            activity=activity_context(firing.payload) if exp.metric == ACTIVITY_METRIC else None,
            preferences_url=f"{self._base}/v1/users/{user.id}",
            adaptation=adaptation,
        )
        context = ctx.model_dump(mode="json")
        context["explanation"] = exp.model_dump(mode="json")
        context["subscription_id"] = subscription.id
        context["locale"] = user.locale
        # The web-push click beacon (``api.callbacks``) proves the click with this token; the URL needs
        # the row's id, known after the insert, so delivery builds it (``click_url``).
        context["click_token"] = secrets.token_urlsafe(18)
        context["click_base"] = self._base
        title, body, inbox_at = "", "", None
        only_inbox = inbox_only(
            decision.route.value,
            channels_for(user, c.kind.value, available_channels(user, self._registry)),
            critical=c.severity is AlertSeverity.CRITICAL,
            not_before=decision.not_before,
        )
        if only_inbox:
            # Storing it is its whole delivery: it is in the inbox once this transaction commits. Its
            # text is rendered when read (templates.renderer.inbox_text): most are never opened, and
            # rendering here was a third of detection's time.
            inbox_at = datetime.now(UTC)
        else:
            # Its workflow and digest show the title.
            rendered = render(c.kind.value, "in_app", user.locale, ctx)
            title, body = rendered.subject[:500], rendered.text
        digest = decision.route is DeliveryRoute.DIGEST
        return store.Notification(
            idempotency_key=c.idempotency_key,
            user_id=user.id,
            subscription_id=subscription.id,
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
            cause=firing.cause,
            # Notification workflows are named after the row id, known only after the insert (_request).
            workflow_id=digest_workflow_id(self._prefix, user.id) if digest else None,
            created_at=at,
        )

    def _request(
        self, user: store.NotifyUser, row: store.Notification, hour: int | None = None
    ) -> NotifyRequest:
        """``hour``: the user's learned send hour, when they chose learned send times."""
        assert row.id is not None
        if row.route != DeliveryRoute.DIGEST.value and row.workflow_id != notification_workflow_id(
            self._prefix, row.id
        ):
            # The id exists only after the insert: point the row at its workflow for the read signal.
            row.workflow_id = notification_workflow_id(self._prefix, row.id)
        available = available_channels(user, self._registry)
        channels = channels_for(user, row.kind, available)
        escalation = None
        if row.severity == AlertSeverity.CRITICAL.value:
            spec = user.escalation or {}
            chain = [c for c in spec.get("chain", DEFAULT_CHAIN) if c in available] or ["in_app"]
            escalation = EscalationSpec(
                chain=chain,
                delay_s=float(spec.get("delay_s", DEFAULT_DELAY_S)),
                max_repeats=int(spec.get("max_repeats", DEFAULT_MAX_REPEATS)),
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
            digest=_digest_schedule(user, hour),
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
                DIGEST_WORKFLOW,
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
                NOTIFICATION_WORKFLOW,
                NotificationInput(req),
                id=notification_workflow_id(self._prefix, req.notification_id),
                task_queue=self._task_queue,
            )


def _evaluate(
    s: Session,
    found: list[watching.WatchEntry],
    by_entity: dict[str, list[MetricChange]],
    at: datetime,
    cause: str | None,
    result: DetectResult,
) -> dict[str, list[Firing]]:
    """Evaluate each watcher's rules on the changes of what it watches, store the rules' new states, and
    return what fired by user; counts evaluations and suppressions in ``result``."""
    # Each subscription's rules parsed once, not once per change: a busy collection has hundreds of
    # watchers and a batch several changed metrics per entity.
    rules_of: dict[str, list[Rule]] = {}
    #: Subscriptions whose rules raised, with why: disabled in this transaction (``_rule_broken``).
    broken: dict[str, str] = {}
    for w in found:
        if w.subscription_id not in rules_of:
            try:
                rules_of[w.subscription_id] = parsed_rules(w.rules_json)
            except Exception as exc:  # a rule stored before its bounds existed: skip it, tell everyone else
                _rule_broken(w, _unreadable_rule(w.rules_json), exc, broken)
                rules_of[w.subscription_id] = []
    states = watching.rule_states(
        s,
        [
            (w.subscription_id, rule.id, ch.entity_key)
            for w in found
            for rule in rules_of[w.subscription_id]
            for ch in by_entity[w.entity_key]
            if ch.metric == rule.metric
        ],
    )
    changed_states: dict[StateKey, orjson.Fragment] = {}
    fired: dict[str, list[Firing]] = {}
    seen: set[tuple[str, str, str]] = set()
    timed: dict[tuple[str, str], MetricChange] = {}
    # Evaluation is a pure function of (rule, state, change), and the watchers of a busy entity often
    # share all three (one preset, armed and fired together): each distinct triple is evaluated once.
    # Rules with the same definition are the same object (watchers.parsed_rules).
    outcomes: dict[tuple[int, int, str], tuple[Evaluation, orjson.Fragment]] = {}
    for w in found:
        watched = {rule.metric for rule in rules_of[w.subscription_id]} - WATCH_METRICS
        for ch in by_entity[w.entity_key]:
            if ch.metric not in watched:
                continue
            # A portfolio holding both sides of a transfer meets the change under two wallet keys.
            if (w.subscription_id, ch.entity_key, ch.metric) in seen:
                continue
            seen.add((w.subscription_id, ch.entity_key, ch.metric))
            change = timed.get((ch.entity_key, ch.metric))
            if change is None:
                change = timed[(ch.entity_key, ch.metric)] = MetricChange(
                    ch.entity_key,
                    ch.metric,
                    ch.before,
                    ch.after,
                    at,
                    f"{cause}:{ch.entity_key}:{ch.metric}" if cause else None,
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
                    try:
                        previous = orjson.loads(stored_state) if stored_state else None
                        ev = evaluate(rule, RuleState.from_dict(previous), change)
                        outcome = (ev, orjson.Fragment(orjson.dumps(ev.state.to_dict())))
                    except Exception as exc:  # one rule's failure is its own: the others are evaluated
                        _rule_broken(w, rule.id, exc, broken)
                        continue
                    outcomes[same] = outcome
                ev, changed_states[triple] = outcome
                if not ev.fired or ev.severity is None or ev.explanation is None:
                    result.suppressed += ev.suppressed is not None
                    continue
                candidate = Candidate(
                    idempotency_key=idempotency_key(w.user_id, rule.id, ch.entity_key, event_cause(change)),
                    kind=ev.kind,
                    severity=ev.severity,
                    entity_key=ch.entity_key,
                    at=at,
                    magnitude=ev.magnitude,
                )
                firing = Firing(candidate, rule, w.subscription_id, ev.explanation, change.cause)
                fired.setdefault(w.user_id, []).append(firing)
    watching.save_rule_states(s, changed_states, at)
    if broken:
        # Disabled with the rest of this detection's writes: a broken subscription notifies nothing more
        # (not even by its other rules, here or later) until its owner updates the rules.
        watching.disable_subscriptions(s, broken, at)
        for user_id in list(fired):
            kept = [f for f in fired[user_id] if f.subscription_id not in broken]
            if kept:
                fired[user_id] = kept
            else:
                del fired[user_id]
    return fired


def _unreadable_rule(rules_json: str) -> str | None:
    """The id of the first stored rule that does not validate (asked only once parsing them failed)."""
    try:
        items = orjson.loads(rules_json)
    except orjson.JSONDecodeError:
        return None
    for item in items if isinstance(items, list) else []:
        try:
            Rule.model_validate(item)
        except ValidationError:
            rule_id = item.get("id") if isinstance(item, dict) else None
            return str(rule_id)[:80] if rule_id is not None else None
    return None


def _rule_broken(
    watcher: watching.WatchEntry, rule_id: str | None, exc: Exception, broken: dict[str, str]
) -> None:
    """A subscription's rule that cannot be parsed or evaluated is left out of this detection (its state
    unchanged), so that it holds back no other rule, user or shard; the subscription is recorded in
    ``broken`` to be disabled, and the log names it and why."""
    if isinstance(exc, ValidationError):
        # Fields and messages, not the stored values (which may be Infinity or NaN).
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    else:
        why = f"{type(exc).__name__}: {exc}"
    reason = f"rule {rule_id or '?'} failed in detection: {why}"[:500]
    broken.setdefault(watcher.subscription_id, reason)
    RULES_FAILED.inc()
    log.warning(
        "detection.rule_failed",
        extra={
            "subscription_id": watcher.subscription_id,
            "user_id": watcher.user_id,
            "rule_id": rule_id,
            "reason": repr(exc)[:500],
        },
    )


def _watch_alerts(
    found: list[watching.WatchEntry],
    by_entity: dict[str, list[MetricChange]],
    at: datetime,
    cause: str | None,
    fired: dict[str, list[Firing]],
) -> None:
    """Add the alerts that need no rule to ``fired``: each fraud finding (opened, updated, resolved) to
    every user watching or holding what it concerns, each wallet activity to the wallet's watchers.

    Once per user and finding report (or activity), however many of the user's subscriptions it meets:
    a user watching a collection and a wallet the finding names hears of it once. The idempotency key
    comes from the event, so a retried or replayed batch never notifies twice.
    """
    seen: set[tuple[str, str]] = set()
    for w in found:
        for ch in by_entity[w.entity_key]:
            if ch.metric not in WATCH_METRICS or not isinstance(ch.after, dict):
                continue
            if ch.metric == ACTIVITY_METRIC and w.target != "wallet":
                continue  # a portfolio's own trades are the user's own doing
            payload: dict[str, Any] = ch.after
            event_id = str(payload.get("event") or payload.get("event_id") or "")
            # A sale meets a user watching both sides twice: once per side, each its own notification.
            once = f"{ch.entity_key}:{event_id}"
            if (w.user_id, once) in seen:
                continue
            seen.add((w.user_id, once))
            rule = watch_rule(ch.metric)
            if ch.metric == FINDING_METRIC:
                status = str(payload.get("status") or "open")
                severity = finding_alert_severity(str(payload.get("severity")), status)
                kind = NotificationKind.FRAUD_FINDING
                reason = "finding_resolved" if status == "resolved" else "finding_reported"
                after: Any = status
                details = {
                    k: str(payload.get(k)) for k in ("finding_id", "kind", "severity", "detector", "event")
                }
            else:
                severity, kind, reason = AlertSeverity.INFO, NotificationKind.WALLET_ACTIVITY, "activity"
                after = str(payload.get("type"))
                details = {k: str(payload.get(k)) for k in ("type", "role", "nft_key", "event_id")}
            explanation = Explanation(
                rule_id=rule.id,
                rule_kind=rule.kind,
                entity_key=ch.entity_key,
                metric=ch.metric,
                before=ch.before,
                after=after,
                at=at,
                reason=reason,
                details=details,
            )
            candidate = Candidate(
                idempotency_key=idempotency_key(w.user_id, rule.id, ch.entity_key, event_id),
                kind=kind,
                severity=severity,
                entity_key=ch.entity_key,
                at=at,
                magnitude=1.0 + severity.rank,
            )
            firing_cause = f"{cause}:{ch.entity_key}:{ch.metric}" if cause else None
            firing = Firing(candidate, rule, w.subscription_id, explanation, firing_cause, payload)
            fired.setdefault(w.user_id, []).append(firing)


def finding_context(payload: dict[str, Any] | None) -> Finding | None:
    """The template's finding from a finding change's object (``activities.notify.alerts``)."""
    if payload is None:
        return None
    return Finding(
        id=str(payload.get("finding_id") or "") or None,
        category=str(payload.get("kind") or "unknown"),
        source=str(payload.get("detector") or "Pulse"),
        severity=str(payload.get("severity") or "high"),
        status="resolved" if payload.get("status") == "resolved" else "open",
        wallets=[str(w) for w in payload.get("wallets") or ()],
        evidence=[str(e) for e in payload.get("evidence") or ()],
    )


def activity_context(payload: dict[str, Any] | None) -> Activity | None:
    """The template's activity from a wallet-activity change's object (``activities.notify.alerts``)."""
    if payload is None:
        return None
    nft = str(payload.get("nft_key") or "")
    return Activity.model_validate({**payload, "nft_name": entity_name(nft)})


def route_user(
    user: store.NotifyUser, candidates: list[Candidate], at: datetime
) -> tuple[list[RoutingDecision], BudgetState]:
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


def _adjust(
    user: store.NotifyUser,
    decision: RoutingDecision,
    firing: Firing,
    subscriptions: dict[str, store.Subscription],
    hour: int | None,
    at: datetime,
) -> RoutingDecision:
    """What feedback and learned send times change about a routing decision: a rule adapted into the
    digest sends its non-critical firings there; an informational item of a user who chose learned send
    times waits for their hour (``domain.sendtime``), out of quiet hours."""
    c = decision.candidate
    if decision.route is not DeliveryRoute.NOW or c.severity is AlertSeverity.CRITICAL:
        return decision
    sub = subscriptions.get(firing.subscription_id)
    state = feedback.adaptations(sub).get(firing.rule.id) if sub is not None else None
    if state is not None and state.mode == "digest" and state.step > 0 and user.digest is not None:
        return decision.model_copy(update={"route": DeliveryRoute.DIGEST})
    if hour is None or c.severity is not AlertSeverity.INFO:
        return decision
    quiet = None
    if user.quiet_hours:
        quiet = QuietHours(start=user.quiet_hours["start"], end=user.quiet_hours["end"], tz=user.timezone)
    when = learned_send_at(at, hour, user.timezone, quiet)
    if when <= at:
        return decision
    return decision.model_copy(update={"route": DeliveryRoute.DEFER, "not_before": when})


def _digest_schedule(user: store.NotifyUser, hour: int | None) -> dict[str, Any] | None:
    """The user's digest schedule for the digest workflow; at the learned hour when they chose so."""
    if not user.digest:
        return None
    schedule = dict(user.digest, tz=user.timezone)
    return digest_schedule(schedule, hour) if hour is not None else schedule


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _change_pct(details: dict[str, str], before: Any, after: Any) -> float | None:
    if "change_pct" in details:
        return float(details["change_pct"])
    try:
        b, a = Decimal(str(before)), Decimal(str(after))
    except ArithmeticError:
        return None
    return float((a - b) / b) if b else None


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


def _inbox_is_enough(req: NotifyRequest) -> bool:
    return inbox_only(req.route, req.channels, critical=req.escalation is not None, not_before=req.not_before)
