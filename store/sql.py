"""Dialect-aware SQL building blocks shared by the stores: set membership, bulk inserts and bulk updates
whose statement text does not depend on how many values there are, and the JSON encoding of columns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    ColumnElement,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel


def table_of(model: type[SQLModel]) -> Table:
    """A table model's ``Table`` (SQLModel does not declare ``__table__`` to type checkers)."""
    table = sa_inspect(model).local_table
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


def json_dumps(value: Any) -> str:
    """JSON columns (event data, read models) through orjson: several times faster than ``json``."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def upsert_insert(session: Session) -> Any:
    """The ``insert`` construct of the session's dialect, the one with ``on_conflict_do_…`` clauses."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def one_of(session: Session, column: Any, values: Sequence[Any]) -> Any:
    """``column IN (values)`` whose SQL text does not depend on how many values there are.

    On Postgres it is ``column = ANY(:array)``: one text for every batch size, so psycopg parses it once
    and, after a few runs, the server keeps it prepared, where an ``IN`` list of each length is a new
    statement to parse and plan. SQLite keeps the plain ``IN`` (callers stay under its variable limit).
    """
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))
    return column.in_(list(values))


def insert_many(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    complete: Callable[[Any], Any],
) -> Iterable[Sequence[Any]]:
    """Insert many rows with one statement; ``complete`` adds the conflict clause and RETURNING to the
    dialect's ``insert(table)``.

    On Postgres the rows travel as one JSON document unpacked by ``json_populate_recordset`` into the
    table's own row type: one parameter, so psycopg neither parses nor escapes per value, and the
    statement text is the same for every batch size. A multi-row ``VALUES`` with thousands of
    parameters cost the worker four times as much CPU per row. SQLite executes the statement with many
    parameter sets instead.
    """
    if session.get_bind().dialect.name != "postgresql":
        return session.connection().execute(complete(sqlite.insert(table)), list(rows))
    names = list(rows[0])
    source = _recordset(table, names)
    stmt = complete(postgresql.insert(table).from_select(names, select(*(source.c[n] for n in names))))
    return session.connection().execute(stmt, {"rows": _rows_json(rows)})


def update_many(
    session: Session,
    table: Table,
    key: str,
    rows: Sequence[dict[str, Any]],
    *,
    same: dict[str, Any],
    where: Sequence[ColumnElement[bool]] = (),
) -> int:
    """Update many rows, each matched on ``key`` and given its own values (the other keys of its dict),
    plus the values in ``same`` for all of them; ``where`` narrows which rows change. Returns how many did.

    On Postgres it is one ``UPDATE … FROM json_populate_recordset(…)``: the rows travel as one JSON
    document, as in ``insert_many``, where an executemany costs a parse, a bind and a round of the
    pipeline per row. SQLite executes the statement with many parameter sets.
    """
    if not rows:
        return 0
    names = list(rows[0])
    if session.get_bind().dialect.name != "postgresql":
        stmt = (
            update(table)
            .where(table.c[key] == bindparam(f"b_{key}"), *where)
            .values({**{n: bindparam(f"b_{n}") for n in names if n != key}, **same})
        )
        params = [{f"b_{n}": row[n] for n in names} for row in rows]
        return session.connection().execute(stmt, params).rowcount or 0
    source = _recordset(table, names)
    stmt = (
        update(table)
        .where(table.c[key] == source.c[key], *where)
        .values({**{n: source.c[n] for n in names if n != key}, **same})
    )
    return session.connection().execute(stmt, {"rows": _rows_json(rows)}).rowcount or 0


def _recordset(table: Table, names: list[str]) -> Any:
    """The JSON parameter ``rows`` as a set of rows of the table's own row type (Postgres)."""
    return (
        func.json_populate_recordset(
            literal_column(f"NULL::{table.name}"), cast(bindparam("rows", type_=Text()), JSON)
        )
        .table_valued(*names)
        .alias("r")
    )


def _rows_json(rows: Sequence[dict[str, Any]]) -> str:
    return orjson.dumps(list(rows), option=orjson.OPT_NON_STR_KEYS | orjson.OPT_NAIVE_UTC).decode()
