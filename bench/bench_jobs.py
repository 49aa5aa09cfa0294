"""Evaluation jobs on a real broker with 1 and 2 ``jishi worker`` processes, against the same
batches run straight through a bare sandbox pool in this process.

Run: .venv/bin/python -m bench.bench_jobs [--samples 10000] [--batch 1] [--workers 1 2]
     [--threads 1] [--broker-url redis://127.0.0.1:6379/0] [--database-url URL]

A buyer with a per-inference licence runs a job of N samples of a ~1 ms conv (two 3×3
convolutions over a 32×32 image with a batch axis) from creation to ``finished``; the
workers are real processes on the broker (a queue of the run's own) and a fresh PostgreSQL
database (``--database-url`` names another). The baseline is a warm sandbox pool in this
process running the same batches: one after another (what one worker thread does), and from as
many threads as the workers have in all. Printed: samples/s of each, the ratios the goals name
(2 workers ≥ 1.8× one; one ≥ 0.8× the bare pool) and what the queue adds per chunk: the
one-worker job's time less the pool's, spread over the chunks.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from marketplace import create_app
from marketplace.jobs import job_pool_config
from sandbox.pool import SandboxPool
from tests.conftest import ScratchDatabases, _test_config
from tests.marketplace.jobs.harness import Node, Workers, job_settings, npz

SIDE, CHANNELS = 32, 48


def conv_model() -> bytes:
    """Conv 3→C, Relu, Conv C→C, global average: about 1 ms a sample on one core."""
    rng = np.random.default_rng(SIDE)
    w1 = rng.standard_normal((CHANNELS, 3, 3, 3)).astype(np.float32) * 0.1
    w2 = rng.standard_normal((CHANNELS, CHANNELS, 3, 3)).astype(np.float32) * 0.1
    f = TensorProto.FLOAT
    graph = oh.make_graph(
        [
            oh.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            oh.make_node("Relu", ["c1"], ["r1"]),
            oh.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
            oh.make_node("GlobalAveragePool", ["c2"], ["pooled"]),
            oh.make_node("Flatten", ["pooled"], ["y"]),
        ],
        "bench-conv",
        [oh.make_tensor_value_info("x", f, ["N", 3, SIDE, SIDE])],
        [oh.make_tensor_value_info("y", f, ["N", CHANNELS])],
        initializer=[nh.from_array(w1, "w1"), nh.from_array(w2, "w2")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _inputs(samples: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((samples, 3, SIDE, SIDE)).astype(np.float32)


def _run_job(node: Node, buyer: object, model_id: int, dataset_id: int, batch: int) -> float:
    started = time.perf_counter()
    resp = node.job(
        buyer,  # type: ignore[arg-type]
        dataset_id=dataset_id,
        versions=[{"model_id": model_id, "version": "1.0.0"}],
        batch_size=batch,
    )
    assert resp.status_code == 201, resp.json
    job = node.wait(buyer, resp.json["id"], timeout_s=1800)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    (version,) = job["versions"]
    assert version["samples_done"] == version["samples_charged"], version
    return elapsed


def _pool_seconds(pool: SandboxPool, x: np.ndarray, batch: int, callers: int) -> float:
    model = conv_model()
    key = "bench-conv"
    pool.evaluate(key, lambda: model, {"x": x[:batch]})  # warm
    starts = list(range(0, len(x), batch))

    def call(mine: list[int]) -> None:
        for at in mine:
            pool.evaluate(key, lambda: model, {"x": x[at : at + batch]})

    threads = [threading.Thread(target=call, args=(starts[i::callers],)) for i in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="threads per worker process")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", default="", help="default: a fresh PostgreSQL db")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="jishi-bench-jobs-"))
    scratch = ScratchDatabases(tmp)
    url = args.database_url or scratch.create("postgresql")[0]
    queue = f"jishi.bench.{uuid.uuid4().hex[:8]}"
    config = _test_config(
        tmp,
        url,
        **job_settings(
            BROKER_URL=args.broker_url,
            JOB_QUEUE_NAME=queue,
            JOB_CHUNK_SAMPLES=args.chunk,
            JOB_EMBEDDED_WORKER_THREADS=0,
            JOB_SAMPLE_TIMEOUT_S=10.0,
            JOB_LEASE_S=30.0,
            JOB_REQUEUE_S=600.0,
            DATASET_BYTES_MAX=2 * 1024**3,
        ),
    )
    app = create_app(config)
    node = Node(app, app.test_client())
    pool = SandboxPool(job_pool_config(app.extensions["settings"]))
    x = _inputs(args.samples)
    try:
        vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
        model = node.publish_model(vendor, conv_model())
        node.purchase(buyer, node.offer(vendor, model["model_id"], royalty_per_1k_minor=100))
        node.top_up(buyer, 10_000_000)
        dataset = node.dataset(buyer, npz(x=x))
        assert dataset.status_code == 201, dataset.json
        warm_up = node.dataset(buyer, npz(x=x[: 4 * args.chunk]), name="warm-up")
        assert warm_up.status_code == 201, warm_up.json
        chunks = -(-args.samples // args.chunk)
        load = os.getloadavg()[0]
        print(
            f"{args.samples} samples of a conv over {SIDE}×{SIDE}×3 ({CHANNELS} channels), "
            f"batch {args.batch}, chunks of {args.chunk} ({chunks}), {args.threads} thread(s) per "
            f"worker, {url.split(':')[0]}, broker {args.broker_url.split(':')[0]}, "
            f"load {load:.1f}"
        )
        print(f"{'run':<28} {'s':>8} {'samples/s':>10} {'vs pool':>8}")
        pool_1 = _pool_seconds(pool, x, args.batch, 1)
        print(f"{'bare pool, 1 caller':<28} {pool_1:>8.2f} {args.samples / pool_1:>10.0f}")
        figures: dict[int, float] = {}
        for count in args.workers:
            workers = Workers(tmp / f"workers-{count}", config)
            (tmp / f"workers-{count}").mkdir()
            try:
                for _ in range(count):
                    workers.start(args.threads)
                # A short job first: model fetched and sandbox warm, as in steady work.
                _run_job(node, buyer, model["model_id"], warm_up.json["id"], args.batch)
                job_s = _run_job(node, buyer, model["model_id"], dataset.json["id"], args.batch)
            finally:
                workers.stop()
            figures[count] = job_s
            callers = count * args.threads
            pool_n = pool_1 if callers == 1 else _pool_seconds(pool, x, args.batch, callers)
            if callers > 1:
                print(
                    f"{f'bare pool, {callers} callers':<28} {pool_n:>8.2f} "
                    f"{args.samples / pool_n:>10.0f}"
                )
            print(
                f"{f'job, {count} worker(s)':<28} {job_s:>8.2f} {args.samples / job_s:>10.0f} "
                f"{pool_n / job_s:>8.2f}"
            )
        # The bare pool again: the machine's speed drifts over a run, so the ratios use the
        # mean of the pool's time before and after the jobs.
        pool_after = _pool_seconds(pool, x, args.batch, 1)
        print(
            f"{'bare pool, 1 caller, after':<28} {pool_after:>8.2f} {args.samples / pool_after:>10.0f}"
        )
        pool_1 = (pool_1 + pool_after) / 2
        if 1 in figures:
            print(
                f"one worker / bare pool: {pool_1 / figures[1]:.2f} (goal ≥ 0.8); queue adds "
                f"{(figures[1] - pool_1) / chunks * 1000:.1f} ms per chunk of {args.chunk}"
            )
        if 1 in figures and 2 in figures:
            print(f"2 workers / 1 worker: {figures[1] / figures[2]:.2f} (goal ≥ 1.8)")
        print(f"load after: {os.getloadavg()[0]:.1f}")
    finally:
        pool.close()
        node.stop()
        scratch.drop_all()
        _delete_queue(args.broker_url, queue)


def _delete_queue(broker_url: str, name: str) -> None:
    from kombu import Connection

    try:
        with Connection(broker_url, connect_timeout=5) as conn:
            conn.default_channel.queue_delete(name)
    except Exception as exc:  # the run's figures stand; say what was left behind
        print(f"queue {name} not deleted: {exc}")


if __name__ == "__main__":
    main()
