"""The HTTP evaluate path (npz in, npz out) vs raw in-process onnxruntime, for the conv case.

Run: .venv/bin/python -m bench.bench_evaluate_http [--calls N]

Starts `jishi serve` on embedded defaults in a child process (its own SQLite and blobs in a
temporary folder), registers a vendor, uploads the conv model through the API and times
evaluate calls over one keep-alive HTTP connection. The raw baseline runs in this process with
the sandbox's own session options, interleaved with the HTTP calls.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import requests

from bench.bench_sandbox import CONSTANT_FOLDING_BYTES_MAX, conv_model, interleaved_us, p
from marketplace.evaluation.tensors import NPZ_MIME, decode_npz, encode_npz
from sandbox.runtime import session_options


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            requests.get(f"{url}/api/v1/openapi.json", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise SystemExit("the server did not start within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()

    model, inputs = conv_model()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as instance:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
        env["MARKETPLACE_INSTANCE_PATH"] = instance
        env["MARKETPLACE_LOG_LEVEL"] = "WARNING"
        jishi = Path(sys.executable).with_name("jishi")
        server = subprocess.Popen(
            [str(jishi), "serve", "--no-demo", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_until_up(url, server)
            http = requests.Session()
            reg = http.post(
                f"{url}/api/v1/register",
                json={
                    "email": "bench@example.test",
                    "password": "Bench-Password-2026",
                    "organization_name": "Bench",
                    "organization_roles": ["vendor"],
                },
                timeout=30,
            ).json()
            creds = reg["client"]
            token = http.post(
                f"{url}/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(creds["client_id"], creds["client_secret"]),
                timeout=30,
            ).json()["access_token"]
            http.headers["Authorization"] = f"Bearer {token}"
            listing = http.post(
                f"{url}/api/v1/models",
                json={"name": "Bench conv", "task": "image-classification"},
                timeout=30,
            ).json()
            upload = http.post(
                f"{url}/api/v1/models/{listing['id']}/versions",
                params={"version": "1.0.0"},
                data=model,
                headers={"Content-Type": "application/octet-stream"},
                timeout=120,
            )
            if upload.status_code != 201:
                raise SystemExit(f"upload failed: {upload.status_code} {upload.text}")
            evaluate_url = f"{url}/api/v1/models/{listing['id']}/versions/1.0.0/evaluate"
            body = encode_npz(inputs)
            headers = {"Content-Type": NPZ_MIME, "Accept": NPZ_MIME}

            options = session_options(constant_folding_bytes_max=CONSTANT_FOLDING_BYTES_MAX)
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            reference = session.run(None, inputs)[0]

            cold_started = time.perf_counter()
            first = http.post(evaluate_url, data=body, headers=headers, timeout=60)
            cold_ms = (time.perf_counter() - cold_started) * 1000
            if first.status_code != 200:
                raise SystemExit(f"evaluate failed: {first.status_code} {first.text}")
            got = decode_npz(first.content, elements_max=1 << 20, bytes_max=1 << 24)["y"]
            np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)

            def over_http() -> object:
                resp = http.post(evaluate_url, data=body, headers=headers, timeout=60)
                if resp.status_code != 200:
                    raise SystemExit(f"evaluate failed: {resp.status_code}")
                return resp.content

            raw_us, http_us = interleaved_us(
                lambda: session.run(None, inputs), over_http, args.calls
            )
        finally:
            server.terminate()
            server.wait(timeout=30)

    raw50, raw99, http50, http99 = p(raw_us, 50), p(raw_us, 99), p(http_us, 50), p(http_us, 99)
    print(f"HTTP evaluate (npz) vs raw onnxruntime, conv case, {args.calls} calls each")
    print(f"  raw   p50 {raw50 / 1000:8.3f} ms   p99 {raw99 / 1000:8.3f} ms")
    print(f"  http  p50 {http50 / 1000:8.3f} ms   p99 {http99 / 1000:8.3f} ms")
    print(f"  ratio p50 {http50 / raw50:8.2f}x    p99 {http99 / raw99:8.2f}x")
    print(f"  first call over HTTP (cold worker): {cold_ms:.1f} ms")


if __name__ == "__main__":
    main()
