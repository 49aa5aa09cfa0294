"""A job on an S3 store (SeaweedFS): the dataset and outputs live in the bucket, and the worker
reads the dataset's rows from the node's verified local copy."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from marketplace import create_app
from model_registry.blobstore import open_blob_store
from tests import onnx_models as m
from tests.conftest import ScratchDatabases, _test_config
from tests.marketplace.jobs.harness import Node, job_settings, npz


@pytest.fixture(scope="module")
def s3_node(
    seaweed: object, scratch_databases: ScratchDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    url, _engine = scratch_databases.create("sqlite")
    tmp: Path = tmp_path_factory.mktemp("jobs-s3")
    storage = seaweed.storage_url()  # type: ignore[attr-defined]
    open_blob_store(storage, default_root=tmp).ensure_bucket()  # type: ignore[attr-defined]
    app = create_app(_test_config(tmp, url, **job_settings(STORAGE_URL=storage)))
    node = Node(app, app.test_client())
    node.start_worker()
    yield node
    node.stop()


def test_a_job_reads_its_dataset_from_s3_through_the_node_cache(s3_node: Node) -> None:
    node = s3_node
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    model = node.publish_model(vendor, m.slow_classifier())
    offer = node.offer(vendor, model["model_id"], kind="perpetual", price_minor=1, trial_calls=90)
    node.trial(buyer, offer)
    x = np.random.default_rng(5).random((70, 4), dtype=np.float32)
    x[:, 3] = 0
    dataset = node.dataset(buyer, npz(x=x)).json
    resp = node.job(
        buyer,
        dataset_id=dataset["id"],
        versions=[{"model_id": model["model_id"], "version": "1.0.0"}],
        batch_size=7,
    )
    assert resp.status_code == 201, resp.json
    job = node.wait(buyer, resp.json["id"])
    (version,) = job["versions"]
    assert (version["samples_done"], version["samples_charged"]) == (70, 70)
    results = node.client.get(
        f"/api/v1/evaluation-jobs/{job['id']}/results",
        query_string={"version": version["version_id"]},
        headers=buyer.headers(),
    )
    np.testing.assert_allclose(np.load(io.BytesIO(results.data))["y"], x[:, :3], rtol=1e-6)

    store = node.app.extensions["blob_store"]
    assert [s.key for s in store.list(f"datasets/{buyer.id}/")] == [
        f"datasets/{buyer.id}/sha256/{dataset['sha256'][:2]}/{dataset['sha256'][2:]}.npz"
    ]
    assert len(list(store.list(f"jobs/{job['id']}/"))) == 3  # chunks of 28, 28 and 14
    cache = node.app.extensions["evaluation"].blob_cache
    assert (cache.root / dataset["sha256"][:2] / dataset["sha256"][2:]).is_file()
