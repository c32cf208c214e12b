"""Standard Webhooks secrets of signed sources, created and revoked through the API: shown once when created,
kept as they were given (an HMAC is checked with the key itself, as users' webhook secrets are), several
valid at once so a producer can move to a new secret before the old one is revoked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlmodel import col

from nftpulse.core.delivery import generate_webhook_secret
from nftpulse.domain.events import utcnow
from nftpulse.store.db import Database
from nftpulse.store.models import SourceSecret


@dataclass(frozen=True)
class CreatedSecret:
    id: int
    source: str
    secret: str
    created_at: datetime


@dataclass(frozen=True)
class SourceSummary:
    name: str
    secrets: int
    first_created: datetime
    last_created: datetime


def create(db: Database, source: str) -> CreatedSecret:
    secret = generate_webhook_secret()
    row = SourceSecret(source=source, secret=secret, created_at=utcnow())
    with db.write() as session:
        session.add(row)
        session.flush()
        assert row.id is not None
        return CreatedSecret(row.id, source, secret, row.created_at)


def active(db: Database, source: str) -> list[str]:
    """The source's secrets that are not revoked, newest first."""
    with db.read() as session:
        rows = session.execute(
            select(col(SourceSecret.secret))
            .where(col(SourceSecret.source) == source, col(SourceSecret.revoked_at).is_(None))
            .order_by(col(SourceSecret.id).desc())
        ).all()
    return [r[0] for r in rows]


def summaries(db: Database) -> list[SourceSummary]:
    """Every source with active secrets: how many and when they were created (never the secrets)."""
    with db.read() as session:
        rows = session.execute(
            select(
                col(SourceSecret.source),
                func.count(),
                func.min(col(SourceSecret.created_at)),
                func.max(col(SourceSecret.created_at)),
            )
            .where(col(SourceSecret.revoked_at).is_(None))
            .group_by(col(SourceSecret.source))
            .order_by(col(SourceSecret.source))
        ).all()
    return [SourceSummary(r[0], int(r[1]), _utc(r[2]), _utc(r[3])) for r in rows]


def secret_ids(db: Database, source: str) -> list[tuple[int, datetime]]:
    """The ids and creation times of a source's active secrets, oldest first."""
    with db.read() as session:
        rows = session.execute(
            select(col(SourceSecret.id), col(SourceSecret.created_at))
            .where(col(SourceSecret.source) == source, col(SourceSecret.revoked_at).is_(None))
            .order_by(col(SourceSecret.id))
        ).all()
    return [(int(r[0]), _utc(r[1])) for r in rows]


def revoke(db: Database, source: str, secret_id: int) -> bool:
    """Revoke one of the source's secrets; False when it has no such active secret."""
    with db.write() as session:
        result = session.execute(
            update(SourceSecret)
            .where(
                col(SourceSecret.id) == secret_id,
                col(SourceSecret.source) == source,
                col(SourceSecret.revoked_at).is_(None),
            )
            .values(revoked_at=utcnow())
        )
    return bool(getattr(result, "rowcount", 0))


def _utc(value: datetime) -> datetime:
    # Aggregates (min/max) bypass the column type, so SQLite hands back naive datetimes or text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
