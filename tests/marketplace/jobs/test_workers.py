"""Real ``jishi worker`` processes on real brokers: a worker killed mid-chunk, a broker restarted
mid-job. Each job still finishes with every sample charged exactly once.

The killed worker runs on the shared RabbitMQ on 5672 (with a queue of its own, deleted at the
end). The brokers that are restarted are ones this module starts itself, never the shared ones:
a Redis on a port of its own (it keeps nothing on disk, so its queued messages are lost and the
sweeper publishes them again), and a RabbitMQ node of its own (it keeps its durable queue; the
chunk in flight is delivered again).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from marketplace import create_app
from tests.conftest import _test_config
from tests.marketplace.jobs.harness import Node, Workers, free_port, job_settings, npz
from tests.onnx_models import slow_classifier

RABBITMQ_URL = os.environ.get("JISHI_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("JISHI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROYALTY = 2500
SAMPLES = 64
CHUNK = 16
# Each batch of 4 samples counts to this: about half a second, so a chunk takes about two.
DELAY = 500_000


def _settings(broker_url: str, queue_name: str) -> dict[str, Any]:
    return job_settings(
        BROKER_URL=broker_url,
        JOB_QUEUE_NAME=queue_name,
        JOB_CHUNK_SAMPLES=CHUNK,
        JOB_SAMPLE_TIMEOUT_S=5.0,
        JOB_LEASE_S=3.0,
        JOB_REQUEUE_S=4.0,
        JOB_SWEEP_INTERVAL_S=1.0,
        JOB_EMBEDDED_WORKER_THREADS=0,
    )


@contextlib.contextmanager
def _node(tmp: Path, database: str, config: dict[str, Any]) -> Iterator[Node]:
    app = create_app(_test_config(tmp, database, **config))
    node = Node(app, app.test_client())
    try:
        yield node
    finally:
        node.stop()


def _metered_job(node: Node, *, samples: int = SAMPLES) -> tuple[Any, int, int]:
    """A buyer with a per-inference licence runs a slow job; (buyer, job id, licence id)."""
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    model = node.publish_model(vendor, slow_classifier())
    licence = node.purchase(
        buyer, node.offer(vendor, model["model_id"], royalty_per_1k_minor=ROYALTY)
    )
    node.top_up(buyer, 10_000)
    x = np.random.default_rng(3).random((samples, 4), dtype=np.float32)
    x[:, 3] = DELAY
    dataset = node.dataset(buyer, npz(x=x)).json
    resp = node.job(
        buyer,
        dataset_id=dataset["id"],
        versions=[{"model_id": model["model_id"], "version": "1.0.0"}],
        batch_size=4,
    )
    assert resp.status_code == 201, resp.json
    return buyer, int(resp.json["id"]), int(licence["licence_id"])


def _chunks(node: Node, job_id: int) -> list[dict[str, Any]]:
    with node.app.extensions["db"].engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT chunk_index, state, attempts, worker, samples_charged "
                "FROM evaluation_chunks WHERE job_id = :job ORDER BY chunk_index"
            ),
            {"job": job_id},
        ).mappings()
        return [dict(r) for r in rows]


def _usage_events(node: Node, licence_id: int) -> tuple[int, int]:
    with node.app.extensions["db"].engine.connect() as conn:
        count, seqs = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT seq) FROM usage_events WHERE license_id = :l"),
            {"l": licence_id},
        ).one()
    return int(count), int(seqs)


def _assert_charged_once(node: Node, buyer: Any, job: dict[str, Any], licence_id: int) -> None:
    (version,) = job["versions"]
    assert (version["samples_done"], version["samples_failed"]) == (SAMPLES, 0)
    assert version["samples_charged"] == SAMPLES
    assert version["charged_minor"] == SAMPLES * ROYALTY // 1000
    assert version["held_minor"] == 0
    assert _usage_events(node, licence_id) == (SAMPLES, SAMPLES)
    assert node.licence(buyer, licence_id)["usage"]["calls_used"] == SAMPLES
    wallet = node.wallet(buyer)
    assert (wallet["balance"], wallet["held"]) == (10_000 - SAMPLES * ROYALTY // 1000, 0)


@pytest.mark.slow
def test_a_worker_killed_mid_chunk_has_its_chunk_run_elsewhere_and_charged_once(
    database: str, tmp_path: Path
) -> None:
    config = _settings(RABBITMQ_URL, f"jishi.test.{uuid.uuid4().hex[:12]}")
    workers = Workers(tmp_path, _test_config(tmp_path, database, **config))
    try:
        with _node(tmp_path, database, config) as node:
            first, second = workers.start(), workers.start()
            buyer, job_id, licence_id = _metered_job(node)
            # Wait until the first worker runs a chunk, half-way through it, and kill it.
            deadline = time.monotonic() + 60
            victim: dict[str, Any] | None = None
            while victim is None:
                running = [
                    c
                    for c in _chunks(node, job_id)
                    if c["state"] == "running" and f"worker-{first.pid}@" in c["worker"]
                ]
                victim = running[0] if running else None
                assert time.monotonic() < deadline, workers.output()
                time.sleep(0.05)
            time.sleep(0.6)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)

            job = node.wait(buyer, job_id, timeout_s=90)
            (rerun,) = [
                c for c in _chunks(node, job_id) if c["chunk_index"] == victim["chunk_index"]
            ]
            assert rerun["state"] == "done"
            assert rerun["attempts"] >= 2
            assert f"worker-{second.pid}@" in rerun["worker"]
            _assert_charged_once(node, buyer, job, licence_id)
    finally:
        workers.stop()
        _delete_queue(config["JOB_QUEUE_NAME"])


def _delete_queue(name: str, broker_url: str = RABBITMQ_URL) -> None:
    from kombu import Connection

    with contextlib.suppress(Exception), Connection(broker_url, connect_timeout=5) as conn:
        conn.default_channel.queue_delete(name)


class Redis:
    """A redis-server of this test's own, keeping nothing on disk (as the shared one)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


@pytest.mark.slow
def test_a_job_finishes_when_its_redis_broker_restarts_mid_job(
    database: str, tmp_path: Path
) -> None:
    redis = Redis(tmp_path)
    redis.start()
    config = _settings(redis.url, "jishi.jobs")
    workers = Workers(tmp_path, _test_config(tmp_path, database, **config))
    try:
        with _node(tmp_path, database, config) as node:
            workers.start()
            # Once while the worker waits for work, once while it runs a chunk with more queued.
            redis.stop()
            time.sleep(1.0)
            redis.start()
            buyer, job_id, licence_id = _metered_job(node)
            node.wait(buyer, job_id, until=lambda job: job["versions"][0]["samples_done"] >= CHUNK)
            redis.stop()  # every queued message is lost with the broker's memory
            time.sleep(1.0)
            redis.start()
            job = node.wait(buyer, job_id, timeout_s=120)
            _assert_charged_once(node, buyer, job, licence_id)
            assert "chunks again whose lease ran out" in workers.output()
    finally:
        workers.stop()
        redis.stop()


class RabbitMQ:
    """A RabbitMQ node of this test's own: its own name, ports and data, started with the
    distribution's own ``rabbitmq-server`` (which runs as the ``rabbitmq`` user)."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.dist_port = free_port(), free_port()
        self.name = f"jishi-{uuid.uuid4().hex[:8]}@localhost"
        self.home = tmp / "rabbitmq"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        binary = shutil.which("rabbitmq-server")
        if binary is None or os.geteuid() != 0:
            pytest.skip("a private RabbitMQ node needs rabbitmq-server and root")
        try:
            user = pwd.getpwnam("rabbitmq")
        except KeyError:
            pytest.skip("there is no rabbitmq user to run a private node as")
        for sub in ("mnesia", "log"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (self.home / "enabled_plugins").write_text("[].\n")
        (self.home / "rabbitmq.conf").write_text(f"listeners.tcp.default = {self.port}\n")
        for path in [self.home, *self.home.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        for parent in self.home.parents:  # the rabbitmq user must reach its folder
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o005)
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.home / "feature_flags"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_PID_FILE": str(self.home / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq"),
        }
        deadline = time.monotonic() + 90
        # A node started again right after it halted may find its name still registered with
        # epmd for a moment and exit at once: it is started again until the deadline.
        while True:
            (self.home / "pid").unlink(missing_ok=True)
            self.proc = subprocess.Popen(
                [binary],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            while self.proc.poll() is None:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), 1),
                ):
                    return
                assert time.monotonic() < deadline, "rabbitmq-server did not start"
                time.sleep(0.2)
            assert time.monotonic() < deadline, "rabbitmq-server exited at every start"
            time.sleep(1.0)

    def stop(self) -> None:
        """Halt the node (its Erlang VM runs in a session of its own, as the rabbitmq user)."""
        if self.proc is None:
            return
        subprocess.run(
            ["rabbitmqctl", "-n", self.name, "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        # If it did not halt: kill its VM, and only its (a stale pid may name another process).
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.home / "pid").read_text().strip())
            marker = f"RABBITMQ_NODENAME={self.name}".encode()
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            except OSError:
                break
            time.sleep(0.2)
        self.proc = None


@pytest.mark.slow
def test_a_job_finishes_when_its_rabbitmq_broker_restarts_mid_job(
    database: str, tmp_path: Path
) -> None:
    rabbit = RabbitMQ(tmp_path)
    rabbit.start()
    config = _settings(rabbit.url, "jishi.jobs")
    workers = Workers(tmp_path, _test_config(tmp_path, database, **config))
    try:
        with _node(tmp_path, database, config) as node:
            workers.start()
            buyer, job_id, licence_id = _metered_job(node)
            node.wait(buyer, job_id, until=lambda job: job["versions"][0]["samples_done"] >= CHUNK)
            rabbit.stop()
            rabbit.start()
            job = node.wait(buyer, job_id, timeout_s=120)
            _assert_charged_once(node, buyer, job, licence_id)
            assert "Connection to broker lost" in workers.output()
    finally:
        workers.stop()
        rabbit.stop()


@pytest.mark.slow
def test_a_job_created_while_its_broker_is_down_is_accepted_and_runs_once_it_is_back(
    database: str, tmp_path: Path
) -> None:
    redis = Redis(tmp_path)  # not started yet: nothing listens on its port
    config = _settings(redis.url, "jishi.jobs")
    workers = Workers(tmp_path, _test_config(tmp_path, database, **config))
    try:
        with _node(tmp_path, database, config) as node:
            started = time.monotonic()
            buyer, job_id, licence_id = _metered_job(node)
            # The job and its holds are written; only the publishing waits for the broker.
            assert time.monotonic() - started < 20
            job = node.get_job(buyer, job_id)
            assert job["state"] == "queued", job
            assert job["versions"][0]["held_minor"] > 0
            assert {c["state"] for c in _chunks(node, job_id)} == {"queued"}
            redis.start()
            workers.start()
            job = node.wait(buyer, job_id, timeout_s=120)
            _assert_charged_once(node, buyer, job, licence_id)
            assert "chunks again whose lease ran out" in workers.output()
    finally:
        workers.stop()
        redis.stop()
