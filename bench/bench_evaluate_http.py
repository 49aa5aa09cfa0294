"""Evaluate over HTTP with `jishi serve` (gunicorn) vs raw in-process onnxruntime, same run.

Run: .venv/bin/python -m bench.bench_evaluate_http [--calls N] [--seconds S] [--profile]

Starts `jishi serve --no-demo` on embedded defaults in a child process (its own SQLite and
blobs in a temporary folder, or `--database-url`), uploads three models through the API (a
~1 ms conv, a ~20 ms conv and a < 0.1 ms add), gives a buyer a per-inference licence, then:

* latency: for each model, owner and metered calls, npz and JSON bodies, the p50 and p99 of
  HTTP calls beside raw onnxruntime calls interleaved with them (same session options as the
  sandbox), the added milliseconds (HTTP minus raw), and the median run time the server
  reports from inside the sandbox worker (what of the added time is the model's own run);
* throughput on the ~1 ms model with 2 and 8 concurrent clients: owner and metered calls/s
  over HTTP beside the bare sandbox pool in this process with the same concurrency;
* the cold path: the first call of a new version over HTTP beside the load time the server's
  sandbox reports for it.

Goals (issue 10): owner added p50 <= 1.0 ms, metered <= 1.5 ms, p99 added <= 3 ms; metered
calls/s >= 0.9x owner; owner calls/s >= 0.8x the bare pool. The load average is printed at
the start and the end: figures from a busy host are noisy on both sides alike.

The HTTP client is the standard library's `http.client`, one kept-alive connection per
caller: the figure is what the server adds, and `requests` spends about half a millisecond
of CPU per call of its own, on the same cores as the server (`--client requests` measures
with it all the same).

`--profile` instead profiles the evaluate path in this process with pyinstrument: the same
app and sandbox, called as a WSGI application with a prepared environ (so neither a test
client nor a server is in the figure), for `--model`, `--caller` and `--codec`.
`--server-args` replaces the server options (for comparing with an older `jishi serve`).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shlex
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import onnxruntime as ort
import requests
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from bench.bench_sandbox import CONSTANT_FOLDING_BYTES_MAX, interleaved_us, p
from bench.serve import jishi_serve
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

    def __init__(
        self,
        instance: str,
        server_args: list[str],
        database_url: str | None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
        env["MARKETPLACE_INSTANCE_PATH"] = instance
        env["MARKETPLACE_LOG_LEVEL"] = "WARNING"
        if database_url:
            env["MARKETPLACE_DATABASE_URL"] = database_url
        for name, value in (settings or {}).items():
            env[f"MARKETPLACE_{name.upper()}"] = value
        self.process = jishi_serve(self.port, server_args, env)

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


# What every bench model is offered as: per inference, nothing up front.
METERED_OFFER = {
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
}
# (who, path, request options) -> the response's JSON body; the call fails the run otherwise.
Post = Callable[[Any, str, dict[str, Any]], Any]


def provision(post: Post, vendor: Any, buyer: Any, names: list[str]) -> dict[str, str]:
    """Each model uploaded and offered per inference by `vendor`, licensed by `buyer`;
    the evaluate paths."""
    paths = {}
    for name in names:
        model, _inputs = MODELS[name]()
        listing = post(vendor, "/api/v1/models", {"json": {"name": name, "task": "bench"}})
        base = f"/api/v1/models/{listing['id']}"
        post(
            vendor,
            f"{base}/versions",
            {
                "params": {"version": "1.0.0"},
                "data": model,
                "headers": {"Content-Type": "application/octet-stream"},
            },
        )
        offer = post(vendor, f"{base}/offers", {"json": METERED_OFFER})
        post(
            buyer,
            "/api/v1/wallet/top-ups",
            {
                "json": {"amount_minor": 10_000_000, "currency": "CNY"},
                "headers": {"Idempotency-Key": uuid.uuid4().hex},
            },
        )
        post(
            buyer,
            f"/api/v1/offers/{offer['id']}/purchase",
            {
                "json": {"accept_terms_sha256": offer["terms_sha256"]},
                "headers": {"Idempotency-Key": uuid.uuid4().hex},
            },
        )
        paths[name] = f"{base}/versions/1.0.0/evaluate"
    return paths


def setup(node: Node) -> tuple[requests.Session, requests.Session, dict[str, str]]:
    """A vendor with the three models, a buyer with a per-inference licence; evaluate URLs."""
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])

    def post(who: requests.Session, path: str, options: dict[str, Any]) -> Any:
        return _check(who.post(f"{node.url}{path}", timeout=120, **options)).json()

    paths = provision(post, vendor, buyer, list(MODELS))
    return vendor, buyer, {name: f"{node.url}{path}" for name, path in paths.items()}


def request_body(arrays: dict[str, np.ndarray], codec: str) -> tuple[bytes, dict[str, str]]:
    """The body and content headers of an evaluate call (encoded once, outside any timing)."""
    if codec == "npz":
        return npz_bytes(arrays), {"Content-Type": NPZ_MIME, "Accept": NPZ_MIME}
    return json.dumps(json_body(arrays)).encode(), {"Content-Type": "application/json"}


def caller(
    org: requests.Session,
    url: str,
    inputs: dict[str, np.ndarray],
    codec: str,
    client: str,
    answers: list[tuple[str, bytes]] | None = None,
) -> Callable[[], object]:
    """One client's evaluate call: its own kept-alive connection, the body encoded once.

    With `answers`, each call appends its timing header and body, read after the timing."""
    body, headers = request_body(inputs, codec)
    if client == "requests":
        session = requests.Session()
        session.headers.update(org.headers)

        def call_requests() -> object:
            resp = session.post(url, data=body, headers=headers, timeout=60)
            if resp.status_code != 200:
                raise SystemExit(f"evaluate failed: {resp.status_code} {resp.text[:200]}")
            return resp.content

        return call_requests
    parts = urlsplit(url)
    headers = {**headers, "Authorization": org.headers["Authorization"]}
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)

    def call() -> object:
        connection.request("POST", parts.path, body=body, headers=headers)
        resp = connection.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise SystemExit(f"evaluate failed: {resp.status} {data[:200]!r}")
        if answers is not None:
            answers.append((resp.getheader("X-Jishi-Timing") or "", data))
        return data

    return call


def server_run_ms(answers: list[tuple[str, bytes]]) -> list[float]:
    """The run times the server reported (in the worker), from npz headers or JSON bodies."""
    runs = []
    for header, body in answers:
        if header:
            runs.append(float(dict(i.split("=") for i in header.split(","))["run_ms"]))
        else:
            runs.append(float(json.loads(body)["timing"]["run_ms"]))
    return runs


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
        settings = dict(item.split("=", 1) for item in args.setting)
        node = Node(instance, shlex.split(args.server_args), args.database_url, settings)
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
                f"  {'worker run p50':>14s}"
            )
            for name, url in urls.items() if "latency" in sections else ():
                session, arrays = raw_sessions[name], inputs[name]
                for who, http in (("owner", vendor), ("metered", buyer)):
                    for codec in ("npz", "json"):
                        answers: list[tuple[str, bytes]] = []
                        raw_us, http_us = interleaved_us(
                            lambda s=session, a=arrays: s.run(None, a),
                            caller(http, url, arrays, codec, args.client, answers),
                            args.calls,
                        )
                        run_p50 = statistics.median(server_run_ms(answers)) if answers else 0.0
                        r50, r99, h50, h99 = (
                            p(raw_us, 50),
                            p(raw_us, 99),
                            p(http_us, 50),
                            p(http_us, 99),
                        )
                        print(
                            f"  {name:14s} {who:8s} {codec:5s}  {r50 / 1e3:8.3f} {r99 / 1e3:8.3f}"
                            f"  {h50 / 1e3:8.3f} {h99 / 1e3:8.3f}  {(h50 - r50) / 1e3:9.3f}"
                            f" {(h99 - r99) / 1e3:9.3f}  {run_p50:14.3f}"
                        )
            print(f"\nthroughput on the ~1 ms conv (npz), {args.seconds:.0f} s per figure")
            name = "conv ~1 ms"
            model, arrays = MODELS[name]()
            pool = SandboxPool(PoolConfig(workers_max=8))
            try:
                for clients in (2, 8) if "throughput" in sections else ():

                    def http_factory(http: requests.Session) -> Callable[[], object]:
                        return caller(http, urls[name], arrays, "npz", args.client)

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
    """Profile evaluate in this process: the same app and sandbox, called as WSGI."""
    from pyinstrument import Profiler
    from werkzeug.test import EnvironBuilder

    from marketplace import create_app, migrate

    with tempfile.TemporaryDirectory() as instance:
        os.environ["MARKETPLACE_INSTANCE_PATH"] = instance
        os.environ["MARKETPLACE_LOG_LEVEL"] = "WARNING"
        app = create_app()
        migrate.upgrade(app.extensions["db"].engine)
        client = app.test_client()

        def post(who: dict[str, str], path: str, options: dict[str, Any]) -> Any:
            resp = client.post(
                path,
                query_string=options.get("params"),
                json=options.get("json"),
                data=options.get("data"),
                headers={**who, **options.get("headers", {})},
            )
            if resp.status_code not in (200, 201):
                raise SystemExit(f"POST {path}: {resp.status_code} {resp.data[:300]!r}")
            return resp.json

        def org(roles: list[str]) -> dict[str, str]:
            creds = post(
                {},
                "/api/v1/register",
                {
                    "json": {
                        "email": f"{uuid.uuid4().hex[:8]}@example.test",
                        "password": "Bench-Password-2026",
                        "organization_name": "Bench",
                        "organization_roles": roles,
                    }
                },
            )["client"]
            form = {"grant_type": "client_credentials", **creds}
            token = client.post("/oauth/token", data=form).json["access_token"]
            return {"Authorization": f"Bearer {token}"}

        vendor, buyer = org(["vendor"]), org(["buyer"])
        path = provision(post, vendor, buyer, [args.model])[args.model]
        body, headers = request_body(MODELS[args.model]()[1], args.codec)
        who = vendor if args.caller == "owner" else buyer
        environ = EnvironBuilder(
            path=path, method="POST", headers=who | headers, data=body
        ).get_environ()
        statuses: list[str] = []

        def start_response(status: str, _headers: Any, _exc_info: Any = None) -> Any:
            statuses.append(status)

        def call() -> None:
            env = {**environ, "wsgi.input": io.BytesIO(body)}
            chunks = app.wsgi_app(env, start_response)
            try:
                for _chunk in chunks:
                    pass
            finally:
                # What a server does when it has sent the response (and what releases the
                # call's evaluation slot).
                getattr(chunks, "close", lambda: None)()
            status = statuses.pop()
            if not status.startswith("200"):
                raise SystemExit(f"evaluate failed: {status}")

        for _ in range(200):
            call()
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(args.calls):
            call()
        # This process's CPU time is steadier than wall time on a shared host; the sandbox
        # worker's own run is not in it.
        cpu_ms = (time.process_time() - cpu_started) / args.calls * 1000
        per_call_ms = (time.perf_counter() - started) / args.calls * 1000
        print(
            f"{args.model}, {args.caller}, {args.codec}: {per_call_ms:.3f} ms per call unprofiled,"
            f" {cpu_ms:.3f} ms of this process's CPU"
        )
        profiler = Profiler(interval=0.0001)
        profiler.start()
        for _ in range(args.calls):
            call()
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=args.all_frames))
        app.extensions["sandbox_pool"].close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--server-args", default="--processes 2 --threads 8")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the server (e.g. usage_commit_window_s=0), as MARKETPLACE_NAME",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sections", default="cold,latency,throughput")
    parser.add_argument("--client", choices=["http.client", "requests"], default="http.client")
    parser.add_argument("--model", choices=list(MODELS), default="conv ~1 ms")
    parser.add_argument("--caller", choices=["owner", "metered"], default="owner")
    parser.add_argument("--codec", choices=["npz", "json"], default="npz")
    parser.add_argument("--all-frames", action="store_true", help="profile: hide no frames")
    args = parser.parse_args()
    if args.profile:
        run_profile(args)
    else:
        run_bench(args)


if __name__ == "__main__":
    main()
