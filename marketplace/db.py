"""Database engine and the request-scoped session.

Services own the unit of work: they receive a ``Session`` and commit or roll back. Views get
the request's session from :func:`get_session`; it is closed when the request ends.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
import sqlalchemy.ext.compiler
from flask import Flask, current_app, g
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

T = TypeVar("T", bound=SQLModel)


def utcnow() -> dt.datetime:
    """The current time, UTC-aware, truncated to microseconds as both engines store it."""
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes; every stored time is UTC, so say so."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def default_sqlite_url(instance_dir: Path) -> str:
    return f"sqlite:///{instance_dir / 'jishi.sqlite3'}"


def make_engine(url: str, *, lock_timeout_s: float = 30.0) -> Engine:
    """An engine for ``url`` with the per-engine settings the marketplace relies on.

    ``lock_timeout_s`` bounds how long a statement waits for a lock another transaction holds:
    SQLite's busy timeout, PostgreSQL's ``lock_timeout``. Past it the statement fails with an
    error :func:`is_lock_timeout` recognises, which the API answers with 503 and Retry-After.
    """
    lock_timeout_ms = max(1, int(lock_timeout_s * 1000))
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": lock_timeout_s},
        )
        event.listen(engine, "connect", _sqlite_on_connect(lock_timeout_ms))
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        connect_args={"options": f"-c lock_timeout={lock_timeout_ms}"},
    )


def _sqlite_on_connect(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own implicit BEGIN is unreliable (no SAVEPOINT, late locking); switch it
        # off and issue BEGIN from the "begin" event instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    return on_connect


def _sqlite_on_begin(connection: Any) -> None:
    # With isolation_level=None pysqlite never opens a transaction; open one explicitly so that
    # SAVEPOINTs and rollbacks behave as on PostgreSQL. A caller that needs the write lock up
    # front (the ledger) asks for IMMEDIATE through the connection's execution options.
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def begin_write(session: Session) -> None:
    """Start the session's database transaction as a writer.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE``, taking the write lock before the
    first read. A transaction that began with a plain (deferred) BEGIN, read, and then writes
    must upgrade its read lock; when another connection wrote in between, SQLite answers that
    upgrade with SQLITE_BUSY at once, without waiting out the busy timeout (waiting could not
    help: the reader's snapshot is stale). Taking the lock first makes the busy timeout apply,
    and two writers can never both read a row and then both write it. Work the session did
    before (token look-ups and other reads) is committed first.
    """
    if session.in_transaction():
        session.commit()
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
    else:
        session.connection()


def table(model: type[SQLModel]) -> sa.Table:
    """The Core table of a SQLModel table class (which type checkers do not see on it)."""
    return model.__table__  # type: ignore[attr-defined,no-any-return]


def lock_row(session: Session, model: type[T], ident: object) -> T:
    """``model``'s row ``ident``, read afresh under a row lock (``FOR UPDATE``; on SQLite the
    unit of work's write lock serves). The caller knows the row exists: a missing one raises."""
    row = session.get(model, ident, with_for_update=True, populate_existing=True)
    if row is None:
        raise LookupError(f"no {model.__name__} row {ident!r}")
    return row


def get_owned(
    session: Session, model: type[T], ident: object, organization_id: int, missing: Exception
) -> T:
    """``model``'s row ``ident`` if it belongs to ``organization_id``, else ``missing`` is raised:
    another organisation's row is not found, as a row that does not exist, so that ids tell an
    outsider nothing."""
    row = session.get(model, ident)
    if row is None or getattr(row, "organization_id", None) != organization_id:
        raise missing
    return row


# SQLite's "database is locked"/"database table is locked"; PostgreSQL's lock_not_available
# (lock_timeout expired), serialization_failure and deadlock_detected.
_LOCK_SQLSTATES = frozenset({"55P03", "40001", "40P01"})


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` means the database stayed locked by others for too long."""
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.DBAPIError):
        return False
    orig = exc.orig
    if isinstance(orig, sqlite3.OperationalError):
        return "locked" in str(orig) or "busy" in str(orig)
    return getattr(orig, "sqlstate", None) in _LOCK_SQLSTATES


class Database:
    """Owns the engine and hands out sessions; kept in ``app.extensions['db']``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.session_factory: Callable[[], Session] = lambda: Session(
            engine, expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextlib.contextmanager
    def driver_transaction(self) -> Iterator[Any]:
        """A writing transaction as the driver's own cursor: committed when the block ends,
        rolled back when it raises.

        For the few statements on the hot path whose cost through the ORM is mostly the ORM's
        (see ``metering.ReservedCallCounter``); it takes the write lock up front on SQLite, as
        :func:`begin_write` does. Tests replace it, as they replace ``session_factory``.
        """
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                if self.is_sqlite:
                    cursor.execute("BEGIN IMMEDIATE")
                yield cursor
            except BaseException:
                connection.rollback()
                raise
            finally:
                cursor.close()
            connection.commit()
        finally:
            connection.close()

    def session(self) -> Session:
        return self.session_factory()


def init_app(app: Flask, database: Database) -> None:
    app.extensions["db"] = database

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()


def get_database() -> Database:
    return current_app.extensions["db"]


def get_session() -> Session:
    """The session of the current request (or app context), created on first use."""
    if "db_session" not in g:
        g.db_session = get_database().session()
    return g.db_session


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timezone-aware timestamp that is UTC on both engines (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC time")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else as_utc(value)


class epoch_hour(sa.sql.functions.FunctionElement[int]):
    """Whole hours since 1970-01-01 UTC of a stored timestamp, on either engine.

    Reports group by it in SQL, so a chart over many events reads one row per hour, and the
    page groups the hours into days of the viewer's own time zone.
    """

    type = sa.Integer()
    inherit_cache = True
    name = "epoch_hour"


@sa.ext.compiler.compiles(epoch_hour, "sqlite")
def _epoch_hour_sqlite(element: epoch_hour, compiler: Any, **kw: Any) -> str:
    # SQLite stores the UTC time without a zone, which strftime reads as UTC.
    return f"(CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER) / 3600)"


@sa.ext.compiler.compiles(epoch_hour, "postgresql")
def _epoch_hour_postgresql(element: epoch_hour, compiler: Any, **kw: Any) -> str:
    return f"CAST(floor(extract(epoch FROM {compiler.process(element.clauses, **kw)}) / 3600) AS INTEGER)"


def hour_start(epoch_hours: int) -> dt.datetime:
    """The UTC start of an :class:`epoch_hour` bucket."""
    return dt.datetime.fromtimestamp(int(epoch_hours) * 3600, dt.UTC)
