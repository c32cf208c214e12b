"""The change log behind the live change feed: what recalculation changed, entity by entity, with a
cursor (the row id), kept for a retention window; and the short-lived stream tokens browsers use.

Recalculation appends in its own transaction (:func:`append`), so a change is in the log exactly when its
batch committed. One reader per API process tails the log (:func:`after`) and fans it out; a client that
resumes from a cursor reads what it missed (:func:`after` with its filter) unless the cursor is older
than what pruning kept (:func:`pruned_through`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlmodel import Session, col

from nftpulse.domain.changes import MetricChange
from nftpulse.store.models import ChangeLogRecord, ChangeLogState, StreamToken
from nftpulse.store.sql import insert_many, table_of, upsert_insert

#: Causes named per change: a busy batch applies thousands of events to one collection.
MAX_CAUSES = 50
TOKEN_PREFIX = "st_"


@dataclass(frozen=True, slots=True)
class LoggedChange:
    """One row of the change log, as the feed sends it."""

    cursor: int
    entity_key: str
    version: int | None
    changes: dict[str, Any]
    causes: list[str]
    at: datetime

    def message(self, metrics: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The feed's message; only ``metrics`` among the changed fields when given."""
        fields = {
            metric: {"before": before, "after": after}
            for metric, (before, after) in self.changes.items()
            if not metrics or metric in metrics
        }
        return {
            "cursor": str(self.cursor),
            "entity_key": self.entity_key,
            "version": self.version,
            "changes": fields,
            "causes": self.causes,
            "at": self.at.isoformat(),
        }


def append(
    session: Session,
    changes: Iterable[MetricChange],
    versions: Mapping[str, int],
    causes: Mapping[str, Sequence[str]],
    at: datetime,
) -> int:
    """Log a batch's changes, one row per entity (``versions``: the read models' new versions;
    ``causes``: the event ids behind each entity's change). Returns the rows written."""
    by_entity: dict[str, dict[str, Any]] = {}
    for ch in changes:
        by_entity.setdefault(ch.entity_key, {})[ch.metric] = [ch.before, ch.after]
    rows = [
        {
            "entity_key": key,
            "version": versions.get(key),
            "changes": fields,
            "causes": list(causes.get(key, ()))[:MAX_CAUSES],
            "created_at": at,
        }
        for key, fields in by_entity.items()
    ]
    if rows:
        # One statement whatever the batch's size (on Postgres one JSON parameter): a busy batch changes
        # thousands of NFTs, and this runs inside recalculation's transaction.
        insert_many(session, table_of(ChangeLogRecord), rows, lambda stmt: stmt)
    return len(rows)


def causes_of(
    events: Iterable[tuple[str, str | None, str, str]], changes: Iterable[MetricChange]
) -> dict[str, list[str]]:
    """The event ids behind each changed entity: ``events`` are (partition, token id or None, source,
    id) of the batch's applied events. An NFT's own events, else its collection's; a collection's events; a
    finding's or a wallet activity's own event."""
    by_key: dict[str, list[str]] = {}
    for partition, token, source, external_id in events:
        event_id = f"{source}/{external_id}"
        nft = f"nft:{partition.removeprefix('collection:')}:{token}" if token is not None else None
        for key in (partition, nft):
            if key is not None:
                by_key.setdefault(key, []).append(event_id)
    out: dict[str, list[str]] = {}
    for ch in changes:
        own = ch.after.get("event") or ch.after.get("event_id") if isinstance(ch.after, dict) else None
        if isinstance(own, str):
            found = out.setdefault(ch.entity_key, [])
            if own not in found:
                found.append(own)
            continue
        if ch.entity_key in out:
            continue
        key = ch.entity_key
        if key not in by_key and key.startswith("nft:"):
            key = "collection:" + ":".join(key.split(":")[1:3])
        out[ch.entity_key] = by_key.get(key, [])[:MAX_CAUSES]
    return out


def _matches(keys: Sequence[str], prefixes: Sequence[str]) -> Any:
    entity = col(ChangeLogRecord.entity_key)
    terms: list[Any] = [entity.in_(list(keys))] if keys else []
    terms += [entity.startswith(p, autoescape=True) for p in prefixes]
    return or_(*terms) if terms else None


def after(
    session: Session,
    cursor: int,
    *,
    limit: int = 500,
    keys: Sequence[str] = (),
    prefixes: Sequence[str] = (),
) -> list[LoggedChange]:
    """Rows past ``cursor``, oldest first, optionally only those of ``keys`` or under ``prefixes``."""
    stmt = select(ChangeLogRecord).where(col(ChangeLogRecord.id) > cursor)
    where = _matches(keys, prefixes)
    if where is not None:
        stmt = stmt.where(where)
    rows: Iterable[ChangeLogRecord] = session.execute(
        stmt.order_by(col(ChangeLogRecord.id)).limit(limit)
    ).scalars()
    return [
        LoggedChange(r.id or 0, r.entity_key, r.version, dict(r.changes), list(r.causes), r.created_at)
        for r in rows
    ]


def head(session: Session) -> int:
    """The newest cursor (0 for an empty log)."""
    return int(session.execute(select(func.max(col(ChangeLogRecord.id)))).scalar() or 0)


def pruned_through(session: Session) -> int:
    """The highest cursor pruning removed (0: nothing pruned yet)."""
    row = session.get(ChangeLogState, 1)
    return row.pruned_through if row is not None else 0


def prune(session: Session, now: datetime, retention: timedelta) -> int:
    """Remove rows older than ``retention`` and record how far; returns the rows removed. The newest row
    always stays, so that ids keep growing where the database would reuse them (SQLite)."""
    newest = head(session)
    cutoff = now - retention
    last = session.execute(
        select(func.max(col(ChangeLogRecord.id))).where(
            col(ChangeLogRecord.created_at) < cutoff, col(ChangeLogRecord.id) < newest
        )
    ).scalar()
    if last is None:
        return 0
    result: Any = session.execute(delete(ChangeLogRecord).where(col(ChangeLogRecord.id) <= last))
    removed = result.rowcount or 0
    # Rows at or below the previous watermark are gone already: ``last`` only moves it forward.
    stmt = upsert_insert(session)(ChangeLogState).values(id=1, pruned_through=int(last))
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"], set_={"pruned_through": stmt.excluded.pruned_through}
        )
    )
    session.execute(delete(StreamToken).where(col(StreamToken.expires_at) < now))
    return int(removed)


# -- stream tokens ----------------------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, key_id: int, scopes: Iterable[str], now: datetime, ttl: timedelta) -> str:
    """A new stream token for ``scopes``, valid for ``ttl``; only its digest is stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    session.add(
        StreamToken(
            digest=_digest(token),
            key_id=key_id,
            scopes=" ".join(sorted(set(scopes))),
            expires_at=now + ttl,
            created_at=now,
        )
    )
    return token


def token_grant(session: Session, token: str, now: datetime) -> tuple[int, frozenset[str]] | None:
    """The API key id and scopes of a live stream token; None when unknown or expired."""
    row = session.get(StreamToken, _digest(token))
    if row is None or row.expires_at <= now:
        return None
    return row.key_id, frozenset(row.scopes.split())
