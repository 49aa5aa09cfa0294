"""Catalog fixtures: a vendor's listing and helpers to upload models and inspect the store."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import select

from marketplace.catalog.models import ModelVersion
from model_registry.blobstore import BlobStore
from tests.conftest import Org

OCTET = {"Content-Type": "application/octet-stream"}


def listing_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Steel Defect Detector",
        "summary": "Finds scratches and dents on rolled steel.",
        "description_md": "# Steel defects\n\nTrained on **12k** images.",
        "task": "image-classification",
        "tags": ["vision", "manufacturing"],
    }
    body.update(overrides)
    return body


@pytest.fixture
def create_listing(client: FlaskClient) -> Callable[..., dict[str, Any]]:
    def create(org: Org, **overrides: Any) -> dict[str, Any]:
        resp = client.post(
            "/api/v1/models", json=listing_body(**overrides), headers=org.headers("models:write")
        )
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return resp.json  # type: ignore[no-any-return]

    return create


@pytest.fixture
def listing(vendor: Org, create_listing: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return create_listing(vendor)


@pytest.fixture
def upload(client: FlaskClient) -> Callable[..., Any]:
    """``upload(org, model_id, data, version="1.0.0", headers=..., chunked=False)`` posts raw
    bytes; ``chunked`` sends no Content-Length, as a de-chunking WSGI server presents it."""

    def post(
        org: Org,
        model_id: int,
        data: bytes,
        version: str | None = "1.0.0",
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> Any:
        query = "" if version is None else f"?version={quote(version, safe='')}"
        extra: dict[str, Any] = {}
        if chunked:
            extra["environ_overrides"] = {"wsgi.input_terminated": True}
            headers = {**(headers or {}), "Transfer-Encoding": "chunked"}
        return client.post(
            f"/api/v1/models/{model_id}/versions{query}",
            data=io.BytesIO(data) if chunked else data,
            headers={**org.headers("models:write"), **OCTET, **(headers or {})},
            **extra,
        )

    return post


@pytest.fixture
def store(app: Flask) -> BlobStore:
    return app.extensions["blob_store"]  # type: ignore[no-any-return]


@pytest.fixture
def stored_state(app: Flask, store: BlobStore) -> Callable[[], tuple[list[str], int]]:
    """Blob keys in the store (and spool files) and the count of version rows, for
    nothing-was-kept assertions."""

    def snapshot() -> tuple[list[str], int]:
        session = app.extensions["db"].session()
        try:
            count = len(session.exec(select(ModelVersion.id)).all())
        finally:
            session.close()
        keys = sorted(s.key for s in store.list(""))
        spool = app.extensions["settings"].upload_spool_dir
        from pathlib import Path

        spool_dir = Path(spool or Path(app.instance_path) / "spool")
        spooled = sorted(p.name for p in spool_dir.glob("*")) if spool_dir.exists() else []
        return keys + [f"spool:{n}" for n in spooled], count

    return snapshot


def set_model_bytes_max(app: Flask, size_max: int) -> None:
    """Change the live app's upload limit: the setting and the upload context built from it."""
    app.extensions["settings"].model_bytes_max = size_max
    context = app.extensions["upload_context"]
    app.extensions["upload_context"] = dataclasses.replace(context, size_max=size_max)
