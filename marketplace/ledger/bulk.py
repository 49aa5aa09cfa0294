"""Fast multi-row inserts for the ledger's append-only tables.

On PostgreSQL, batches of rows go in with ``COPY ... FROM STDIN`` (binary-safe text format through
psycopg), which costs a fraction of an ``INSERT`` per row on the client and skips statement
parsing; ids come from the table's own sequence first. Elsewhere (SQLite), and for small
batches on PostgreSQL, it is one ``INSERT`` executed for many rows (one compiled statement,
the driver's executemany). Either way the rows join the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Session

# Below this many rows one multi-row INSERT beats COPY, whose protocol costs extra round trips.
COPY_ROWS_MIN = 32


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def use_copy(session: Session, rows: int) -> bool:
    return rows >= COPY_ROWS_MIN and is_postgresql(session)


def in_list(session: Session, column: sa.ColumnElement[Any], values: Sequence[Any]) -> Any:
    """``column IN values``; one array parameter on PostgreSQL (one parse, one plan)."""
    if is_postgresql(session):
        return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))


def next_ids(session: Session, table: sa.Table, count: int) -> list[int]:
    """``count`` fresh ids from ``table``'s ``id`` sequence (PostgreSQL only)."""
    return list(
        session.execute(
            sa.text(
                "SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :n)"
            ),
            {"table": table.name, "n": count},
        ).scalars()
    )


def insert_rows(
    session: Session, table: sa.Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table`` in the current transaction."""
    if not rows:
        return
    if use_copy(session, len(rows)):
        raw: Any = session.connection().connection.dbapi_connection  # a psycopg Connection
        names = ", ".join(f'"{c}"' for c in columns)
        with (
            raw.cursor() as cursor,
            cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy,
        ):
            for row in rows:
                copy.write_row(row)
        return
    # Parameters apart from the statement: its compiled form is cached across calls, where
    # values() inlined in it made every batch compile anew.
    session.execute(sa.insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
