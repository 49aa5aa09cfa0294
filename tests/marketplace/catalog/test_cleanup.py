"""No orphans: a failed row write removes its blob; the sweeper removes what a crash leaves."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlmodel import select

from marketplace.catalog import services, upload_context
from marketplace.catalog.errors import VersionExists
from marketplace.catalog.models import Listing, ModelVersion
from marketplace.catalog.services import versions
from model_registry.blobstore import FilesystemBlobStore, content_key
from tests import onnx_models as builders
from tests.conftest import Org


def test_a_lost_version_race_leaves_no_blob(
    app: Flask, vendor: Org, listing: dict[str, Any], upload: Callable[..., Any]
) -> None:
    assert upload(vendor, listing["id"], builders.relu_bytes(), "1.0.0").status_code == 201
    store = app.extensions["blob_store"]
    before = sorted(s.key for s in store.list(""))
    # A second upload of 1.0.0 that passed the early check (as a concurrent one would) loses at
    # the unique constraint; the blob it wrote is removed again.
    other = builders.relu_bytes(8)
    session = app.extensions["db"].session()
    try:
        row = session.get(Listing, listing["id"])
        assert row is not None
        with app.app_context(), pytest.raises(VersionExists):
            services.publish_version(
                session=session,
                listing=row,
                version="1.0.0",
                body=io.BytesIO(other),
                context=upload_context(app),
            )
    finally:
        session.close()
    assert sorted(s.key for s in store.list("")) == before
    assert not store.exists(content_key(hashlib.sha256(other).hexdigest()))


def test_sweeper_removes_old_unreferenced_blobs_only(
    app: Flask, vendor: Org, listing: dict[str, Any], upload: Callable[..., Any], tmp_path: Path
) -> None:
    assert upload(vendor, listing["id"], builders.relu_bytes()).status_code == 201
    store = app.extensions["blob_store"]
    assert isinstance(store, FilesystemBlobStore)
    orphan, fresh = os.urandom(100), os.urandom(100)
    for data in (orphan, fresh):
        store.put_stream(content_key(hashlib.sha256(data).hexdigest()), io.BytesIO(data),
                         size_max=1000)  # fmt: skip
    old_key = content_key(hashlib.sha256(orphan).hexdigest())
    os.utime(store.root / old_key, (1, 1))
    stale_part = store.root / ".incoming" / "crashed.part"
    stale_part.write_bytes(b"half an upload")
    os.utime(stale_part, (1, 1))
    spool_dir = upload_context(app).spool_dir
    spool_dir.mkdir(parents=True, exist_ok=True)
    stale_spool = spool_dir / "upload-crashed.onnx"
    stale_spool.write_bytes(b"spooled by a crashed process")
    os.utime(stale_spool, (1, 1))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["models", "sweep-blobs", "--grace-s", "3600"])
    assert result.exit_code == 0, result.output
    assert (
        "deleted 1 unreferenced blobs, aborted 1 incomplete uploads, removed 1 stale spool files"
        in result.output
    )
    assert not stale_spool.exists()
    assert not store.exists(old_key)
    assert store.exists(content_key(hashlib.sha256(fresh).hexdigest()))
    session = app.extensions["db"].session()
    try:
        referenced = session.exec(select(ModelVersion.blob_key)).one()
    finally:
        session.close()
    assert store.exists(referenced)
    assert not stale_part.exists()


def test_a_failure_after_the_row_is_built_commits_nothing(
    app: Flask,
    vendor: Org,
    listing: dict[str, Any],
    upload: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection: the response cannot be built (as a bad version string once could not);
    no row is committed, the blob is removed and the spool is empty."""

    def broken(_row: ModelVersion) -> Any:
        raise ValueError("cannot present the version")

    monkeypatch.setattr(versions, "version_public", broken)
    store = app.extensions["blob_store"]
    resp = upload(vendor, listing["id"], builders.relu_bytes(), "1.0.0")
    assert resp.status_code == 500
    monkeypatch.undo()
    assert list(store.list("onnx/")) == []
    spool_dir = upload_context(app).spool_dir
    assert not spool_dir.exists() or list(spool_dir.iterdir()) == []
    assert upload(vendor, listing["id"], builders.relu_bytes(), "1.0.0").status_code == 201
