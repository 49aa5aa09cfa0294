"""The registry over real HTTP: a werkzeug server, the S3 store on SeaweedFS, the CLI."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from click.testing import CliRunner

from marketplace.catalog.cli import models_cli
from model_registry.blobstore import S3BlobStore, content_key, open_blob_store
from tests import onnx_models as builders
from tests.conftest import LiveServer
from tests.marketplace.catalog.conftest import set_model_bytes_max
from tests.marketplace.live import Vendor
from tests.model_registry.seaweed import SeaweedS3


def _chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def s3_server(
    seaweed: SeaweedS3, live_server: Callable[..., LiveServer]
) -> tuple[LiveServer, S3BlobStore]:
    # One bucket for these tests, emptied first (SeaweedFS gives every bucket its own volumes).
    url = seaweed.storage_url(bucket="jishi-api")
    store = open_blob_store(url, default_root="/nonexistent")
    assert isinstance(store, S3BlobStore)
    store.ensure_bucket()
    for stat in list(store.list("")):
        store.delete(stat.key)
    return live_server(STORAGE_URL=url, MODEL_BYTES_MAX=64 * 1024), store


def test_upload_dedupe_and_download_through_s3(
    s3_server: tuple[LiveServer, S3BlobStore],
) -> None:
    server, store = s3_server
    vendor = Vendor(server)
    data = builders.relu_bytes(16)
    digest = hashlib.sha256(data).hexdigest()

    first = vendor.upload(data, "1.0.0")  # with Content-Length
    assert first.status_code == 201, first.text
    second = vendor.upload(_chunks(data), "1.0.1")  # chunked, no Content-Length
    assert second.status_code == 201, second.text
    assert second.json()["sha256"] == digest
    assert [s.key for s in store.list("")] == [content_key(digest)]

    artifact = requests.get(
        f"{server.url}/api/v1/models/{vendor.model_id}/versions/1.0.0/artifact",
        headers=vendor.auth,
        allow_redirects=False,
        timeout=30,
    )
    assert artifact.status_code == 302
    location = artifact.headers["Location"]
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=300" in location
    fetched = requests.get(location, timeout=30)
    assert fetched.status_code == 200 and fetched.content == data


def test_hostile_uploads_over_http_store_nothing(
    s3_server: tuple[LiveServer, S3BlobStore],
) -> None:
    server, store = s3_server
    vendor = Vendor(server)
    random_body = vendor.upload(os.urandom(10_000), "1.0.0")
    assert random_body.status_code == 422 and random_body.json()["code"] == "model_rejected"
    external = vendor.upload(builders.external_initializer("../../etc/passwd"), "1.0.0")
    assert [f["code"] for f in external.json()["findings"]] == ["external_data"]
    too_big = builders.relu_bytes(16 * 1024)  # ~128 KiB, over the 64 KiB limit
    declared = vendor.upload(too_big, "1.0.0")
    assert declared.status_code == 413 and declared.json()["code"] == "model_too_large"
    try:
        chunked = vendor.upload(_chunks(too_big, 16 * 1024), "1.0.0")
    except requests.ConnectionError:
        pass  # the server may close the connection before the client finishes sending
    else:
        assert chunked.status_code == 413 and chunked.json()["code"] == "model_too_large"
    assert list(store.list("")) == []
    ok = vendor.upload(builders.relu_bytes(), "1.0.0")
    assert ok.status_code == 201, ok.text


def _digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def test_declared_digest_streams_into_s3_and_commits_only_accepted_models(
    s3_server: tuple[LiveServer, S3BlobStore],
) -> None:
    server, store = s3_server
    vendor = Vendor(server)
    set_model_bytes_max(server.app, 64 * 1024 * 1024)
    # Several S3 parts each, so the multipart upload is in flight while the body arrives.
    data = builders.relu_bytes(1024 * 1024)  # 8 MiB of weights
    noise = os.urandom(20 * 1024 * 1024)
    refused = vendor.upload(_chunks(noise, 1 << 20), "1.0.0", **{"Content-Digest": _digest(noise)})
    assert refused.status_code == 422 and refused.json()["code"] == "model_rejected"
    lying = vendor.upload(data, "1.0.0", **{"Content-Digest": _digest(noise)})
    assert lying.status_code == 400 and lying.json()["code"] == "digest_mismatch"
    assert list(store.list("")) == []
    assert store.sweep_incomplete(0) == 0  # the refused multipart uploads were aborted
    ok = vendor.upload(_chunks(data, 1 << 20), "1.0.0", **{"Content-Digest": _digest(data)})
    assert ok.status_code == 201, ok.text
    assert [s.key for s in store.list("")] == [content_key(hashlib.sha256(data).hexdigest())]
    with store.open(content_key(hashlib.sha256(data).hexdigest())) as blob:
        assert hashlib.sha256(blob.read()).digest() == hashlib.sha256(data).digest()


def test_cli_push(live_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = live_server()
    vendor = Vendor(server)
    model = tmp_path / "model.onnx"
    model.write_bytes(builders.relu_bytes())
    runner = CliRunner()
    env = {
        "JISHI_URL": server.url,
        "JISHI_CLIENT_ID": vendor.client_id,
        "JISHI_CLIENT_SECRET": vendor.client_secret,
    }
    args = ["push", str(model), "--model", str(vendor.model_id), "--version", "1.2.3"]
    result = runner.invoke(models_cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert "published model" in result.output and "version 1.2.3" in result.output
    assert "MiB/s" in result.output

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(builders.custom_domain())
    result = runner.invoke(models_cli, [*args[:1], str(bad), *args[2:-1], "1.2.4"], env=env)
    assert result.exit_code == 1
    assert "model_rejected" in result.output and "domain_not_allowed" in result.output

    wrong = runner.invoke(models_cli, args, env={**env, "JISHI_CLIENT_SECRET": "nope"})
    assert wrong.exit_code != 0 and "token request refused" in wrong.output


# What a server that is not the marketplace (a mistyped --url, a proxy's error page) may answer
# to the token request and to the upload: (token status, token body, upload status, upload body).
ODD_SERVERS = {
    "token page": (200, b"<html>sign in</html>", 201, b"{}"),
    "token object without one": (200, b"{}", 201, b"{}"),
    "token list": (200, b"[1]", 201, b"{}"),
    "upload page": (200, b'{"access_token": "t"}', 201, b"<html>ok</html>"),
    "upload list": (200, b'{"access_token": "t"}', 201, b"[1, 2]"),
    "refusal list": (200, b'{"access_token": "t"}', 422, b"[1]"),
    "odd findings": (
        200,
        b'{"access_token": "t"}',
        422,
        b'{"code": "model_rejected\\u001b[2K", "findings": [1, "x", {"code": "c"}]}',
    ),
}


def _odd_server(answers: tuple[int, bytes, int, bytes]) -> tuple[str, Callable[[], None]]:
    import http.server

    token_status, token_body, upload_status, upload_body = answers

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            token = self.path.startswith("/oauth/token")
            status, body = (token_status, token_body) if token else (upload_status, upload_body)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_port}", stop


@pytest.mark.parametrize("case", list(ODD_SERVERS))
def test_cli_push_explains_answers_it_cannot_use(case: str, tmp_path: Path) -> None:
    """Each of these ended in a Python traceback (KeyError, TypeError, JSONDecodeError)."""
    url, stop = _odd_server(ODD_SERVERS[case])
    model = tmp_path / "model.onnx"
    model.write_bytes(builders.relu_bytes())
    args = ["push", str(model), "--model", "1", "--version", "1.0.0", "--url", url]
    env = {"JISHI_CLIENT_ID": "a", "JISHI_CLIENT_SECRET": "b"}
    try:
        result = CliRunner().invoke(models_cli, args, env=env)
    finally:
        stop()
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and "\x1b" not in result.output
    if ODD_SERVERS[case][2] == 201 and ODD_SERVERS[case][1].startswith(b'{"access'):
        assert result.exit_code == 0 and "published model 1 version 1.0.0" in result.output
    else:
        assert result.exit_code != 0, result.output


def test_cli_push_refuses_files_that_are_not_regular(tmp_path: Path) -> None:
    """/dev/zero and a FIFO were hashed without end."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        args = ["push", path, "--model", "1", "--version", "1.0.0", "--url", "http://192.0.2.1:1"]
        result = CliRunner().invoke(
            models_cli, args, env={"JISHI_CLIENT_ID": "a", "JISHI_CLIENT_SECRET": "b"}
        )
        assert result.exit_code == 2 and "not a regular file" in result.output, result.output


def test_concurrent_uploads_of_one_version(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """Racing uploads of the same version with different bytes: one wins, the others get 409,
    and only the winner's bytes stay in the store."""
    # As many inspection slots as racers: this test is about the version, not the slots.
    server = live_server(STORAGE_URL=f"file://{tmp_path / 'race-blobs'}", INSPECT_CONCURRENCY_MAX=4)
    vendor = Vendor(server)
    bodies = [builders.relu_bytes(width) for width in (4, 8, 16, 32)]
    results: list[requests.Response] = []

    def send(body: bytes) -> None:
        results.append(vendor.upload(body, "1.0.0"))

    threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201, 409, 409, 409], [r.text for r in results]
    winner = next(r for r in results if r.status_code == 201).json()["sha256"]
    store = server.app.extensions["blob_store"]
    assert [s.key for s in store.list("onnx/")] == [content_key(winner)]


def test_an_unwritable_spool_is_a_503_for_uploads_and_datasets(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """The spool's disk failing (here: a file where its directory should be) was a 500."""
    blocked = tmp_path / "spool"
    blocked.write_text("not a directory")
    server = live_server(UPLOAD_SPOOL_DIR=str(blocked))
    vendor = Vendor(server)
    resp = vendor.upload(builders.relu_bytes(), "1.0.0")
    assert resp.status_code == 503, resp.text
    assert resp.json()["code"] == "storage_unavailable"
    buffer = io.BytesIO()
    np.savez(buffer, x=np.ones((4, 2), np.float32))
    dataset = vendor.post(
        "/api/v1/datasets?name=d",
        data=buffer.getvalue(),
        headers={"Content-Type": "application/x-npz"},
    )
    assert dataset.status_code == 503, dataset.text
    assert dataset.json()["code"] == "storage_unavailable"
