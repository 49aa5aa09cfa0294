"""The README's curl walkthrough, run block by block against a real ``jishi serve``.

The blocks between the ``walkthrough`` markers are run as one bash script, as a newcomer would
paste them, against a server started on the embedded defaults (with the test database), using
the credentials file the server names on start. The outcome is then checked through the API:
the metered calls accrued, ``jishi ledger settle`` charged them, the statement shows it. The
``jobs-walkthrough`` blocks follow in the same script: an evaluation job that the worker
``jishi serve`` runs in one of its processes must finish.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine

README = Path(__file__).resolve().parents[3] / "README.md"
BIN = Path(sys.executable).parent


def _blocks(name: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split(f"<!-- {name}:start -->", 1)[1].split(f"<!-- {name}:end -->")[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def walkthrough_script() -> str:
    """The first-use walk, then the evaluation job walk (which uses its shell functions)."""
    blocks = _blocks("walkthrough")
    assert len(blocks) >= 5, "the walkthrough lost its blocks"
    jobs = _blocks("jobs-walkthrough")
    assert jobs, "the evaluation jobs walkthrough lost its block"
    return "set -euo pipefail\n" + "\n".join(blocks + jobs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """``jishi serve`` in a child process, with its output in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "jishi"), "serve", "--port", str(self.port), "--processes", "1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while True:
            try:
                requests.get(f"{self.url}/api/v1/openapi.json", timeout=2)
                return
            except requests.ConnectionError:
                assert self.proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        return self.log.read_text()


@pytest.fixture
def serve_env(
    tmp_path: Path, fresh_database: Callable[[], tuple[str, Engine]]
) -> Iterator[dict[str, str]]:
    url, _engine = fresh_database()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
    env.update(
        MARKETPLACE_INSTANCE_PATH=str(tmp_path / "instance"),
        MARKETPLACE_DATABASE_URL=url,
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    yield env


def _credentials_path(output: str) -> Path:
    found = re.findall(r"credentials (?:written to|in) (\S+)", output)
    assert found, output
    return Path(found[-1])


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(serve_env: dict[str, str], tmp_path: Path) -> None:
    server = Served(serve_env, tmp_path / "serve-1.log")
    try:
        creds_path = _credentials_path(server.log.read_text())
        assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
        work = tmp_path / "work"
        work.mkdir()
        run = subprocess.run(
            ["bash", "-c", walkthrough_script()],
            cwd=work,
            env={**serve_env, "JISHI": server.url, "CREDS": str(creds_path)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
        assert "settled 5 calls on 1 licences; charged (minor units) 100 CNY" in run.stdout
        # The evaluation job ran on the worker `jishi serve` runs in one of its processes.
        assert "(20, 1) True" in run.stdout
        assert '"samples_done":20' in run.stdout

        demo = json.loads(creds_path.read_text())
        token = requests.post(
            f"{server.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(demo["buyer"]["client_id"], demo["buyer"]["client_secret"]),
            timeout=30,
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        licences = requests.get(f"{server.url}/api/v1/licenses", headers=auth, timeout=30).json()
        (metered,) = [
            lic
            for lic in licences["items"]
            if lic["kind"] == "per_inference" and lic["listing_id"] != 1
        ]
        # 5 calls at ¥200 per 1,000 calls: 100 fen accrued, all of it settled.
        assert metered["usage"]["calls_used"] == 5
        assert metered["usage"]["accrued_minor"] == metered["usage"]["settled_minor"] == 100
        assert metered["usage"]["unsettled_minor"] == 0
        assert metered["usage"]["settled_display"] == "¥1.00"
        statement = requests.get(
            f"{server.url}/api/v1/ledger/statement",
            params={"currency": "CNY"},
            headers=auth,
            timeout=30,
        ).json()
        royalties = [e for e in statement["entries"] if e["kind"] == "royalty"]
        assert [(e["amount_minor"], e["status"]) for e in royalties] == [(100, "posted")]
        reservations = [e for e in statement["entries"] if e["kind"] == "reservation"]
        assert reservations and {e["status"] for e in reservations} == {"released"}
        assert not any(e["pending"] for e in statement["entries"])
    finally:
        first_output = server.stop()
    assert "demo API client credentials written to" in first_output
    assert "a worker with 2 threads runs in one server process" in first_output

    # Every later start names the file again.
    again = Served(serve_env, tmp_path / "serve-2.log")
    output = again.stop()
    assert f"API client credentials in {creds_path}" in output
