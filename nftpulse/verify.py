"""``pulse verify``: recompute every collection from the event log and compare with the stored state.

A database without Pulse's schema (empty, or behind the code) is no clean bill of health: ``verify``
raises ``SchemaError`` for it rather than report nothing to differ (``pulse verify`` exits 2 saying so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nftpulse.domain.book import CollectionBook
from nftpulse.store import events, schema
from nftpulse.store.books import book_keys, load_book
from nftpulse.store.db import Database
from nftpulse.store.entities import RateBook

REL_TOLERANCE = 1e-9


@dataclass
class Difference:
    key: str
    path: str
    stored: Any
    recomputed: Any


@dataclass
class VerifyReport:
    collections: int = 0
    entities: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def _diff(key: str, path: str, stored: Any, fresh: Any, out: list[Difference]) -> None:
    if isinstance(stored, dict) and isinstance(fresh, dict):
        for k in sorted(set(stored) | set(fresh)):
            _diff(key, f"{path}.{k}" if path else k, stored.get(k), fresh.get(k), out)
    elif isinstance(stored, list) and isinstance(fresh, list) and len(stored) == len(fresh):
        for i, (a, b) in enumerate(zip(stored, fresh, strict=True)):
            _diff(key, f"{path}[{i}]", a, b, out)
    elif isinstance(stored, float) and isinstance(fresh, float | int):
        if not math.isclose(stored, float(fresh), rel_tol=REL_TOLERANCE, abs_tol=1e-12):
            out.append(Difference(key, path, stored, fresh))
    elif stored != fresh:
        out.append(Difference(key, path, stored, fresh))


def verify(db: Database, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    schema.require_current(db)
    report = VerifyReport()
    books = book_keys(db)
    for done, (key, chain, contract) in enumerate(books, 1):
        with db.read() as session:
            history = [events.to_event(r) for r in events.processed_events_of(session, key)]
            fresh = CollectionBook.recompute(chain, contract, history, RateBook(session))
            kept, _version = load_book(session, key, chain, contract)
        # The engine state is compared exactly. Read models may lag it by less than the significance
        # epsilons by design (a move that small is not propagated), so they are not the reference.
        stored = {kept.nft_key(tid): kept.nft_view(tid) for tid in kept.tokens}
        stored[key] = kept.collection_view()
        expected = {fresh.nft_key(tid): fresh.nft_view(tid) for tid in fresh.tokens}
        expected[key] = fresh.collection_view()
        report.collections += 1
        for entity_key in sorted(set(stored) | set(expected)):
            report.entities += 1
            _diff(entity_key, "", stored.get(entity_key), expected.get(entity_key), report.differences)
        if progress:
            progress(done, len(books))
    return report
