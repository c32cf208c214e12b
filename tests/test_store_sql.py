"""The store's shared SQL building blocks, on SQLite and Postgres alike."""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlmodel import col, select

from nftpulse.cli import tune_gc
from nftpulse.domain.book import CollectionBook
from nftpulse.domain.events import Event
from nftpulse.store import books, entities
from nftpulse.store.db import Database
from nftpulse.store.entities import ViewWrite
from nftpulse.store.models import BookHistoryRecord, EntityView, EventRecord
from nftpulse.store.sql import insert_many, one_of, table_of, update_many
from nftpulse.synth import Stream


def test_insert_many_upserts_with_returning_and_keeps_types(db: Database) -> None:
    """Read models written in bulk come back as written (JSON with quotes and non-ASCII, timestamps), and
    an upsert bumps an existing row's version in the database while a new row starts at 1."""
    at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    view = {"owner": "0xabc", "nested": {"quote": 'say "hi"', "list": [1, 2.5, None]}, "ünïcode": "✓"}
    with db.write() as s:
        assert entities.write_views(s, [ViewWrite("nft:a", "nft", "c", view)], at) == {"nft:a": 1}
    with db.read() as s:
        row = s.get(EntityView, "nft:a")
    assert row is not None and row.view == view and row.version == 1 and row.updated_at == at
    later = at + timedelta(seconds=1)
    with db.write() as s:
        versions = entities.write_views(
            s, [ViewWrite("nft:a", "nft", "c", {"v": 2}), ViewWrite("nft:b", "nft", "c", {"v": 1})], later
        )
    assert versions == {"nft:a": 2, "nft:b": 1}
    with db.read() as s:
        rows = s.exec(select(EntityView).order_by(col(EntityView.key)))
        assert [(r.key, r.version, r.view, r.updated_at) for r in rows] == [
            ("nft:a", 2, {"v": 2}, later),
            ("nft:b", 1, {"v": 1}, later),
        ]


def test_insert_many_skips_conflicts_and_returns_only_new_rows(db: Database) -> None:
    """With a do-nothing conflict clause, rows already stored are skipped and only new ones come back;
    NULLs and timestamps arrive as given."""
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def rows(*keys: str) -> list[dict[str, Any]]:
        return [
            {
                "key": key,
                "kind": "nft",
                "collection_key": "c",
                "version": 1,
                "view": {"owner": None},
                "updated_at": now,
            }
            for key in keys
        ]

    def skip(stmt: Any) -> Any:
        return stmt.on_conflict_do_nothing(index_elements=["key"]).returning(col(EntityView.key))

    with db.write() as s:
        assert [k for (k,) in insert_many(s, table_of(EntityView), rows("nft:1"), skip)] == ["nft:1"]
        # Again with one new key: the stored one is skipped, only the new one is returned.
        assert [k for (k,) in insert_many(s, table_of(EntityView), rows("nft:1", "nft:2"), skip)] == ["nft:2"]
    with db.read() as s:
        stored = s.get(EntityView, "nft:1")
        assert stored is not None and stored.view == {"owner": None} and stored.updated_at == now
        keys = list(s.exec(select(col(EntityView.key)).where(one_of(s, col(EntityView.key), ["nft:2", "x"]))))
    assert keys == ["nft:2"]


def test_update_many_gives_each_row_its_own_values_and_only_where_allowed(db: Database) -> None:
    """Each matched row gets its own values plus the shared ones; rows outside ``where`` stay as they
    were, and the count says how many changed."""
    received = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    with db.write() as s:
        for n in range(3):
            s.add(
                EventRecord(
                    source="t",
                    external_id=f"e{n}",
                    type="sale",
                    occurred_at=received,
                    received_at=received,
                    chain="ethereum",
                    contract="0xc",
                    partition="collection:ethereum:0xc",
                    data={},
                    status="processed" if n == 2 else "received",
                )
            )
        s.flush()
        seqs = [r.seq for r in s.exec(select(EventRecord).order_by(col(EventRecord.seq)))]
    table = table_of(EventRecord)
    rows = [
        {"seq": seqs[0], "route": "partition", "priority": 12.5, "priority_class": "low"},
        {"seq": seqs[1], "route": "own", "priority": 90.0, "priority_class": "critical"},
        {"seq": seqs[2], "route": "own", "priority": 99.0, "priority_class": "critical"},
    ]
    with db.write() as s:
        changed = update_many(
            s,
            table,
            "seq",
            rows,
            same={"status": "dispatched", "attempts": table.c.attempts + 1},
            where=[table.c.status == "received"],
        )
    assert changed == 2
    with db.read() as s:
        got = [
            (r.route, r.priority, r.priority_class, r.status, r.attempts)
            for r in s.exec(select(EventRecord).order_by(col(EventRecord.seq)))
        ]
    assert got[0] == ("partition", 12.5, "low", "dispatched", 1)
    assert got[1] == ("own", 90.0, "critical", "dispatched", 1)
    assert got[2][3] == "processed" and got[2][4] == 0


def test_tune_gc_sets_thresholds_and_freezes_what_is_loaded() -> None:
    before = gc.get_threshold()
    try:
        tune_gc((12_345, 20, 30))
        assert gc.get_threshold() == (12_345, 20, 30)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_books_are_saved_as_a_row_and_history_segments(db: Database, monkeypatch: Any) -> None:
    """Each save adds one segment with only the history it added; the segment count is bounded by a
    rewrite; a book loads back equal to the live one, in one snapshot, with its version."""
    monkeypatch.setattr("nftpulse.store.books.MAX_HISTORY_SEGMENTS", 3)
    stream = Stream(collections=1, tokens_per_collection=20, seed=2)
    events = [Event.model_validate(e) for e in [*stream.mints(), *stream.take(400)]]
    contract = events[0].contract
    key = f"collection:{events[0].chain}:{contract}"
    book = CollectionBook.empty(events[0].chain, contract)
    sizes = []
    for version, start in enumerate(range(0, len(events), 60), start=1):
        book.apply_batch(events[start : start + 60], lambda base, quote, at: Decimal(1))
        with db.write() as s:
            books.save_books(s, [books.BookWrite(key, version, book)])
        books.history_saved(book)
        with db.read() as s:
            loaded, loaded_version = books.load_book(s, key, book.chain, contract)
            sizes.append(len(s.exec(select(col(BookHistoryRecord.entries))).all()))
        assert loaded_version == version
        assert orjson.dumps(loaded.to_dict()) == orjson.dumps(book.to_dict())
    assert max(sizes) == 3 and sizes[:4] == [1, 2, 3, 1]
    with db.read() as s:
        assert books.load_book(s, "collection:ethereum:0xnone", "ethereum", "0xnone")[1] == 0
