"""`jishi serve` in a child process for a benchmark, returned once it answers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests


def jishi_serve(port: int, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``jishi serve --no-demo --port PORT ARGS`` and wait (60 s at most) until it
    answers; a server that exits or stays silent is stopped and the benchmark ends."""
    jishi = Path(sys.executable).with_name("jishi")
    process = subprocess.Popen(
        [str(jishi), "serve", "--no-demo", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            process.terminate()
            process.wait(timeout=60)
            raise SystemExit("the server did not start")
        try:
            requests.get(f"http://127.0.0.1:{port}/api/v1/openapi.json", timeout=5)
            return process
        except (requests.ConnectionError, requests.Timeout):
            # Not listening yet, or listening while its workers still boot.
            time.sleep(0.2)
