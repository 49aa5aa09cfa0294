"""One marketplace served by two web processes and two worker processes on one machine.

Each process is what production runs (``jishi serve`` with gunicorn, ``jishi worker``), each
with its own instance folder, sharing only what DESIGN §11 says nodes share: PostgreSQL, the S3
server (SeaweedFS), the broker (RabbitMQ, and again Redis) and the journal's signing key. A
buyer's requests alternate between the two web nodes, as behind a proxy with no session
affinity, and still see one marketplace: the job created on one is followed and downloaded on
the other, its chunks run on both workers, and every sample is charged once.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from marketplace.audit.notes import Signer
from model_registry.blobstore import open_blob_store
from tests.conftest import _test_config
from tests.marketplace.jobs.harness import JISHI, Workers, job_settings, npz
from tests.marketplace.jobs.test_workers import RABBITMQ_URL, REDIS_URL, _delete_queue
from tests.marketplace.serving.node import Client, Node, start_node
from tests.onnx_models import slow_classifier

SAMPLES = 192
CHUNK = 16
BATCH = 8
ROYALTY = 2500
# Each batch counts to this before it answers (a few milliseconds), so that a chunk lasts long
# enough for both workers to be handed some.
DELAY = 20_000


class Marketplace:
    """Two ``jishi serve`` nodes and two ``jishi worker`` nodes on shared services."""

    def __init__(self, tmp: Path, database: str, storage: str, broker_url: str) -> None:
        self.queue = f"jishi.test.{uuid.uuid4().hex[:12]}"
        self.broker_url = broker_url
        self.key_path = tmp / "shared" / "audit-ed25519.key"
        self.key_path.parent.mkdir()
        self.settings = job_settings(
            DATABASE_URL=database,
            STORAGE_URL=storage,
            BROKER_URL=broker_url,
            JOB_QUEUE_NAME=self.queue,
            JOB_CHUNK_SAMPLES=CHUNK,
            JOB_EMBEDDED_WORKER_THREADS=0,
            AUDIT_KEY_PATH=str(self.key_path),
        )
        self.tmp = tmp
        self.database = database
        self.web: list[Node] = []
        self.workers = Workers(tmp, _test_config(tmp, database, **self.settings))

    def start(self) -> None:
        # One after the other: the first migrates the database and writes the journal key.
        for n in range(2):
            self.web.append(
                start_node(
                    self.tmp,
                    self.database,
                    "--processes",
                    "1",
                    "--threads",
                    "4",
                    instance=self.tmp / f"web-{n}",
                    **{k: v for k, v in self.settings.items() if k != "DATABASE_URL"},
                )
            )
        self.workers.start()
        self.workers.start()

    def stop(self) -> None:
        self.workers.stop()
        for node in self.web:
            node.stop()
        _delete_queue(self.queue, self.broker_url)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.web]


@pytest.fixture(params=[RABBITMQ_URL, REDIS_URL], ids=["rabbitmq", "redis"])
def marketplace(
    request: pytest.FixtureRequest, seaweed: Any, database: str, tmp_path: Path
) -> Iterator[Marketplace]:
    storage = seaweed.storage_url()
    open_blob_store(storage, default_root=tmp_path).ensure_bucket()  # type: ignore[attr-defined]
    market = Marketplace(tmp_path, database, storage, request.param)
    try:
        market.start()
        yield market
    finally:
        market.stop()


def _on(client: Client, url: str) -> Client:
    """The same organisation and token, talking to another node."""
    other = Client(url)
    other.id, other.token = client.id, client.token
    other.http.headers["Authorization"] = f"Bearer {client.token}"
    return other


def _chunks_of(database: str, job_id: int) -> list[dict[str, Any]]:
    engine = sa.create_engine(database, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT chunk_index, state, attempts, worker FROM evaluation_chunks "
                    "WHERE job_id = :job ORDER BY job_version_id, chunk_index"
                ),
                {"job": job_id},
            ).mappings()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def _wait_finished(clients: list[Client], job_id: int, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll the job on each node in turn until it finishes; every node must agree on it."""
    deadline = time.monotonic() + timeout_s
    turn = 0
    while True:
        job = clients[turn % 2].get(f"/api/v1/evaluation-jobs/{job_id}").json()
        if job["state"] == "finished":
            other = clients[(turn + 1) % 2].get(f"/api/v1/evaluation-jobs/{job_id}").json()
            assert other == job
            return dict(job)
        assert time.monotonic() < deadline, job
        turn += 1
        time.sleep(0.2)


@pytest.mark.slow
def test_two_web_and_two_worker_processes_serve_one_marketplace(
    marketplace: Marketplace, tmp_path: Path
) -> None:
    first, second = marketplace.urls
    ours, theirs = Client(first, ["vendor"]), Client(second, ["vendor"])
    ours_id = ours.publish(slow_classifier())
    theirs_id = theirs.publish(slow_classifier(shift=1))
    metered = ours.offer(ours_id, royalty_per_1k_minor=ROYALTY)
    trial = theirs.offer(theirs_id, kind="perpetual", price_minor=100_000, trial_calls=SAMPLES)

    buyer = Client(second, ["buyer"])
    buyer_elsewhere = _on(buyer, first)
    licence = buyer_elsewhere.buy(metered, top_up_minor=10_000)
    trial_licence = buyer.trial(trial)

    x = np.random.default_rng(11).random((SAMPLES, 4), dtype=np.float32)
    x[:, 3] = DELAY
    labels = x[:, :3].argmax(axis=1).astype(np.int64)
    dataset = buyer_elsewhere.post(
        "/api/v1/datasets",
        params={"name": "line 2"},
        data=npz(x=x, **{"expected:y": labels}),
        headers={"Content-Type": "application/x-npz"},
    )
    assert dataset.status_code == 201, dataset.text
    created = buyer.post(
        "/api/v1/evaluation-jobs",
        json={
            "dataset_id": dataset.json()["id"],
            "versions": [
                {"model_id": ours_id, "version": "1.0.0"},
                {"model_id": theirs_id, "version": "latest"},
            ],
            "batch_size": BATCH,
            "metric": "accuracy",
        },
    )
    assert created.status_code == 201, created.text
    job_id = int(created.json()["id"])

    job = _wait_finished([buyer, buyer_elsewhere], job_id)
    first_version, second_version = job["versions"]
    for version in job["versions"]:
        assert (version["samples_done"], version["samples_failed"]) == (SAMPLES, 0)
        assert version["samples_charged"] == SAMPLES
    assert [row["metric_value"] for row in job["comparison"]] == [1.0, 0.0]

    # Both workers ran chunks; none ran twice to completion.
    chunks = _chunks_of(marketplace.database, job_id)
    assert len(chunks) == 2 * SAMPLES // CHUNK
    assert all(c["state"] == "done" for c in chunks)
    pids = {proc.pid for proc in marketplace.workers.procs}
    ran_on = {pid for c in chunks for pid in pids if f"worker-{pid}@" in c["worker"]}
    assert ran_on == pids, marketplace.workers.output()

    # Charged once, whichever node is asked.
    charged = SAMPLES * ROYALTY // 1000
    assert (first_version["charged_minor"], second_version["charged_minor"]) == (charged, 0)
    for client in (buyer, buyer_elsewhere):
        wallet = client.get("/api/v1/wallet").json()
        (cny,) = [b for b in wallet["balances"] if b["currency"] == "CNY"]
        assert (cny["balance_minor"], cny["held_minor"]) == (10_000 - charged, 0)
        usage = client.get(f"/api/v1/licenses/{licence['licence_id']}").json()["usage"]
        assert usage["calls_used"] == SAMPLES
        assert client.get(f"/api/v1/licenses/{trial_licence['id']}").json()["calls_remaining"] == 0

    # Outputs written by the workers to S3 download from either web node.
    for client in (buyer, buyer_elsewhere):
        results = client.get(
            f"/api/v1/evaluation-jobs/{job_id}/results",
            params={"version": first_version["version_id"]},
        )
        assert results.status_code == 200, results.text[:300]
        arrays = np.load(io.BytesIO(results.content))
        np.testing.assert_allclose(arrays["y"], x[:, :3], rtol=1e-6)
        assert (arrays["jishi.sample"] == np.arange(SAMPLES)).all()

    # The report, signed with the key every node shares, verifies offline.
    report = buyer_elsewhere.get(f"/api/v1/evaluation-jobs/{job_id}/report")
    assert report.status_code == 200, report.text
    assert buyer.get(f"/api/v1/evaluation-jobs/{job_id}/report").json() == report.json()
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report.json()))
    verifier = Signer.parse(marketplace.key_path.read_text().strip()).verifier().encode()
    done = subprocess.run(
        [JISHI, "reports", "verify", str(path), "--public-key", verifier],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"OK: evaluation report of job {job_id} ")
    assert f"accuracy on dataset {dataset.json()['sha256'][:16]}" in done.stdout
