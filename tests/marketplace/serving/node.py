"""A marketplace node as production runs it: ``jishi serve`` in a child process, over HTTP.

Used by the tests that must see the real server (memory of the web processes, graceful
shutdown, kill -9) and by helpers that walk the API as a client would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

JISHI = str(Path(sys.executable).with_name("jishi"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        out.append(current)
        stack += _children(current)
    return out


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    url: str
    instance: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def web_pids(self) -> list[int]:
        """The server's own processes: everything but the sandbox (zygote and its workers)."""
        pids, stack = [], [self.process.pid]
        while stack:
            pid = stack.pop()
            if "sandbox.zygote" in _cmdline(pid):
                continue
            pids.append(pid)
            stack += _children(pid)
        return pids

    def rss_bytes(self) -> int:
        """Private and file-backed resident memory of the web processes, summed.

        Shared-memory pages (``RssShmem``) are left out: they are the sandbox workers' tensor
        slots, mapped in both processes and bounded by the pool's own limits.
        """
        total = 0
        for pid in self.web_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            for line in status.splitlines():
                if line.startswith(("RssAnon:", "RssFile:")):
                    total += int(line.split()[1]) * 1024
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Signal the server and wait for it; whatever is still left of it is killed after."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(sig)
            return self.process.wait(timeout=timeout_s)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server's whole process group (master, workers, sandbox)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_node(
    tmp_path: Path,
    database_url: str,
    *args: str,
    instance: Path | None = None,
    port: int | None = None,
    **settings: Any,
) -> Node:
    """``jishi serve --no-demo`` on ``database_url``; ``settings`` become MARKETPLACE_* variables."""
    instance = instance or tmp_path / f"node-{uuid.uuid4().hex[:6]}"
    instance.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
    env.update(
        MARKETPLACE_ENV="testing",
        MARKETPLACE_DATABASE_URL=database_url,
        MARKETPLACE_INSTANCE_PATH=str(instance),
        MARKETPLACE_STORAGE_URL=f"file://{tmp_path / 'blobs'}",
        MARKETPLACE_LOG_LEVEL="WARNING",
    )
    env.update({f"MARKETPLACE_{k.upper()}": str(v) for k, v in settings.items()})
    log = instance / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [JISHI, "serve", "--no-demo", "--host", "127.0.0.1", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    node = Node(process, f"http://127.0.0.1:{port}", instance, log, env)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the server exited during start-up:\n{node.output()}")
            try:
                requests.get(f"{node.url}/api/v1/openapi.json", timeout=10)
                return node
            except requests.RequestException:  # not listening yet, or too busy to answer
                time.sleep(0.1)
        raise AssertionError(f"the server did not start:\n{node.output()}")
    except BaseException:
        node.kill()
        raise


class Client:
    """An organisation on a live node, speaking HTTP as any client would."""

    def __init__(self, url: str, roles: list[str] | None = None) -> None:
        self.url = url
        self.http = requests.Session()
        if roles is None:
            return  # credentials come from elsewhere: see with_credentials
        resp = self.http.post(
            f"{url}/api/v1/register",
            json={
                "email": f"{uuid.uuid4().hex[:10]}@example.test",
                "password": "Correct-Horse-9-Battery",
                "organization_name": f"Org {uuid.uuid4().hex[:6]}",
                "organization_roles": roles,
            },
            timeout=30,
        )
        assert resp.status_code == 201, resp.text
        self.id = resp.json()["organization_id"]
        creds = resp.json()["client"]
        self.client_id, self.client_secret = creds["client_id"], creds["client_secret"]
        self.token = self.new_token()
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    @classmethod
    def with_credentials(cls, url: str, client_id: str, client_secret: str) -> Client:
        """An API client created outside the API (``jishi users create``)."""
        client = cls(url)
        client.client_id, client.client_secret = client_id, client_secret
        client.token = client.new_token()
        client.http.headers["Authorization"] = f"Bearer {client.token}"
        return client

    def new_token(self) -> str:
        resp = requests.post(
            f"{self.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(self.client_id, self.client_secret),
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        return str(resp.json()["access_token"])

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.http.post(f"{self.url}{path}", **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.http.get(f"{self.url}{path}", **kwargs)

    def publish(self, model: bytes, version: str = "1.0.0") -> int:
        """A new listing with ``model`` as ``version``; the listing's id."""
        listing = self.post("/api/v1/models", json={"name": "Served model", "task": "test"})
        assert listing.status_code == 201, listing.text
        model_id = int(listing.json()["id"])
        upload = self.post(
            f"/api/v1/models/{model_id}/versions",
            params={"version": version},
            data=model,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert upload.status_code == 201, upload.text
        return model_id

    def offer(self, model_id: int, **fields: Any) -> dict[str, Any]:
        body = {
            "name": "Metered",
            "kind": "per_inference",
            "currency": "CNY",
            "price_minor": 0,
            "royalty_per_1k_minor": 1000,
            "trial_calls": 0,
            "trial_days": 0,
            "allow_download": False,
            "commercial_use": True,
            "terms_md": "Terms.",
        }
        body.update(fields)
        resp = self.post(f"/api/v1/models/{model_id}/offers", json=body)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def trial(self, offer: dict[str, Any]) -> dict[str, Any]:
        resp = self.post(
            f"/api/v1/offers/{offer['id']}/trial",
            json={"accept_terms_sha256": offer["terms_sha256"]},
        )
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def buy(self, offer: dict[str, Any], top_up_minor: int) -> dict[str, Any]:
        top_up = self.post(
            "/api/v1/wallet/top-ups",
            json={"amount_minor": top_up_minor, "currency": offer["currency"]},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert top_up.status_code == 201, top_up.text
        order = self.post(
            f"/api/v1/offers/{offer['id']}/purchase",
            json={"accept_terms_sha256": offer["terms_sha256"]},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert order.status_code == 201, order.text
        return dict(order.json())


def store_version(
    database_url: str, blob_root: Path, organization_id: int, model: bytes, version: str = "1.0.0"
) -> int:
    """A listing of ``organization_id`` holding ``model``, written straight to the node's storage.

    For versions the upload of today would refuse but older uploads may have stored.
    """
    import hashlib
    import io

    from sqlmodel import Session

    from marketplace.catalog.models import Listing, ModelVersion
    from marketplace.db import make_engine
    from model_registry.blobstore import content_key, open_blob_store

    digest = hashlib.sha256(model).hexdigest()
    key = content_key(digest)
    store = open_blob_store(f"file://{blob_root}", default_root=blob_root)
    store.put_stream(key, io.BytesIO(model), size_max=len(model))
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            listing = Listing(
                organization_id=organization_id,
                slug=f"stored-{uuid.uuid4().hex[:10]}",
                name="Stored model",
                task="test",
            )
            session.add(listing)
            session.flush()
            assert listing.id is not None
            session.add(
                ModelVersion(
                    listing_id=listing.id,
                    version=version,
                    sha256=digest,
                    size_bytes=len(model),
                    blob_key=key,
                    ir_version=8,
                )
            )
            session.commit()
            return listing.id
    finally:
        engine.dispose()
