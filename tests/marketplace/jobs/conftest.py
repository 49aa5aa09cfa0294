"""One marketplace node per module (a fresh database per backend) with its embedded worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace import create_app
from tests.conftest import ScratchDatabases, _test_config
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
