"""One marketplace node per module (a fresh database per backend) with its embedded worker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace import create_app
from tests.conftest import PG_ADMIN_URL, ScratchDatabases, _pg_reachable, _test_config
from tests.marketplace.jobs.harness import Node, job_settings


@pytest.fixture(scope="module")
def node(
    db_backend: str, scratch_databases: ScratchDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    """``jishi serve``'s arrangement in one process: the app and the worker it embeds, on the
    file queue under the instance folder."""
    url, _engine = scratch_databases.create(db_backend)
    tmp: Path = tmp_path_factory.mktemp("jobs-node")
    app = create_app(_test_config(tmp, url, **job_settings()))
    node = Node(app, app.test_client())
    node.start_worker()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def database(scratch_databases: ScratchDatabases) -> str:
    """A fresh PostgreSQL database for nodes in several processes (SQLite serves one node)."""
    if not _pg_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} and CI is set")
        pytest.skip("PostgreSQL is not reachable")
    url, _engine = scratch_databases.create("postgresql")
    return url
