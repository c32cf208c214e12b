"""The chain follower: reads an EVM chain (``adapters/chain.py``), decodes its NFT logs
(``adapters/logs.py``) and appends the events to the event log as ``POST /v1/events`` does (classified
against the collections' floors, deduplicated on ``(source, id)``), then moves its checkpoint.

Live following stays ``PULSE_CHAIN_CONFIRMATIONS`` blocks behind the head and starts, on a chain it has no
checkpoint for, at that safe head (``--from-block`` sets another start); a backfill (``--from-block N
--to-block M``) reads a fixed range and leaves the checkpoint alone. The checkpoint moves only after a
range's events are committed, so a crash re-reads blocks (their events come back as duplicates) and never
skips one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from nftpulse import metadata
from nftpulse.adapters.chain import ChainMoved, ChainRange, ChainReader, Rpc, RpcError, RpcUnavailable
from nftpulse.adapters.logs import DecodeError, LogDecoder
from nftpulse.core.settings import Settings
from nftpulse.domain.book.retract import retraction_of
from nftpulse.domain.events import Event
from nftpulse.ingest import Ingestor
from nftpulse.store import chain as checkpoints
from nftpulse.store import events, retractions
from nftpulse.store.db import Database

log = logging.getLogger("pulse.follow")

#: Blocks per eth_getLogs range (a node refusing a range as too large gets it again in halves).
BATCH_BLOCKS = 500


@dataclass
class FollowReport:
    blocks: int = 0
    logs: int = 0
    accepted: int = 0
    duplicates: int = 0
    refreshes: int = 0
    skipped: int = 0
    #: Events of orphaned blocks retracted after reorganisations.
    retracted: int = 0

    def add(self, chunk: ChainRange, accepted: int, duplicates: int) -> None:
        self.blocks += chunk.last - chunk.first + 1
        self.logs += chunk.logs
        self.accepted += accepted
        self.duplicates += duplicates
        self.refreshes += len(chunk.decoded.refreshes)
        self.skipped += len(chunk.decoded.skipped)


class Follower:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        reader: ChainReader,
        *,
        batch_blocks: int = BATCH_BLOCKS,
    ) -> None:
        self.settings = settings
        self.db = db
        self.reader = reader
        self.chain = reader.decoder.chain
        self.batch_blocks = batch_blocks
        self.ingestor = Ingestor(settings, db)
        self.report = FollowReport()

    @classmethod
    def from_settings(cls, settings: Settings, db: Database, **kw: int) -> Follower:
        if not settings.chain_rpc_url:
            raise ValueError("PULSE_CHAIN_RPC_URL is not set: there is no chain to follow")
        decoder = LogDecoder(settings.chain_name)
        reader = ChainReader(Rpc(settings.chain_rpc_url), decoder, settings.chain_contract_list)
        return cls(settings, db, reader, **kw)

    async def aclose(self) -> None:
        await self.reader.rpc.aclose()

    async def _read(self, first: int, last: int) -> ChainRange:
        for attempt in range(5):
            try:
                return await self.reader.read(first, last)
            except ChainMoved as exc:
                log.warning("follow.chain_moved", extra={"block": exc.block, "attempt": attempt + 1})
                await asyncio.sleep(0.5 * (attempt + 1))
        return await self.reader.read(first, last)

    async def _store(self, chunk: ChainRange) -> ChainRange:
        batch = await asyncio.to_thread(self._renamed, chunk)
        accepted, duplicates = await asyncio.to_thread(self.ingestor.append, batch)
        if self.settings.metadata_fetch:
            # Enqueued before the checkpoint moves: a crash re-reads the range and asks again (once).
            max_range = self.settings.metadata_fetch_max_range
            await asyncio.to_thread(metadata.enqueue_decoded, self.db, chunk.decoded, max_range)
        self.report.add(chunk, accepted, duplicates)
        log.info(
            "follow.range",
            extra={
                "chain": self.chain,
                "first": chunk.first,
                "last": chunk.last,
                "logs": chunk.logs,
                "accepted": accepted,
                "duplicates": duplicates,
                "refreshes": len(chunk.decoded.refreshes),
                "skipped": len(chunk.decoded.skipped),
            },
        )
        return chunk

    async def backfill(
        self, first: int, last: int, progress: Callable[[ChainRange], None] | None = None
    ) -> FollowReport:
        """Read blocks ``first``..``last`` into the event log; the checkpoint is left as it is. The next
        range is read from the node while the current one is appended."""
        starts = range(first, last + 1, self.batch_blocks)
        ahead: asyncio.Task[ChainRange] | None = None
        try:
            for i, start in enumerate(starts):
                chunk = (
                    await ahead
                    if ahead is not None
                    else await self._read(start, min(last, start + self.batch_blocks - 1))
                )
                ahead = None
                if i + 1 < len(starts):
                    nxt = starts[i + 1]
                    ahead = asyncio.create_task(self._read(nxt, min(last, nxt + self.batch_blocks - 1)))
                await self._store(chunk)
                if progress is not None:
                    progress(chunk)
        finally:
            if ahead is not None:
                ahead.cancel()
        return self.report

    async def safe_head(self) -> int:
        return max(0, await self.reader.head() - self.settings.chain_confirmations)

    async def step(self, start_block: int | None = None) -> ChainRange | None:
        """Read the next range up to the safe head and move the checkpoint; None when caught up.
        ``start_block`` (the first step of ``--from-block N``) starts at that block whatever the
        checkpoint says."""
        safe = await self.safe_head()
        saved = await asyncio.to_thread(checkpoints.checkpoint, self.db, self.chain)
        if start_block is not None:
            after = start_block - 1
        elif saved is None:
            after = safe - 1
        else:
            after = saved.block_number
            current = await self.reader.block(after)
            if current.hash != saved.block_hash:
                after = await self._reorganised(after, saved.block_hash, current.hash)
        if after >= safe:
            return None
        chunk = await self._store(await self._read(after + 1, min(safe, after + self.batch_blocks)))
        headers = [(b.number, b.hash, b.parent_hash) for b in chunk.blocks.values()]
        await asyncio.to_thread(
            retractions.save_headers, self.db, self.chain, headers, self.keep_headers, chunk.last
        )
        await asyncio.to_thread(
            checkpoints.save_checkpoint, self.db, self.chain, chunk.last, chunk.last_block.hash
        )
        return chunk

    @property
    def keep_headers(self) -> int:
        """Recent headers kept: a reorganisation up to this deep is found and undone exactly."""
        return self.settings.chain_confirmations + 64

    async def _reorganised(self, checkpoint: int, was: str, now: str) -> int:
        """The chain forked below the checkpoint: find the common ancestor among the kept headers (the
        highest whose hash the node still has), retract the events of the orphaned blocks above it, and
        return it, so that the new branch is read from the block after it."""
        kept = await asyncio.to_thread(retractions.recent_headers, self.db, self.chain, checkpoint)
        ancestor = None
        for number, block_hash in kept:
            if (await self.reader.block(number)).hash == block_hash:
                ancestor = number
                break
        if ancestor is None:
            # Deeper than every kept header: everything they cover is retracted (an exact undo of those
            # blocks; anything below them was past the confirmations and stays).
            ancestor = (kept[-1][0] - 1) if kept else checkpoint
            log.error(
                "follow.reorganised_below_kept_headers",
                extra={"block": checkpoint, "was": was, "now": now, "from": ancestor},
            )
        orphaned = await asyncio.to_thread(
            retractions.events_after_block, self.db, self.chain, self.reader.decoder.source, ancestor
        )
        # The orphaned blocks' hashes, where kept: a later delivery of the same log from the same block
        # is then known for the retracted one (``retractions.reincluded``).
        hashes = dict(kept)
        undo = [
            retraction_of(
                events.to_event(row),
                f"block {row.block_number} left the chain",
                hashes.get(row.block_number if row.block_number is not None else -1),
            )
            for row in orphaned
        ]
        accepted, _ = await asyncio.to_thread(self.ingestor.append, undo)
        await asyncio.to_thread(retractions.forget_headers_after, self.db, self.chain, ancestor)
        self.report.retracted += accepted
        log.warning(
            "follow.reorganised",
            extra={
                "chain": self.chain,
                "checkpoint": checkpoint,
                "ancestor": ancestor,
                "retracted": accepted,
            },
        )
        return ancestor

    def _renamed(self, chunk: ChainRange) -> list[Event]:
        """The range's events; one a reorganisation retracted and the new branch includes again gets an
        id naming its block (``retractions.reincluded``)."""

        def block_hash(event: Event) -> str | None:
            block = chunk.blocks.get(event.block_number if event.block_number is not None else -1)
            return None if block is None else block.hash

        return retractions.reincluded(self.db, self.reader.decoder.source, chunk.decoded.events, block_hash)

    async def run(self, stop: asyncio.Event, *, start_block: int | None = None, poll_s: float = 2.0) -> None:
        """Follow until ``stop`` is set: ranges back to back while behind, a poll every ``poll_s`` after.
        A range that cannot be read (the node unreachable through the RPC client's retries) is tried again
        after a pause."""
        start = start_block
        while not stop.is_set():
            try:
                chunk = await self.step(start)
                start = None
            except (RpcError, RpcUnavailable, ChainMoved, DecodeError) as exc:
                # The node is unreachable, keeps moving under the read or answers what no node should:
                # said in the logs and tried again after a pause, never skipped.
                log.error("follow.read_failed", extra={"chain": self.chain, "error": str(exc)})
                chunk = None
            if chunk is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll_s)
