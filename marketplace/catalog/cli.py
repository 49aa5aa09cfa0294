"""``jishi models``: push an ONNX file through the HTTP API; sweep unreferenced blobs."""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click
from flask import current_app
from flask.cli import AppGroup

from marketplace.bounds import ID_MAX

models_cli = AppGroup("models", help="Model versions in the registry.")

CHUNK_BYTES = 1 << 20
MiB = 1 << 20


class _Progress:
    """The file as an iterable of chunks with a length, drawing a progress line to stderr."""

    def __init__(self, stream: BinaryIO, size: int, *, quiet: bool) -> None:
        self._stream = stream
        self._size = size
        self._quiet = quiet
        self.sent = 0
        self._start = time.monotonic()
        self._drawn = 0.0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._stream.read(CHUNK_BYTES):
            self.sent += len(chunk)
            self._draw()
            yield chunk
        self._draw(final=True)

    def rate(self) -> float:
        return self.sent / max(time.monotonic() - self._start, 1e-9)

    def _draw(self, final: bool = False) -> None:
        now = time.monotonic()
        if self._quiet or (not final and now - self._drawn < 0.2):
            return
        self._drawn = now
        done = self.sent / self._size if self._size else 1.0
        bar = "#" * int(done * 30)
        sys.stderr.write(
            f"\r[{bar:<30}] {done:6.1%} {self.sent / MiB:9.1f}/{self._size / MiB:.1f} MiB "
            f"{self.rate() / MiB:7.1f} MiB/s"
        )
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _problem_text(resp: Any) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}"
    if isinstance(body, dict):
        return f"{body.get('code', body.get('error', resp.status_code))}: " + str(
            body.get("detail", body.get("error_description", ""))
        )
    return f"HTTP {resp.status_code}"


def _echo_findings(findings: list[dict[str, Any]]) -> None:
    for f in findings:
        where = f" [{f['node']}]" if f.get("node") else ""
        click.echo(f"  {f.get('severity', '?')}: {f.get('code')}{where}: {f.get('message', '')}")


@models_cli.command("push", with_appcontext=False)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--model", "model_id", type=click.IntRange(1, ID_MAX), required=True, help="The listing's id."
)
@click.option("--version", required=True, help="Semantic version, such as 1.0.0.")
@click.option("--url", envvar="JISHI_URL", default="http://127.0.0.1:5000", show_default=True)
@click.option("--client-id", envvar="JISHI_CLIENT_ID", required=True)
@click.option("--client-secret", envvar="JISHI_CLIENT_SECRET", required=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def push(
    file: Path,
    model_id: int,
    version: str,
    url: str,
    client_id: str,
    client_secret: str,
    quiet: bool,
) -> None:
    """Upload FILE as a new version of a model through the HTTP API, streaming it."""
    import requests

    base = url.rstrip("/")
    try:
        token_resp = requests.post(
            f"{base}/oauth/token",
            data={"grant_type": "client_credentials", "scope": "models:write"},
            auth=(client_id, client_secret),
            timeout=30,
        )
    except requests.RequestException as exc:
        raise click.ClickException(f"cannot reach {base}: {exc}") from None
    if token_resp.status_code != 200:
        raise click.ClickException(f"token request refused: {_problem_text(token_resp)}")
    token = token_resp.json()["access_token"]
    size = os.path.getsize(file)
    # Declaring the digest lets the server write to storage while the body arrives.
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    with open(file, "rb") as stream:
        progress = _Progress(stream, size, quiet=quiet)
        try:
            resp = requests.post(
                f"{base}/api/v1/models/{model_id}/versions",
                params={"version": version},
                data=progress,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/octet-stream",
                    "Content-Digest": f"sha-256=:{base64.b64encode(digest.digest()).decode()}:",
                },
                timeout=(30, 3600),
            )
        except requests.RequestException as exc:
            raise click.ClickException(f"upload failed: {exc}") from None
    if resp.status_code == 201:
        body = resp.json()
        click.echo(
            f"published model {model_id} version {body['version']}: "
            f"sha256 {body['sha256']}, {body['size_bytes']} bytes, "
            f"{progress.rate() / MiB:.1f} MiB/s"
        )
        if body.get("findings"):
            click.echo("findings:")
            _echo_findings(body["findings"])
        return
    click.echo(f"upload refused: {_problem_text(resp)}", err=True)
    try:
        findings = resp.json().get("findings") or []
    except ValueError:
        findings = []
    if findings:
        click.echo("findings:", err=True)
        _echo_findings(findings)
    raise SystemExit(1)


@models_cli.command("sweep-blobs")
@click.option(
    "--grace-s", type=click.IntRange(min=0), default=None, help="Default: MARKETPLACE_BLOB_GRACE_S."
)
def sweep_blobs(grace_s: int | None) -> None:
    """Delete artifacts no version references and abandoned partial uploads."""
    from marketplace.catalog import services, upload_context
    from marketplace.db import get_session
    from model_registry.upload import sweep_spool

    settings = current_app.extensions["settings"]
    grace_s = settings.blob_grace_s if grace_s is None else grace_s
    counts = services.sweep_blobs(
        session=get_session(), store=current_app.extensions["blob_store"], grace_s=grace_s
    )
    spooled = sweep_spool(upload_context(current_app).spool_dir, grace_s)
    click.echo(
        f"deleted {counts['deleted_blobs']} unreferenced blobs, "
        f"aborted {counts['aborted_uploads']} incomplete uploads, "
        f"removed {spooled} stale spool files"
    )
