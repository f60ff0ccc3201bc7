"""A read statement run straight on psycopg, for `Store.read_once(..., reused=True)` on PostgreSQL.

Why: the leaderboard runs the same page statement object again and again, and SQLAlchemy's work per
execution (pool checkout through a `Connection`, an execution context, its parameters, the result
objects) measured ~20% of a page's time on PostgreSQL, as much as a third of the statement itself.
Here the statement is compiled ONCE (SQLAlchemy's own compiler, its `IN` lists expanded:
`render_postcompile`), and each read borrows a connection of the store's statement pool
(`Engine.raw_connection`), runs the SQL as a prepared statement and returns psycopg's named tuples.

It only takes statements whose values need no conversion either way: no bind parameter with a bind
processor (`compile_driver_read` returns None and the store reads through SQLAlchemy instead) and, per
result column, SQLAlchemy's result processor for the column's type as the server reports it (worked
out on the first read, applied when there is one: the rows are those SQLAlchemy returns). Driver
errors are raised as SQLAlchemy's (`DBAPIError.instance`), as a `Connection` raises them, so callers
catch one family.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Executable
from sqlalchemy.exc import DBAPIError


@dataclass
class DriverRead:
    """One statement compiled for the driver: its SQL (`%(name)s` placeholders), bound values, and the
    column types whose result processors are looked up on the first read."""

    sql: str
    params: Mapping[str, Any]
    column_types: tuple[Any, ...]
    processors: tuple[Callable[[Any], Any] | None, ...] | None = None  # None: not looked up yet
    lock: threading.Lock = field(default_factory=threading.Lock)


def compile_driver_read(statement: Executable, engine: Engine) -> DriverRead | None:
    """`statement` compiled for `engine` (psycopg only), or None when it cannot be run on the driver
    as it is: not a SELECT of typed columns, or a bound value that SQLAlchemy converts first."""
    dialect = engine.dialect
    columns = getattr(statement, "selected_columns", None)
    if dialect.driver != "psycopg" or columns is None:
        return None
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    if any(bind.type.dialect_impl(dialect).bind_processor(dialect) is not None for bind in compiled.binds.values()):
        return None
    return DriverRead(sql=compiled.string, params=dict(compiled.params),
                      column_types=tuple(c.type.dialect_impl(dialect) for c in columns))


def run_driver_read(engine: Engine, read: DriverRead) -> list[Any]:
    """The rows of `read` on a connection of `engine`'s pool, as named tuples. A pooled connection the
    server dropped is thrown away and the read made again, once, on a new one (it is a read)."""
    from psycopg.rows import namedtuple_row  # deferred: psycopg is only installed with the postgres extra

    dialect = engine.dialect
    for attempt in (1, 2):
        pooled = engine.raw_connection()
        try:
            with pooled.driver_connection.cursor(row_factory=namedtuple_row) as cursor:
                cursor.execute(read.sql, read.params, prepare=True)
                rows = cursor.fetchall()
                processors = read.processors
                if processors is None:
                    processors = _processors(read, cursor.description or [], dialect)
        except dialect.loaded_dbapi.Error as exc:
            dropped = dialect.is_disconnect(exc, pooled.driver_connection, None)
            if dropped:
                pooled.invalidate(exc)
            pooled.close()
            if dropped and attempt == 1:
                continue
            raise DBAPIError.instance(read.sql, read.params, exc, dialect.loaded_dbapi.Error,
                                      connection_invalidated=dropped, dialect=dialect) from exc
        except BaseException:
            pooled.invalidate()  # interrupted mid-read: what the session is doing is unknown
            pooled.close()
            raise
        pooled.close()
        if not any(processors):
            return rows
        return [row._make(value if p is None else p(value) for p, value in zip(processors, row, strict=True))
                for row in rows]
    raise AssertionError("unreachable")


def _processors(read: DriverRead, description: Any, dialect: Any) -> tuple[Callable[[Any], Any] | None, ...]:
    """SQLAlchemy's result processor of each column (most are None on psycopg), for the types the
    server reported; kept on `read` after the first read."""
    with read.lock:
        if read.processors is None:
            read.processors = tuple(t.result_processor(dialect, column.type_code)
                                    for t, column in zip(read.column_types, description, strict=True))
        return read.processors
