"""The `jishi` command: migrations, platform users, demo data and the embedded server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sqlmodel import select

from marketplace.accounts.models import Organization, User


def test_users_create_makes_an_auditor_with_a_client(app, runner, db_session):
    result = runner.invoke(
        args=["users", "create", "--email", "Aud@Example.test", "--role", "auditor"]
    )
    assert result.exit_code == 0, result.output
    assert "client_secret: jcs_" in result.output
    user = db_session.exec(select(User).where(User.email == "aud@example.test")).one()
    assert user.platform_role == "auditor"
    org = db_session.exec(select(Organization).where(Organization.roles == "auditor")).one()
    assert "audit:read" in org.allowed_scopes and "models:write" not in org.allowed_scopes
    again = runner.invoke(
        args=["users", "create", "--email", "aud@example.test", "--role", "admin"]
    )
    assert again.exit_code != 0


def test_users_create_rejects_other_roles(runner):
    result = runner.invoke(
        args=["users", "create", "--email", "x@example.test", "--role", "vendor"]
    )
    assert result.exit_code == 2


def test_demo_data_is_idempotent(app, runner, db_session):
    first = runner.invoke(args=["demo-data"])
    assert first.exit_code == 0, first.output
    count = len(db_session.exec(select(Organization)).all())
    second = runner.invoke(args=["demo-data"])
    assert second.exit_code == 0
    assert "present" in second.output
    assert len(db_session.exec(select(Organization)).all()) == count


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_embedded_serve_migrates_loads_demo_data_and_serves(tmp_path: Path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
    env["MARKETPLACE_INSTANCE_PATH"] = str(tmp_path / "instance")
    jishi = Path(sys.executable).with_name("jishi")
    proc = subprocess.Popen(
        [str(jishi), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                resp = requests.get(f"http://127.0.0.1:{port}/api/v1/openapi.json", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        assert resp.status_code == 200
        assert (tmp_path / "instance" / "jishi.sqlite3").exists()
        catalog = requests.get(f"http://127.0.0.1:{port}/api/v1/models", timeout=10).json()
        assert catalog["total"] == 1
        listing = catalog["items"][0]
        detail = requests.get(
            f"http://127.0.0.1:{port}/api/v1/models/{listing['id']}", timeout=10
        ).json()
        assert [v["version"] for v in detail["versions"]] == ["1.0.0"]
        assert {o["kind"] for o in detail["offers"]} == {"per_inference", "perpetual"}
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert "demo vendor" in output


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["models", "push", "--help"], ["reports", "verify", "--help"]],
    ids=["help", "push", "verify-report"],
)
def test_cli_start_up_imports_no_model_runtime(argv):
    # Start-up time is measured by what is imported, not by a clock: listing commands and
    # client commands must not pull in onnx, onnxruntime, numpy or the database layer.
    code = (
        "import sys\n"
        f"sys.argv = ['jishi', *{argv!r}]\n"
        "from marketplace.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('onnx', 'onnxruntime', 'numpy', 'minio', 'sqlalchemy', 'alembic')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    assert _last_line_printed(code) == "[]"


def _last_line_printed(code: str) -> str:
    """What a fresh interpreter running ``code`` printed last (imports start from nothing)."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def test_the_command_line_modules_import_no_views():
    # The command line builds on services and the app's extensions; the views are the web's.
    code = (
        "import sys, importlib\n"
        "for name in ('marketplace.cli', 'marketplace.accounts.cli', 'marketplace.audit.cli',\n"
        "             'marketplace.catalog.cli', 'marketplace.ledger.cli',\n"
        "             'marketplace.payments.cli', 'marketplace.jobs.reports_cli'):\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.endswith('.views') or '.web' in m))\n"
    )
    assert _last_line_printed(code) == "[]"


@pytest.mark.parametrize(
    "args",
    [
        ["orgs", "verify", "99999999999999999999"],
        ["payments", "retry", "2147483648"],
        ["payouts", "run", "--organization", "99999999999999999999"],
        ["audit", "export", "--from-seq", str(2**64), "--out", "unused.jsonl"],
    ],
    ids=["orgs-verify", "outbox-retry", "payouts-run", "audit-export"],
)
def test_ids_past_their_columns_are_refused_as_usage_errors(runner, args):
    # Each was a traceback from the database driver (an integer too large for the column).
    result = runner.invoke(args=args)
    assert result.exit_code == 2, result.output
    assert "is not in the range" in result.output
