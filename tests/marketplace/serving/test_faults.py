"""Faults on a live node: hostile traffic from eight clients, and kill -9 in the middle of load."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
import zipfile
from collections import Counter

import numpy as np
import pytest
import requests
import sqlalchemy as sa

from marketplace.evaluation.tensors import NPZ_MIME
from tests import onnx_models as m
from tests.marketplace.serving.node import JISHI, Client, start_node

MiB = 1024 * 1024


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _bomb_npz() -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)}
    )
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 8)
    return body.getvalue()


def test_eight_hostile_clients_get_no_5xx_but_503_with_retry_after(tmp_path, fresh_database):
    url, _engine = fresh_database()
    node = start_node(
        tmp_path,
        url,
        "--processes",
        "2",
        "--threads",
        "8",
        EVAL_CONCURRENCY_MAX=3,
        EVAL_BODY_BYTES_MAX=2 * MiB,
    )
    try:
        vendor = Client(node.url, ["vendor"])
        model_id = vendor.publish(m.long_matmul())
        path = f"/api/v1/models/{model_id}/versions/1.0.0/evaluate"
        x = np.array([1.0], np.float32)
        n = np.array([300], np.int64)
        valid_json = {
            "inputs": {
                "x": {"dtype": "float32", "shape": [1], "data": [1.0]},
                "n": {"dtype": "int64", "shape": [1], "data": [300]},
            }
        }
        requests_mix = [
            ("valid-npz", {"data": _npz(x=x, n=n), "headers": {"Content-Type": NPZ_MIME}}),
            ("valid-json", {"json": valid_json}),
            (
                "malformed-json",
                {"data": b'{"inputs": {', "headers": {"Content-Type": "application/json"}},
            ),
            ("garbage-npz", {"data": os.urandom(4096), "headers": {"Content-Type": NPZ_MIME}}),
            ("npz-bomb", {"data": _bomb_npz(), "headers": {"Content-Type": NPZ_MIME}}),
            # Refused before it is read, so the server closes the connection after answering;
            # the client says it will not reuse it.
            (
                "over-body",
                {
                    "data": b"\0" * (3 * MiB),
                    "headers": {"Content-Type": NPZ_MIME, "Connection": "close"},
                },
            ),
            (
                "over-json-input",
                {"json": {"inputs": {"x": {"dtype": "float64", "shape": [1 << 20], "data": []}}}},
            ),
            ("wrong-type", {"data": b"x=1", "headers": {"Content-Type": "text/plain"}}),
        ]
        vendor.post(path, json=valid_json)  # warm
        baseline = node.rss_bytes()
        peak = [baseline]
        seen: Counter[tuple[str, int, str]] = Counter()
        bad: list[str] = []
        stop = time.monotonic() + 6.0

        def client(index: int) -> None:
            http = requests.Session()
            http.headers.update(vendor.http.headers)
            turn = index
            while time.monotonic() < stop:
                name, kwargs = requests_mix[turn % len(requests_mix)]
                turn += 1
                try:
                    resp = http.post(node.url + path, timeout=60, **kwargs)
                except requests.ConnectionError as exc:
                    bad.append(f"{name}: {exc}")
                    http = requests.Session()
                    http.headers.update(vendor.http.headers)
                    continue
                code = ""
                if resp.headers.get("Content-Type", "").startswith("application/problem+json"):
                    code = resp.json().get("code", "")
                seen[(name, resp.status_code, code)] += 1
                if resp.status_code >= 500 and not (
                    resp.status_code == 503 and resp.headers.get("Retry-After")
                ):
                    bad.append(f"{name}: {resp.status_code} {resp.text[:200]}")

        def sample() -> None:
            while time.monotonic() < stop:
                peak.append(node.rss_bytes())
                time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        threads.append(threading.Thread(target=sample))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not bad, bad
        statuses = Counter(status for (_, status, _) in seen.elements())
        assert statuses[200] > 0, seen
        busy = [k for k in seen if k[1] == 503]
        assert busy and all(code in {"evaluation_busy", "sandbox_busy"} for _, _, code in busy)
        for name in ("malformed-json", "garbage-npz", "npz-bomb", "over-json-input"):
            assert {s for (n, s, _) in seen if n == name} <= {422, 503}, seen
        assert {s for (n, s, _) in seen if n == "over-body"} <= {413, 503}, seen
        assert {s for (n, s, _) in seen if n == "wrong-type"} <= {415, 503}, seen
        growth = max(peak) - baseline
        assert growth < 256 * MiB, f"the web processes grew by {growth / MiB:.0f} MiB"
    finally:
        node.stop()


def _count(engine: sa.Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


def test_kill_9_mid_load_loses_no_acknowledged_call(db_backend, tmp_path, fresh_database):
    if db_backend != "postgresql":
        pytest.skip("the kill -9 drill runs on PostgreSQL, as production does")
    url, engine = fresh_database()
    instance = tmp_path / "instance"
    node = start_node(tmp_path, url, "--processes", "2", "--threads", "8", instance=instance)
    try:
        vendor = Client(node.url, ["vendor"])
        buyer = Client(node.url, ["buyer"])
        metered_model = vendor.publish(m.add())
        trial_model = vendor.publish(m.add())
        metered_offer = vendor.offer(metered_model, royalty_per_1k_minor=1500)
        trial_offer = vendor.offer(
            trial_model, kind="perpetual", price_minor=100, trial_calls=100_000, trial_days=7
        )
        order = buyer.buy(metered_offer, top_up_minor=1_000_000)
        trial = buyer.trial(trial_offer)
        body = {
            "inputs": {
                "x": {"dtype": "float32", "shape": [1, 3], "data": [1, 2, 3]},
                "y": {"dtype": "float32", "shape": [1, 3], "data": [1, 1, 1]},
            }
        }
        acknowledged: dict[str, list[dict]] = {"metered": [], "trial": []}
        lock = threading.Lock()
        stop = threading.Event()

        def client(kind: str, model_id: int) -> None:
            http = requests.Session()
            http.headers.update(buyer.http.headers)
            target = f"{node.url}/api/v1/models/{model_id}/versions/1.0.0/evaluate"
            while not stop.is_set():
                try:
                    resp = http.post(target, json=body, timeout=30)
                except requests.RequestException:
                    return  # the server is gone
                if resp.status_code == 200:
                    with lock:
                        acknowledged[kind].append(resp.json()["usage"])

        threads = [
            threading.Thread(target=client, args=(kind, model))
            for kind, model in [("metered", metered_model), ("trial", trial_model)] * 4
        ]
        for t in threads:
            t.start()
        time.sleep(4.0)
        os.killpg(node.process.pid, signal.SIGKILL)  # master, workers, zygotes: all at once
        node.process.wait()
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        node.kill()
    assert len(acknowledged["metered"]) > 20 and len(acknowledged["trial"]) > 20

    restarted = start_node(tmp_path, url, "--processes", "2", instance=instance)
    try:
        # Every metered 200 has exactly one usage event with its number; at most the calls in
        # flight at the kill (one per client) were recorded without an answer.
        seqs = [u["calls_used"] for u in acknowledged["metered"]]
        assert len(set(seqs)) == len(seqs)
        with engine.connect() as conn:
            stored = [
                row[0]
                for row in conn.execute(
                    sa.text("SELECT seq FROM usage_events WHERE license_id = :id"),
                    {"id": order["licence_id"]},
                )
            ]
        assert len(stored) == len(set(stored))
        assert set(seqs) <= set(stored)
        assert len(stored) - len(seqs) <= 4
        used = _count(
            engine, "SELECT calls_used FROM licenses WHERE id = :id", id=order["licence_id"]
        )
        assert used == len(stored)
        # Trial counters are exact: each 200 took its own call, none was counted twice.
        remaining = [u["calls_remaining"] for u in acknowledged["trial"]]
        assert len(set(remaining)) == len(remaining)
        trial_used = _count(
            engine, "SELECT calls_used FROM licenses WHERE id = :id", id=trial["id"]
        )
        trial_left = _count(
            engine, "SELECT calls_remaining FROM licenses WHERE id = :id", id=trial["id"]
        )
        assert trial_used + trial_left == 100_000
        assert len(remaining) <= trial_used <= len(remaining) + 4
        assert min(remaining) >= trial_left
        # The ledger holds together, before and after settling the metered calls.
        env = dict(restarted.env)
        for args in (["ledger", "check"], ["ledger", "settle"], ["ledger", "check"]):
            done = subprocess.run(
                [JISHI, *args], env=env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, done.stdout + done.stderr
        # And the node serves again, counting on from where the database says.
        buyer.url = restarted.url
        after = requests.post(
            f"{restarted.url}/api/v1/models/{metered_model}/versions/1.0.0/evaluate",
            json=body,
            headers={"Authorization": f"Bearer {buyer.new_token()}"},
            timeout=30,
        )
        assert after.status_code == 200, after.text[:300]
        assert after.json()["usage"]["calls_used"] == len(stored) + 1
    finally:
        restarted.stop()
