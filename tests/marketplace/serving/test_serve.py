"""``jishi serve`` as production runs it: gunicorn processes, one periodic runner, clean exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests import onnx_models as m
from tests.marketplace.serving.node import Client, free_port, process_tree, start_node


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_serve_runs_gunicorn_and_finishes_in_flight_calls_on_sigterm(tmp_path, fresh_database):
    url, _engine = fresh_database()
    node = start_node(tmp_path, url, "--processes", "2", "--threads", "4")
    try:
        served = requests.get(f"{node.url}/api/v1/models", timeout=10)
        assert served.headers.get("Server", "").startswith("gunicorn")
        vendor = Client(node.url, ["vendor"])
        model_id = vendor.publish(m.long_matmul())
        path = f"/api/v1/models/{model_id}/versions/1.0.0/evaluate"
        body = {
            "inputs": {
                "x": {"dtype": "float32", "shape": [1], "data": [1.0]},
                "n": {"dtype": "int64", "shape": [1], "data": [1200]},
            }
        }
        assert vendor.post(path, json=body).status_code == 200  # warm: pool and worker
        result: dict[str, requests.Response] = {}
        call = threading.Thread(target=lambda: result.update(resp=vendor.post(path, json=body)))
        call.start()
        time.sleep(0.3)  # the call is in flight
        tree = process_tree(node.process.pid)
        assert len(tree) >= 5  # master, two workers, a zygote and a sandbox worker at least
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(timeout=60) == 0
        call.join(30)
        assert result["resp"].status_code == 200, result["resp"].text[:300]
        assert time.monotonic() - started < 30
        time.sleep(0.5)
        left = [pid for pid in tree if _alive(pid)]
        assert not left, f"left running: {left}"
        log = node.output()
        assert "Traceback" not in log, log
    finally:
        node.kill()


def test_one_periodic_runner_per_node_and_it_moves_when_its_process_dies(tmp_path, fresh_database):
    url, _engine = fresh_database()
    instance = tmp_path / "instance"
    probe = tmp_path / "probe.txt"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
    env.update(
        MARKETPLACE_ENV="testing",
        MARKETPLACE_DATABASE_URL=url,
        MARKETPLACE_INSTANCE_PATH=str(instance),
        MARKETPLACE_LOG_LEVEL="WARNING",
        JISHI_PROBE_FILE=str(probe),
    )
    master = subprocess.Popen(
        [sys.executable, "-m", "tests.marketplace.serving.probe_app", str(port), "3"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def runners() -> list[int]:
            return [int(line) for line in probe.read_text().split()] if probe.exists() else []

        deadline = time.monotonic() + 30
        while len(runners()) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        first = runners()
        assert len(first) >= 6
        assert len(set(first)) == 1  # three processes, one runner
        holder = first[0]
        workers = process_tree(master.pid)[1:]
        assert holder in workers and len(workers) >= 3
        os.kill(holder, signal.SIGKILL)
        count = len(first)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = runners()[count + 1 :]
            if len(after) >= 3:
                break
            time.sleep(0.2)
        assert after and holder not in after and len(set(after)) == 1
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=60) == 0
        final = len(runners())
        time.sleep(0.5)
        assert len(runners()) == final  # stopped with the node
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()


FREEZE_PROBE = """
import gc
from marketplace import create_app, migrate, serving
app = create_app()
migrate.upgrade(app.extensions["db"].engine)
before = gc.get_freeze_count()
serving.start_node_process(app)
after = gc.get_freeze_count()
serving.stop_node_process(app)
print(before, after)
"""


def test_a_server_process_freezes_what_it_started_with(tmp_path):
    env = {
        **os.environ,
        "MARKETPLACE_INSTANCE_PATH": str(tmp_path / "instance"),
        "MARKETPLACE_LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-c", FREEZE_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = map(int, done.stdout.split()[-2:])
    assert before == 0
    # The app alone is well over 100,000 objects; all of them are out of the collector's walk.
    assert after > 100_000


def test_a_process_whose_threads_hold_every_slot_still_answers_503_at_once(
    tmp_path, fresh_database
):
    """With as many threads as evaluation slots, the next call waited for a thread, unbounded,
    instead of being told 503 `evaluation_busy` at once."""
    url, _engine = fresh_database()
    node = start_node(tmp_path, url, "--processes", "1", EVAL_CONCURRENCY_MAX=8, EVAL_TIMEOUT_S=4)
    try:
        vendor = Client(node.url, ["vendor"])
        model_id = vendor.publish(m.huge_loop())  # runs to its deadline
        path = f"/api/v1/models/{model_id}/versions/1.0.0/evaluate"
        body = {"inputs": {"x": {"dtype": "float32", "shape": [1], "data": [1.0]}}}
        answers: list[tuple[int, float, str]] = []

        def call() -> None:
            started = time.monotonic()
            resp = vendor.post(path, json=body)
            answers.append((resp.status_code, time.monotonic() - started, resp.json()["code"]))

        holders = [threading.Thread(target=call) for _ in range(8)]
        for thread in holders:
            thread.start()
        time.sleep(1.5)  # every slot is held
        call()
        status, took, code = answers[-1]
        assert (status, code) == (503, "evaluation_busy") and took < 1.0, answers
        for thread in holders:
            thread.join(60)
        # The holders ran to their deadline, waited for a sandbox worker in vain, or were
        # held back as a caller whose calls keep running to their deadline.
        assert len(answers) == 9 and {a[2] for a in answers[1:]} <= {
            "deadline_exceeded", "sandbox_busy", "caller_throttled",
        }, answers  # fmt: skip
    finally:
        node.kill()
