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


def _json_object(resp: Any) -> dict[str, Any]:
    """The response's JSON object; empty for anything else (a proxy's HTML page, a list)."""
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _shown(value: object, limit: int = 300) -> str:
    # The server's words reach a terminal: no control characters, and not without end.
    return "".join(c if c.isprintable() else "?" for c in str(value)[:limit])


def _problem_text(resp: Any) -> str:
    body = _json_object(resp)
    if not body:
        return f"HTTP {resp.status_code}"
    code = body.get("code", body.get("error", resp.status_code))
    return f"{_shown(code)}: {_shown(body.get('detail', body.get('error_description', '')))}"


def _findings(body: dict[str, Any]) -> list[dict[str, Any]]:
    found = body.get("findings")
    return [f for f in found if isinstance(f, dict)] if isinstance(found, list) else []


def _echo_findings(findings: list[dict[str, Any]], *, err: bool = False) -> None:
    click.echo("findings:", err=err)
    for f in findings:
        where = f" [{_shown(f['node'])}]" if f.get("node") else ""
        click.echo(
            f"  {_shown(f.get('severity', '?'))}: {_shown(f.get('code'))}{where}: "
            f"{_shown(f.get('message', ''))}",
            err=err,
        )


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

    if not file.is_file():
        # A FIFO or a device (/dev/zero) would be hashed without end.
        raise click.BadParameter(f"{file} is not a regular file", param_hint="FILE")
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
    token = _json_object(token_resp).get("access_token")
    if not isinstance(token, str) or not token:
        raise click.ClickException(f"{base}/oauth/token answered 200 without an access token")
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
    body = _json_object(resp)
    if resp.status_code == 201:
        click.echo(
            f"published model {model_id} version {_shown(body.get('version', version))}: "
            f"sha256 {_shown(body.get('sha256', digest.hexdigest()))}, {size} bytes, "
            f"{progress.rate() / MiB:.1f} MiB/s"
        )
        if findings := _findings(body):
            _echo_findings(findings)
        return
    click.echo(f"upload refused: {_problem_text(resp)}", err=True)
    if findings := _findings(body):
        _echo_findings(findings, err=True)
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
