"""The inbox: a user's notifications (newest first, with each channel's delivery status and the rule's
evidence), marking them read or archived, and a live server-sent event stream of new ones.

Reading a notification signals its workflow (``read``), which stops a critical alert's escalation. An
inbox-only notification's text is rendered when it is read (``templates.renderer.inbox_text``). Access
and errors: see ``api/common.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError

from nftpulse.api.common import IsoTime, QueryInt, UserId, authorize, parse_row_id
from nftpulse.api.deps import PrincipalDep, Services, ServicesDep
from nftpulse.api.stream import StreamPrincipalDep, Tail, feeds_of
from nftpulse.core.delivery import DeliveryStatus
from nftpulse.core.metrics import DELIVERIES, NOTIFICATION_READS, NOTIFICATIONS_READ
from nftpulse.domain.feedback import Verdict
from nftpulse.domain.routing import DeliveryRoute
from nftpulse.domain.rules import AlertSeverity, Explanation, NotificationKind
from nftpulse.store import feedback, keys, notifications
from nftpulse.store import notify as store
from nftpulse.templates.renderer import inbox_text

router = APIRouter(prefix="/v1", tags=["notifications"])

#: How often a live stream asks whether its key was revoked meanwhile (and how soon one then ends).
KEY_RECHECK_S = 2.0


class FeedbackState(BaseModel):
    """The user's verdict on a notification and how to give or change it."""

    verdict: Verdict | None = Field(description="the current verdict; null until the user gives one")
    url: str = Field(description='POST {"verdict": …} here with the user\'s key')
    links: dict[str, str] | None = Field(
        default=None, description="one link per verdict, proved by the notification's token (no key needed)"
    )


class NotificationOut(BaseModel):
    """An inbox row, with its per-channel delivery status and the evidence."""

    id: str = Field(description="the notification's id; also the stream's event id and the page cursor")
    idempotency_key: str
    kind: NotificationKind
    severity: AlertSeverity
    entity_key: str
    title: str
    body: str
    rule_id: str | None
    subscription_id: str | None
    evidence: Explanation | None = Field(description="why the rule fired")
    created_at: IsoTime
    read_at: IsoTime | None
    archived_at: IsoTime | None
    deliveries: dict[str, DeliveryStatus] = Field(description="status by channel")
    feedback: FeedbackState | None = Field(
        default=None, description="useful / not_useful / too_many: the verdict and where to give it"
    )


class InboxPage(BaseModel):
    items: list[NotificationOut]
    #: Pass as ``cursor`` for the next page; null on the last page.
    next_cursor: str | None
    unread_count: int


class ReadAllResult(BaseModel):
    read: int = Field(description="notifications marked read")


class Archived(BaseModel):
    id: str
    archived_at: IsoTime | None


def notification_out(
    row: store.Notification, deliveries: list[store.Delivery], verdict: str | None = None
) -> NotificationOut:
    """The API shape of an inbox row; ``verdict``: the user's verdict on it, if any."""
    title, body = inbox_text(row.kind, row.context, row.title, row.body)
    return NotificationOut.model_validate(
        {
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
            "created_at": row.created_at,
            "read_at": row.read_at,
            "archived_at": row.archived_at,
            "deliveries": {d.channel: d.status for d in deliveries},
            "feedback": {
                "verdict": verdict,
                "url": f"/v1/users/{row.user_id}/notifications/{row.id}/feedback",
                "links": feedback.feedback_links(row, "in_app"),
            },
        }
    )


def _cursor(cursor: str | None, field: str = "cursor") -> int | None:
    if cursor is None:
        return None
    return parse_row_id(cursor, field, "use the id of a notification (next_cursor from the previous page)")


def _notification_id(raw: str) -> int:
    return parse_row_id(raw, "notification_id", "must be a notification id")


@router.get("/users/{user_id}/notifications")
async def list_notifications(
    user_id: UserId,
    principal: PrincipalDep,
    services: ServicesDep,
    unread: bool = False,
    limit: Annotated[QueryInt, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> InboxPage:
    """The inbox, newest first; ``next_cursor`` pages on."""
    authorize(principal, user_id)
    before = _cursor(cursor)

    def read() -> InboxPage:
        with services.db.read() as s:
            rows = notifications.inbox(s, user_id, unread=unread, before_id=before, limit=limit + 1)
            page = rows[:limit]
            deliveries = notifications.deliveries_for(s, [r.id for r in page if r.id is not None])
            verdicts = feedback.verdicts_of(s, [r.id for r in page if r.id is not None])
            return InboxPage(
                items=[
                    notification_out(r, deliveries.get(r.id or 0, []), verdicts.get(r.id or 0)) for r in page
                ],
                next_cursor=str(page[-1].id) if len(rows) > limit else None,
                unread_count=notifications.unread_count(s, user_id),
            )

    return await run_in_threadpool(read)


async def _signal_read(services: Services, rows: list[store.Notification], channel: str = "in_app") -> None:
    """Tell escalation workflows their notification was read, so they stop. ``channel``: where the user
    acted on it."""
    NOTIFICATIONS_READ.inc(len(rows))
    DELIVERIES.labels("in_app", "read").inc(len(rows))
    for row in rows:
        NOTIFICATION_READS.labels(row.kind, channel).inc()
    if services.temporal is None:
        return
    for row in rows:
        if not row.workflow_id or row.route == DeliveryRoute.DIGEST.value:
            continue
        # A finished (or never started) workflow answers "not found": nothing is escalating then.
        with contextlib.suppress(RPCError):
            await services.temporal.get_workflow_handle(row.workflow_id).signal("read")


@router.post("/users/{user_id}/notifications/read-all")
async def read_all(user_id: UserId, principal: PrincipalDep, services: ServicesDep) -> ReadAllResult:
    """Mark every unread notification read."""
    authorize(principal, user_id)

    def write() -> list[store.Notification]:
        with services.db.write() as s:
            return notifications.mark_read(s, user_id, None, datetime.now(UTC))

    rows = await run_in_threadpool(write)
    await _signal_read(services, rows)
    return ReadAllResult(read=len(rows))


@router.post("/users/{user_id}/notifications/{notification_id}/read")
async def read_one(
    user_id: UserId, notification_id: str, principal: PrincipalDep, services: ServicesDep
) -> NotificationOut:
    """Mark one notification read; stops its escalation."""
    authorize(principal, user_id)
    nid = _notification_id(notification_id)

    def write() -> tuple[store.Notification | None, list[store.Notification], list[store.Delivery]]:
        with services.db.write() as s:
            row = s.get(store.Notification, nid)
            if row is None or row.user_id != user_id:
                return None, [], []
            changed = notifications.mark_read(s, user_id, [nid], datetime.now(UTC))
            s.flush()
            return row, changed, notifications.deliveries_for(s, [nid])[nid]

    row, changed, deliveries = await run_in_threadpool(write)
    if row is None:
        raise HTTPException(404, f"no notification {notification_id} for user {user_id!r}")
    await _signal_read(services, changed)
    return notification_out(row, deliveries)


@router.post("/users/{user_id}/notifications/{notification_id}/archive")
async def archive_one(
    user_id: UserId, notification_id: str, principal: PrincipalDep, services: ServicesDep
) -> Archived:
    """Hide a notification from the inbox (archived rows count as read)."""
    authorize(principal, user_id)
    nid = _notification_id(notification_id)

    def write() -> tuple[store.Notification | None, list[store.Notification]]:
        with services.db.write() as s:
            row = s.get(store.Notification, nid)
            if row is None or row.user_id != user_id:
                return None, []
            now = datetime.now(UTC)
            changed = notifications.mark_read(s, user_id, [nid], now)
            row.archived_at = row.archived_at or now
            s.add(row)
            return row, changed

    row, changed = await run_in_threadpool(write)
    if row is None:
        raise HTTPException(404, f"no notification {notification_id} for user {user_id!r}")
    await _signal_read(services, changed)
    return Archived(id=str(row.id), archived_at=row.archived_at)


_STREAM_DOC = (
    "A `text/event-stream`: a `retry:` line, then each new inbox row as `event: notification` with "
    "`id:` its id and `data:` the row as JSON (the `NotificationOut` schema); comment lines keep the "
    "connection alive."
)


@router.get(
    "/users/{user_id}/notifications/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": _STREAM_DOC,
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string", "description": _STREAM_DOC},
                    "example": 'id: 42\nevent: notification\ndata: {"id": "42", ...}\n\n',
                }
            },
        }
    },
)
async def stream(
    request: Request,
    user_id: UserId,
    principal: StreamPrincipalDep,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: str | None = None,
    max_s: Annotated[float, Query(gt=0, le=3600)] = 300.0,
) -> StreamingResponse:
    """Server-sent events: each new inbox row as ``event: notification`` with ``id`` = its id.

    One reader per process follows every inbox (``api.stream.Tail``) and hands each user's rows to that
    user's streams. The stream ends after ``max_s`` seconds; EventSource reconnects by itself with
    ``Last-Event-ID`` and misses nothing. Without an id, the stream starts with what arrives from now on.
    Browsers pass a stream token (``POST /v1/stream/tokens``) as ``?token=``.
    """
    authorize(principal, user_id)
    start = _cursor(last_event_id, "Last-Event-ID") if last_event_id else _cursor(after, "after")
    tail = inbox_tail(request.app, services)

    def newer(after_id: int) -> list[InboxRow]:
        with services.db.read() as s:
            rows = notifications.inbox(s, user_id, include_archived=True, after_id=after_id, limit=100)
            return _inbox_rows(s, rows)

    async def events() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_s
        sub = await tail.subscribe(lambda row: row.user_id == user_id)
        try:
            yield b"retry: 2000\n\n"
            sent: set[int] = set()
            cursor = start
            while cursor is not None:
                page = await run_in_threadpool(newer, cursor)
                for row in page:
                    sent.add(row.id)
                    cursor = row.id
                    yield row.event()
                if len(page) < 100:
                    break
            checked = quiet_since = loop.time()
            while (left := deadline - loop.time()) > 0 and not (sub.overflowed and sub.queue.empty()):
                if loop.time() - checked >= KEY_RECHECK_S:
                    # A stream outlives the request that authenticated it: a revoked key ends it.
                    if not await run_in_threadpool(keys.is_active, services.db, principal.key_id):
                        break
                    checked = loop.time()
                try:
                    row = await asyncio.wait_for(sub.queue.get(), timeout=min(left, KEY_RECHECK_S))
                except TimeoutError:
                    if loop.time() - quiet_since >= 15.0:
                        quiet_since = loop.time()
                        yield b": keep-alive\n\n"  # proxies close silent connections
                    continue
                if row.id not in sent:
                    yield row.event()
        finally:
            tail.unsubscribe(sub)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@dataclass(frozen=True)
class InboxRow:
    """One inbox row as the live streams send it, and whose it is."""

    id: int
    user_id: str
    item: NotificationOut

    def event(self) -> bytes:
        data = json.dumps(self.item.model_dump(mode="json"))
        return f"id: {self.id}\nevent: notification\ndata: {data}\n\n".encode()


def _inbox_rows(s: Session, rows: list[store.Notification]) -> list[InboxRow]:
    deliveries = notifications.deliveries_for(s, [r.id for r in rows if r.id is not None])
    return [InboxRow(r.id or 0, r.user_id, notification_out(r, deliveries.get(r.id or 0, []))) for r in rows]


def inbox_tail(app: FastAPI, services: Services) -> Tail[InboxRow]:
    """The process's one reader of every inbox, made on first use."""
    feeds = feeds_of(app, services)
    tail = feeds.others.get("inbox")
    if tail is None:
        db = services.db

        def fetch(after_id: int, limit: int) -> list[InboxRow]:
            with db.read() as s:
                return _inbox_rows(s, notifications.inbox_after(s, after_id, limit))

        def head() -> int:
            with db.read() as s:
                return notifications.newest_id(s)

        # A row becomes visible when its in-app delivery stamps it, moments after its id was taken.
        tail = feeds.others["inbox"] = Tail(fetch, head, lambda row: row.id, settle_s=30.0)
    return tail
