"""Evaluate over HTTP with `jishi serve` (gunicorn) vs raw in-process onnxruntime, same run.

Run: .venv/bin/python -m bench.bench_evaluate_http [--calls N] [--seconds S] [--profile]

Starts `jishi serve --no-demo` on embedded defaults in a child process (its own SQLite and
blobs in a temporary folder, or `--database-url`), uploads three models through the API (a
~1 ms conv, a ~20 ms conv and a < 0.1 ms add), gives a buyer a per-inference licence, then:

* latency: for each model, owner and metered calls, npz and JSON bodies, the p50 and p99 of
  HTTP calls beside raw onnxruntime calls interleaved with them (same session options as the
  sandbox), and the added milliseconds (HTTP minus raw);
* throughput on the ~1 ms model with 2 and 8 concurrent clients: owner and metered calls/s
  over HTTP beside the bare sandbox pool in this process with the same concurrency;
* the cold path: the first call of a new version over HTTP beside the load time the server's
  sandbox reports for it.

Goals (issue 10): owner added p50 <= 1.0 ms, metered <= 1.5 ms, p99 added <= 3 ms; metered
calls/s >= 0.9x owner; owner calls/s >= 0.8x the bare pool. The load average is printed at
the start and the end: figures from a busy host are noisy on both sides alike.

`--profile` instead profiles the evaluate path in this process with pyinstrument (Flask's
test client, the same app and sandbox) and prints where the time goes per call.
`--server-args` replaces the server options (for comparing with an older `jishi serve`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import requests
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from bench.bench_sandbox import CONSTANT_FOLDING_BYTES_MAX, interleaved_us, p
from sandbox.pool import PoolConfig, SandboxPool
from sandbox.runtime import session_options

NPZ_MIME = "application/x-npz"
F = TensorProto.FLOAT


def _model(nodes: list, inputs: list, outputs: list, initializers: list) -> bytes:
    graph = oh.make_graph(nodes, "bench", inputs, outputs, initializer=initializers)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def conv(side: int, channels: int) -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(side)
    w1 = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32) * 0.1
    w2 = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1
    model = _model(
        [
            oh.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            oh.make_node("Relu", ["c1"], ["r1"]),
            oh.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
            oh.make_node("GlobalAveragePool", ["c2"], ["y"]),
        ],
        [oh.make_tensor_value_info("x", F, [1, 3, side, side])],
        [oh.make_tensor_value_info("y", F, [1, channels, 1, 1])],
        [nh.from_array(w1, "w1"), nh.from_array(w2, "w2")],
    )
    return model, {"x": rng.standard_normal((1, 3, side, side)).astype(np.float32)}


def tiny() -> tuple[bytes, dict[str, np.ndarray]]:
    model = _model(
        [oh.make_node("Add", ["x", "y"], ["z"])],
        [oh.make_tensor_value_info("x", F, [1, 4]), oh.make_tensor_value_info("y", F, [1, 4])],
        [oh.make_tensor_value_info("z", F, [1, 4])],
        [],
    )
    return model, {"x": np.ones((1, 4), np.float32), "y": np.ones((1, 4), np.float32)}


MODELS: dict[str, Callable[[], tuple[bytes, dict[str, np.ndarray]]]] = {
    "conv ~1 ms": lambda: conv(80, 32),
    "conv ~20 ms": lambda: conv(208, 48),
    "add < 0.1 ms": tiny,
}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def json_body(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "inputs": {
            name: {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.ravel().tolist()}
            for name, a in arrays.items()
        }
    }


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


class Node:
    """`jishi serve` in a child process, with a vendor, a metered buyer and three versions."""

    def __init__(self, instance: str, server_args: list[str], database_url: str | None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
        env["MARKETPLACE_INSTANCE_PATH"] = instance
        env["MARKETPLACE_LOG_LEVEL"] = "WARNING"
        if database_url:
            env["MARKETPLACE_DATABASE_URL"] = database_url
        jishi = Path(sys.executable).with_name("jishi")
        self.process = subprocess.Popen(
            [str(jishi), "serve", "--no-demo", "--port", str(self.port), *server_args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit("the server did not start")
            try:
                requests.get(f"{self.url}/api/v1/openapi.json", timeout=5)
                break
            except (requests.ConnectionError, requests.Timeout):
                # Not listening yet, or listening while its workers still boot.
                time.sleep(0.2)

    def org(self, roles: list[str]) -> requests.Session:
        http = requests.Session()
        # As any client would: a busy embedded database answers 503 with Retry-After.
        retry = Retry(total=8, status_forcelist=[503], allowed_methods=None, backoff_factor=0.2)
        http.mount("http://", HTTPAdapter(max_retries=retry))
        reg = http.post(
            f"{self.url}/api/v1/register",
            json={
                "email": f"{uuid.uuid4().hex[:8]}@example.test",
                "password": "Bench-Password-2026",
                "organization_name": "Bench",
                "organization_roles": roles,
            },
            timeout=30,
        ).json()
        creds = reg["client"]
        token = http.post(
            f"{self.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(creds["client_id"], creds["client_secret"]),
            timeout=30,
        ).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        return http

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check(resp: requests.Response) -> requests.Response:
    if resp.status_code not in (200, 201):
        raise SystemExit(f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:300]}")
    return resp


def setup(node: Node) -> tuple[requests.Session, requests.Session, dict[str, str]]:
    """A vendor with the three models, a buyer with a per-inference licence; evaluate URLs."""
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    urls = {}
    for name, build in MODELS.items():
        model, _inputs = build()
        listing = _check(
            vendor.post(f"{node.url}/api/v1/models", json={"name": name, "task": "bench"})
        ).json()
        _check(
            vendor.post(
                f"{node.url}/api/v1/models/{listing['id']}/versions",
                params={"version": "1.0.0"},
                data=model,
                headers={"Content-Type": "application/octet-stream"},
                timeout=120,
            )
        )
        offer = _check(
            vendor.post(
                f"{node.url}/api/v1/models/{listing['id']}/offers",
                json={
                    "name": "Metered",
                    "kind": "per_inference",
                    "currency": "CNY",
                    "price_minor": 0,
                    "royalty_per_1k_minor": 100,
                    "trial_calls": 0,
                    "trial_days": 0,
                    "allow_download": False,
                    "commercial_use": True,
                    "terms_md": "Bench.",
                },
            )
        ).json()
        _check(
            buyer.post(
                f"{node.url}/api/v1/wallet/top-ups",
                json={"amount_minor": 10_000_000, "currency": "CNY"},
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
        )
        _check(
            buyer.post(
                f"{node.url}/api/v1/offers/{offer['id']}/purchase",
                json={"accept_terms_sha256": offer["terms_sha256"]},
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
        )
        urls[name] = f"{node.url}/api/v1/models/{listing['id']}/versions/1.0.0/evaluate"
    return vendor, buyer, urls


def caller(http: requests.Session, url: str, inputs: dict[str, np.ndarray], codec: str):
    if codec == "npz":
        body, headers = npz_bytes(inputs), {"Content-Type": NPZ_MIME, "Accept": NPZ_MIME}

        def call() -> object:
            resp = http.post(url, data=body, headers=headers, timeout=60)
            if resp.status_code != 200:
                raise SystemExit(f"evaluate failed: {resp.status_code} {resp.text[:200]}")
            return resp.content

        return call
    # Encoded once: the client's own JSON encoding is not the server's cost.
    payload = json.dumps(json_body(inputs)).encode()
    json_headers = {"Content-Type": "application/json"}

    def call_json() -> object:
        resp = http.post(url, data=payload, headers=json_headers, timeout=60)
        if resp.status_code != 200:
            raise SystemExit(f"evaluate failed: {resp.status_code} {resp.text[:200]}")
        return resp.content

    return call_json


def throughput(call_factory: Callable[[], Callable[[], object]], clients: int, seconds: float):
    """Calls per second of `clients` threads, each with its own caller, for `seconds`."""
    callers = [call_factory() for _ in range(clients)]
    for c in callers:
        c()
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            callers[i]()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def run_bench(args: argparse.Namespace) -> None:
    print(f"start: {load()}")
    raw_sessions = {}
    inputs = {}
    for name, build in MODELS.items():
        model, inputs[name] = build()
        options = session_options(constant_folding_bytes_max=CONSTANT_FOLDING_BYTES_MAX)
        raw_sessions[name] = ort.InferenceSession(
            model, options, providers=["CPUExecutionProvider"]
        )
    with tempfile.TemporaryDirectory() as instance:
        node = Node(instance, shlex.split(args.server_args), args.database_url)
        try:
            vendor, buyer, urls = setup(node)
            # The cold path: the first call of each version, as the server reports its load.
            sections = set(args.sections.split(","))
            print("\ncold path: first call of a version over HTTP (npz)")
            for name, url in urls.items() if "cold" in sections else ():
                body = npz_bytes(inputs[name])
                started = time.perf_counter()
                resp = _check(
                    vendor.post(
                        url,
                        data=body,
                        headers={"Content-Type": NPZ_MIME, "Accept": NPZ_MIME},
                        timeout=60,
                    )
                )
                total = (time.perf_counter() - started) * 1000
                timing = dict(item.split("=") for item in resp.headers["X-Jishi-Timing"].split(","))
                load_ms, run_ms = float(timing.get("load_ms", 0.0)), float(timing["run_ms"])
                print(
                    f"  {name:14s} first call {total:8.1f} ms   worker load {load_ms:8.1f} ms"
                    f"   run {run_ms:7.1f} ms   rest {total - load_ms - run_ms:7.1f} ms"
                )
            print(f"\nlatency over HTTP vs raw onnxruntime ({args.calls} calls each, interleaved)")
            print(
                f"  {'model':14s} {'caller':8s} {'codec':5s}  {'raw p50':>8s} {'raw p99':>8s}"
                f"  {'http p50':>8s} {'http p99':>8s}  {'added p50':>9s} {'added p99':>9s}"
            )
            for name, url in urls.items() if "latency" in sections else ():
                session, arrays = raw_sessions[name], inputs[name]
                for who, http in (("owner", vendor), ("metered", buyer)):
                    for codec in ("npz", "json"):
                        raw_us, http_us = interleaved_us(
                            lambda s=session, a=arrays: s.run(None, a),
                            caller(http, url, arrays, codec),
                            args.calls,
                        )
                        r50, r99, h50, h99 = (
                            p(raw_us, 50),
                            p(raw_us, 99),
                            p(http_us, 50),
                            p(http_us, 99),
                        )
                        print(
                            f"  {name:14s} {who:8s} {codec:5s}  {r50 / 1e3:8.3f} {r99 / 1e3:8.3f}"
                            f"  {h50 / 1e3:8.3f} {h99 / 1e3:8.3f}  {(h50 - r50) / 1e3:9.3f}"
                            f" {(h99 - r99) / 1e3:9.3f}"
                        )
            print(f"\nthroughput on the ~1 ms conv (npz), {args.seconds:.0f} s per figure")
            name = "conv ~1 ms"
            model, arrays = MODELS[name]()
            pool = SandboxPool(PoolConfig(workers_max=8))
            try:
                for clients in (2, 8) if "throughput" in sections else ():

                    def http_factory(http: requests.Session) -> Callable[[], object]:
                        session = requests.Session()
                        session.headers.update(http.headers)
                        return caller(session, urls[name], arrays, "npz")

                    bare = throughput(
                        lambda: lambda: pool.evaluate("bench", lambda: model, arrays),
                        clients,
                        args.seconds,
                    )
                    owner = throughput(lambda: http_factory(vendor), clients, args.seconds)
                    metered = throughput(lambda: http_factory(buyer), clients, args.seconds)
                    print(
                        f"  {clients} clients: bare pool {bare:8.1f}/s   owner {owner:8.1f}/s"
                        f" ({owner / bare:.2f}x pool)   metered {metered:8.1f}/s"
                        f" ({metered / owner:.2f}x owner)"
                    )
            finally:
                pool.close()
        finally:
            node.close()
    print(f"\nend: {load()}")


def run_profile(args: argparse.Namespace) -> None:
    """Profile evaluate in this process: Flask's test client, the same app and sandbox."""
    from pyinstrument import Profiler

    from marketplace import create_app

    with tempfile.TemporaryDirectory() as instance:
        os.environ["MARKETPLACE_INSTANCE_PATH"] = instance
        os.environ["MARKETPLACE_LOG_LEVEL"] = "WARNING"
        app = create_app()
        from marketplace import migrate

        migrate.upgrade(app.extensions["db"].engine)
        client = app.test_client()

        def org(roles: list[str]) -> dict[str, str]:
            reg = client.post(
                "/api/v1/register",
                json={
                    "email": f"{uuid.uuid4().hex[:8]}@example.test",
                    "password": "Bench-Password-2026",
                    "organization_name": "Bench",
                    "organization_roles": roles,
                },
            ).json
            creds = reg["client"]
            token = client.post(
                "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": creds["client_id"],
                    "client_secret": creds["client_secret"],
                },
            ).json["access_token"]
            return {"Authorization": f"Bearer {token}"}

        vendor = org(["vendor"])
        model, arrays = MODELS["conv ~1 ms"]()
        listing = client.post(
            "/api/v1/models", json={"name": "p", "task": "bench"}, headers=vendor
        ).json
        client.post(
            f"/api/v1/models/{listing['id']}/versions?version=1.0.0",
            data=model,
            headers={**vendor, "Content-Type": "application/octet-stream"},
        )
        url = f"/api/v1/models/{listing['id']}/versions/1.0.0/evaluate"
        body = npz_bytes(arrays)
        headers = {**vendor, "Content-Type": NPZ_MIME, "Accept": NPZ_MIME}

        def call() -> None:
            # Closing the response is what a server does when it has sent it (and what
            # releases the call's evaluation slot).
            with client.post(url, data=body, headers=headers) as resp:
                if resp.status_code != 200:
                    raise SystemExit(f"evaluate failed: {resp.status_code} {resp.data[:200]!r}")
                resp.get_data()

        for _ in range(50):
            call()
        profiler = Profiler(interval=0.0001)
        profiler.start()
        for _ in range(args.calls):
            call()
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        app.extensions["sandbox_pool"].close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--server-args", default="--processes 2 --threads 8")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sections", default="cold,latency,throughput")
    args = parser.parse_args()
    if args.profile:
        run_profile(args)
    else:
        run_bench(args)


if __name__ == "__main__":
    main()
