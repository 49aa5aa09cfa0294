"""A marketplace node with real commits for job tests, and builders for what jobs need.

Jobs cross threads and processes (the web side publishes, a worker runs, the sweeper
republishes), so these tests use a fresh database whose commits are real, not the rolled-back
``app`` fixture. Models are published through the API, so their signatures are the
inspection's own.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask
from flask.testing import FlaskClient

from marketplace import periodic
from marketplace.jobs.queue import EmbeddedWorker
from tests.conftest import Org, register_org
from tests.marketplace.serving.node import free_port

__all__ = ["JISHI", "Node", "Workers", "free_port", "job_settings", "npz"]

WAIT_S = 60.0
JISHI = str(Path(sys.executable).with_name("jishi"))


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def job_settings(**overrides: Any) -> dict[str, Any]:
    """Small, quick settings for job tests (each test may override)."""
    settings: dict[str, Any] = {
        "JOB_CHUNK_SAMPLES": 32,
        "JOB_SAMPLE_TIMEOUT_S": 1.0,
        "JOB_LEASE_S": 3.0,
        "JOB_REQUEUE_S": 4.0,
        "JOB_SWEEP_INTERVAL_S": 0.5,
        "SANDBOX_WORKERS_MAX": 3,
        "SANDBOX_WORKER_MEMORY_BYTES_MAX": 1024**3,
        "EVAL_TIMEOUT_S": 5.0,
        "AUDIT_SEQUENCE_INTERVAL_S": 0,
        "METERING_SETTLE_INTERVAL_S": 0,
        "PAYMENTS_OUTBOX_INTERVAL_S": 0,
        "PAYMENTS_RECONCILE_INTERVAL_S": 0,
    }
    settings.update(overrides)
    return settings


@dataclass
class Node:
    """An app on a real database, its test client, and (when started) its embedded worker."""

    app: Flask
    client: FlaskClient
    worker: EmbeddedWorker | None = None
    sweeper: periodic.Runner | None = None

    def start_worker(self, threads: int = 2) -> None:
        self.worker = EmbeddedWorker(self.app.extensions["celery"], threads)
        self.worker.start()
        self.sweeper = periodic.Runner(self.app, tick_s=0.2, names={"jobs.sweep"})
        self.sweeper.start()

    def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.worker is not None:
            self.worker.stop()
        self.app.extensions["job_runner"].drain()
        for name in ("job_pool", "sandbox_pool"):
            self.app.extensions[name].close()
        self.app.extensions["db"].engine.dispose()

    def session(self) -> Any:
        return self.app.extensions["db"].session()

    # --- actors and catalog ----------------------------------------------------------------

    def org(self, roles: list[str]) -> Org:
        return register_org(self.client, roles)

    def publish_model(self, vendor: Org, model: bytes, version: str = "1.0.0") -> dict[str, Any]:
        listing = self.client.post(
            "/api/v1/models",
            json={"name": f"Classifier {uuid.uuid4().hex[:6]}", "task": "classification"},
            headers=vendor.headers(),
        )
        assert listing.status_code == 201, listing.json
        model_id = listing.json["id"]
        uploaded = self.client.post(
            f"/api/v1/models/{model_id}/versions?version={version}",
            data=model,
            content_type="application/octet-stream",
            headers=vendor.headers(),
        )
        assert uploaded.status_code == 201, uploaded.json
        return {"model_id": model_id, "version": version, "sha256": uploaded.json["sha256"]}

    def offer(self, vendor: Org, model_id: int, **terms: Any) -> dict[str, Any]:
        body = {
            "name": "Per call",
            "kind": "per_inference",
            "currency": "CNY",
            "price_minor": 0,
            "royalty_per_1k_minor": 2500,
            "trial_calls": 0,
            "trial_days": 0,
            "terms_md": "Pay per call.",
        }
        body.update(terms)
        resp = self.client.post(
            f"/api/v1/models/{model_id}/offers", json=body, headers=vendor.headers()
        )
        assert resp.status_code == 201, resp.json
        return dict(resp.json)

    def trial(self, buyer: Org, offer: dict[str, Any]) -> dict[str, Any]:
        resp = self.client.post(
            f"/api/v1/offers/{offer['id']}/trial",
            json={"accept_terms_sha256": offer["terms_sha256"]},
            headers=buyer.headers(),
        )
        assert resp.status_code == 201, resp.json
        return dict(resp.json)

    def purchase(self, buyer: Org, offer: dict[str, Any]) -> dict[str, Any]:
        resp = self.client.post(
            f"/api/v1/offers/{offer['id']}/purchase",
            json={"accept_terms_sha256": offer["terms_sha256"]},
            headers=buyer.headers(**{"Idempotency-Key": uuid.uuid4().hex}),
        )
        assert resp.status_code == 201, resp.json
        return dict(resp.json)

    def top_up(self, buyer: Org, amount_minor: int) -> None:
        resp = self.client.post(
            "/api/v1/wallet/top-ups",
            json={"amount_minor": amount_minor, "currency": "CNY"},
            headers=buyer.headers(**{"Idempotency-Key": uuid.uuid4().hex}),
        )
        assert resp.status_code in (200, 201), resp.json

    def wallet(self, buyer: Org) -> dict[str, int]:
        resp = self.client.get("/api/v1/wallet", headers=buyer.headers())
        assert resp.status_code == 200, resp.json
        (cny,) = [b for b in resp.json["balances"] if b["currency"] == "CNY"]
        return {
            "balance": cny["balance_minor"],
            "held": cny["held_minor"],
            "available": cny["available_minor"],
        }

    def licence(self, buyer: Org, licence_id: int) -> dict[str, Any]:
        resp = self.client.get(f"/api/v1/licenses/{licence_id}", headers=buyer.headers())
        assert resp.status_code == 200, resp.json
        return dict(resp.json)

    # --- datasets and jobs -----------------------------------------------------------------

    def dataset(self, buyer: Org, body: bytes, name: str = "test set") -> Any:
        return self.client.post(
            f"/api/v1/datasets?name={name}",
            data=body,
            content_type="application/x-npz",
            headers=buyer.headers(),
        )

    def job(self, buyer: Org, **body: Any) -> Any:
        return self.client.post("/api/v1/evaluation-jobs", json=body, headers=buyer.headers())

    def get_job(self, buyer: Org, job_id: int) -> dict[str, Any]:
        resp = self.client.get(f"/api/v1/evaluation-jobs/{job_id}", headers=buyer.headers())
        assert resp.status_code == 200, resp.json
        return dict(resp.json)

    def chunks(self, job_id: int) -> list[tuple[Any, ...]]:
        """The job's chunks as the database has them (for failure messages)."""
        with self.app.extensions["db"].engine.connect() as conn:
            rows = [
                tuple(row)
                for row in conn.exec_driver_sql(
                    "SELECT job_version_id, chunk_index, state, attempts, samples_done, "
                    "samples_failed, worker, lease_until, finished_at FROM evaluation_chunks "
                    f"WHERE job_id = {int(job_id)} ORDER BY job_version_id, chunk_index"
                )
            ]
        return rows

    def wait(
        self,
        buyer: Org,
        job_id: int,
        until: Callable[[dict[str, Any]], bool] = lambda job: job["state"] == "finished",
        timeout_s: float = WAIT_S,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get_job(buyer, job_id)
            if until(job):
                return job
            assert time.monotonic() < deadline, f"job {job_id} did not get there: {job}"
            time.sleep(0.1)


class Workers:
    """``jishi worker`` child processes sharing the test's database, blob store and broker."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.tmp = tmp
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
        for key, value in config.items():
            if key.isupper() and key != "TESTING":
                self.env[f"MARKETPLACE_{key}"] = str(value)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, threads: int = 1) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = self.tmp / f"worker-{n}.log"
        env = {**self.env, "MARKETPLACE_INSTANCE_PATH": str(self.tmp / f"worker-{n}")}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [JISHI, "worker", "--threads", str(threads)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.logs.append(log)
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        return proc

    def output(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')}" for p in self.logs)

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
