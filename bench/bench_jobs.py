"""Evaluation jobs on the embedded queue vs the same batches straight through a sandbox pool.

Run: .venv/bin/python -m bench.bench_jobs [--samples N] [--batch B ...] [--database-url URL]

For each batch size, a buyer with a per-inference licence runs a job of N samples of the demo
model (16 readings -> a probability) on the worker `jishi serve` embeds (one thread here, the
file queue, chunks of 256 samples), from creation to `finished`; the baseline sends the same
batches, one after another, to a warm sandbox pool in the same process. Printed: samples per
second of each and the job's overhead per chunk (queue, claim, dataset reads, outputs to the
blob store, the usage transaction), beside the baseline. SQLite in a temporary folder unless
`--database-url` names a PostgreSQL database.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from marketplace import create_app, migrate
from marketplace.db import make_engine
from marketplace.demo import defect_scorer_model
from marketplace.jobs import job_pool_config
from sandbox.pool import SandboxPool
from tests.conftest import _test_config
from tests.marketplace.jobs.harness import Node, job_settings, npz


def _job_seconds(node: Node, samples: int, batch: int) -> tuple[float, int]:
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    model = node.publish_model(vendor, defect_scorer_model())
    node.purchase(buyer, node.offer(vendor, model["model_id"], royalty_per_1k_minor=100))
    node.top_up(buyer, 1_000_000)
    readings = np.random.default_rng(0).standard_normal((samples, 16)).astype(np.float32)
    dataset = node.dataset(buyer, npz(readings=readings)).json
    started = time.perf_counter()
    resp = node.job(
        buyer,
        dataset_id=dataset["id"],
        versions=[{"model_id": model["model_id"], "version": "1.0.0"}],
        batch_size=batch,
    )
    assert resp.status_code == 201, resp.json
    job = node.wait(buyer, resp.json["id"], timeout_s=600)
    elapsed = time.perf_counter() - started
    assert job["versions"][0]["samples_done"] == samples
    chunks = -(-samples // job["chunk_samples"])
    return elapsed, chunks


def _pool_seconds(pool: SandboxPool, samples: int, batch: int) -> float:
    model = defect_scorer_model()
    readings = np.random.default_rng(0).standard_normal((samples, 16)).astype(np.float32)
    key = "bench-defect-scorer"
    pool.evaluate(key, lambda: model, {"readings": readings[:batch]})  # warm
    started = time.perf_counter()
    for at in range(0, samples, batch):
        pool.evaluate(key, lambda: model, {"readings": readings[at : at + batch]})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="jishi-bench-jobs-"))
    url = args.database_url or f"sqlite:///{tmp / 'bench.sqlite3'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    app = create_app(_test_config(tmp, url, **job_settings(JOB_CHUNK_SAMPLES=256)))
    node = Node(app, app.test_client())
    node.start_worker(threads=1)  # one chunk at a time, as the baseline runs its batches
    pool = SandboxPool(job_pool_config(app.extensions["settings"]))
    try:
        print(f"{args.samples} samples, chunks of 256, {url.split(':')[0]}")
        print(
            f"{'batch':>6} {'job s':>8} {'job samples/s':>14} {'pool s':>8} "
            f"{'pool samples/s':>15} {'overhead/chunk ms':>18}"
        )
        for batch in args.batch:
            job_s, chunks = _job_seconds(node, args.samples, batch)
            pool_s = _pool_seconds(pool, args.samples, batch)
            print(
                f"{batch:>6} {job_s:>8.2f} {args.samples / job_s:>14.0f} {pool_s:>8.2f} "
                f"{args.samples / pool_s:>15.0f} {(job_s - pool_s) / chunks * 1000:>18.1f}"
            )
    finally:
        pool.close()
        node.stop()


if __name__ == "__main__":
    main()
