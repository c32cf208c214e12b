"""The chain follower's checkpoint: one row per chain (``chain_cursors``)."""

from __future__ import annotations

from dataclasses import dataclass

from nftpulse.domain.events import utcnow
from nftpulse.store.db import Database
from nftpulse.store.models import ChainCursor


@dataclass(frozen=True)
class Checkpoint:
    block_number: int
    block_hash: str


def checkpoint(db: Database, chain: str) -> Checkpoint | None:
    with db.read() as session:
        row = session.get(ChainCursor, chain)
        return None if row is None else Checkpoint(row.block_number, row.block_hash)


def save_checkpoint(db: Database, chain: str, block_number: int, block_hash: str) -> None:
    """Record that every log up to ``block_number`` is in the event log (after the events are committed, so
    a crash in between re-reads blocks, which ingest deduplicates, and never skips any)."""
    with db.write() as session:
        row = session.get(ChainCursor, chain)
        if row is None:
            row = ChainCursor(
                chain=chain, block_number=block_number, block_hash=block_hash, updated_at=utcnow()
            )
        else:
            row.block_number, row.block_hash, row.updated_at = block_number, block_hash, utcnow()
        session.add(row)
