"""Uploading versions: the happy path, immutability, dedupe, and every hostile input."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import select

from marketplace.catalog.models import ModelVersion
from model_registry.blobstore import content_key
from tests import onnx_models as builders
from tests.conftest import Org
from tests.marketplace.catalog.conftest import set_model_bytes_max


def test_upload_a_version(
    client: FlaskClient,
    vendor: Org,
    listing: dict[str, Any],
    upload: Callable[..., Any],
    store: Any,
) -> None:
    data = builders.relu_bytes()
    resp = upload(vendor, listing["id"], data)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.json
    digest = hashlib.sha256(data).hexdigest()
    assert body["version"] == "1.0.0"
    assert body["sha256"] == digest
    assert body["size_bytes"] == len(data)
    assert body["ir_version"] == builders.IR_VERSION
    assert body["opsets"] == {"ai.onnx": builders.OPSET}
    assert body["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    assert body["stats"]["op_types"] == {"Add": 1, "MatMul": 1, "Relu": 1}
    assert body["findings"] == []
    assert resp.headers["Location"].endswith("/versions/1.0.0")
    with store.open(content_key(digest)) as blob:
        assert blob.read() == data
    detail = client.get(f"/api/v1/models/{listing['id']}").json
    assert [v["version"] for v in detail["versions"]] == ["1.0.0"]
    assert detail["latest_version"] == "1.0.0"
    one = client.get(f"/api/v1/models/{listing['id']}/versions/1.0.0")
    assert one.status_code == 200 and one.json["sha256"] == digest


def test_identical_bytes_are_stored_once(
    vendor: Org, create_listing: Callable[..., Any], upload: Callable[..., Any], store: Any
) -> None:
    first, second = create_listing(vendor), create_listing(vendor, name="Other")
    data = builders.relu_bytes()
    assert upload(vendor, first["id"], data, "1.0.0").status_code == 201
    assert upload(vendor, first["id"], data, "1.0.1").status_code == 201
    assert upload(vendor, second["id"], data, "2.0.0").status_code == 201
    assert [s.key for s in store.list("onnx/")] == [content_key(hashlib.sha256(data).hexdigest())]


def test_chunked_upload_without_content_length(
    vendor: Org, listing: dict[str, Any], upload: Callable[..., Any]
) -> None:
    data = builders.relu_bytes()
    resp = upload(vendor, listing["id"], data, chunked=True)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.json["size_bytes"] == len(data)


def _hostile_cases() -> list[tuple[str, bytes, str]]:
    return [
        ("random", os.urandom(20_000), "not_onnx"),
        ("truncated", builders.relu_bytes()[:-9], "not_onnx"),
        ("external-dotdot", builders.external_initializer("../secret.bin"), "external_data"),
        ("external-sub", builders.external_initializer("sub/../../etc/passwd"), "external_data"),
        ("external-absolute", builders.external_initializer("/etc/passwd"), "external_data"),
        ("external-sparse", builders.external_sparse_initializer("w.bin"), "external_data"),
        ("external-constant", builders.external_constant("../w.bin"), "external_data"),
        ("external-subgraph", builders.external_in_subgraph("../w.bin"), "external_data"),
        ("custom-domain", builders.custom_domain(), "domain_not_allowed"),
        ("nesting", builders.nested_ifs(6), "nesting_too_deep"),
        ("declared-huge", builders.declared_huge_initializer(), "initializers_too_large"),
        ("checker", builders.checker_invalid(), "checker_failed"),
    ]


@pytest.mark.parametrize(
    ("name", "data", "finding"), _hostile_cases(), ids=[c[0] for c in _hostile_cases()]
)
def test_hostile_models_are_rejected_and_nothing_is_kept(
    client: FlaskClient,
    vendor: Org,
    listing: dict[str, Any],
    upload: Callable[..., Any],
    stored_state: Callable[[], Any],
    name: str,
    data: bytes,
    finding: str,
) -> None:
    before = stored_state()
    resp = upload(vendor, listing["id"], data)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    assert resp.json["code"] == "model_rejected"
    assert finding in [f["code"] for f in resp.json["findings"]]
    assert stored_state() == before


def test_server_keeps_serving_after_hostile_uploads(
    vendor: Org, listing: dict[str, Any], upload: Callable[..., Any]
) -> None:
    for _name, data, _finding in _hostile_cases():
        assert upload(vendor, listing["id"], data).status_code == 422
    assert upload(vendor, listing["id"], builders.relu_bytes()).status_code == 201


def test_zero_byte_body(
    vendor: Org, listing: dict[str, Any], upload: Callable[..., Any], stored_state: Any
) -> None:
    before = stored_state()
    resp = upload(vendor, listing["id"], b"")
    assert resp.status_code == 422
    assert resp.json["code"] == "model_rejected"
    assert [f["code"] for f in resp.json["findings"]] == ["empty_model"]
    assert stored_state() == before


@pytest.mark.parametrize("declared", [False, True], ids=["", "declared-digest"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit(
    vendor: Org,
    listing: dict[str, Any],
    upload: Callable[..., Any],
    stored_state: Any,
    chunked: bool,
    declared: bool,
) -> None:
    # `vendor` has built the app already, so the limit is lowered on its live settings.
    set_model_bytes_max(vendor.client.application, 4096)
    before = stored_state()
    data = builders.relu_bytes(1024)  # a valid model of ~ 8 KiB
    assert len(data) > 4096
    headers = content_digest(data) if declared else {}
    resp = upload(vendor, listing["id"], data, chunked=chunked, headers=headers)
    assert resp.status_code == 413, resp.get_data(as_text=True)
    assert resp.json["code"] == "model_too_large"
    assert stored_state() == before


def test_duplicate_version(
    vendor: Org, listing: dict[str, Any], upload: Callable[..., Any], stored_state: Any
) -> None:
    assert upload(vendor, listing["id"], builders.relu_bytes()).status_code == 201
    before = stored_state()
    resp = upload(vendor, listing["id"], builders.relu_bytes(8))
    assert resp.status_code == 409
    assert resp.json["code"] == "version_exists"
    assert stored_state() == before


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "", "1.0.0 ", "x" * 70])
def test_malformed_semver(
    vendor: Org,
    listing: dict[str, Any],
    upload: Callable[..., Any],
    stored_state: Any,
    version: str,
) -> None:
    before = stored_state()
    resp = upload(vendor, listing["id"], builders.relu_bytes(), version=version)
    assert resp.status_code == 422
    assert resp.json["code"] == "invalid_version"
    assert stored_state() == before


def test_missing_version_parameter(
    vendor: Org, listing: dict[str, Any], upload: Callable[..., Any]
) -> None:
    resp = upload(vendor, listing["id"], builders.relu_bytes(), version=None)
    assert resp.status_code == 422
    assert resp.json["code"] == "invalid_version"


@pytest.mark.parametrize("version", ["1.0.0-rc.1", "2.3.4+build.7", "0.0.1-alpha.beta+exp.sha.5"])
def test_semver_with_pre_release_and_build(
    vendor: Org, listing: dict[str, Any], upload: Callable[..., Any], version: str
) -> None:
    resp = upload(vendor, listing["id"], builders.relu_bytes(), version=version)
    assert resp.status_code == 201, resp.get_data(as_text=True)


def test_upload_to_another_vendors_model(
    make_org: Callable[..., Org],
    listing: dict[str, Any],
    upload: Callable[..., Any],
    stored_state: Any,
) -> None:
    other = make_org(["vendor"])
    before = stored_state()
    resp = upload(other, listing["id"], builders.relu_bytes())
    assert resp.status_code == 404
    assert resp.json["code"] == "model_not_found"
    assert stored_state() == before


def test_wrong_content_type(
    vendor: Org, listing: dict[str, Any], upload: Callable[..., Any], stored_state: Any
) -> None:
    before = stored_state()
    for content_type in ["application/json", "multipart/form-data; boundary=x", "text/plain"]:
        resp = upload(
            vendor, listing["id"], builders.relu_bytes(), headers={"Content-Type": content_type}
        )
        assert resp.status_code == 415, content_type
        assert resp.json["code"] == "unsupported_media_type"
    assert stored_state() == before


def test_buyer_cannot_upload(client: FlaskClient, buyer: Org, listing: dict[str, Any]) -> None:
    resp = client.post(
        f"/api/v1/models/{listing['id']}/versions?version=1.0.0",
        data=builders.relu_bytes(),
        headers={**buyer.headers(), "Content-Type": "application/octet-stream"},
    )
    assert resp.status_code == 403
    assert resp.json["code"] == "insufficient_scope"


def test_anonymous_upload_is_refused(client: FlaskClient, listing: dict[str, Any]) -> None:
    resp = client.post(
        f"/api/v1/models/{listing['id']}/versions?version=1.0.0",
        data=builders.relu_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resp.status_code == 401


def test_row_records_the_blob(
    app: Any, vendor: Org, listing: dict[str, Any], upload: Callable[..., Any]
) -> None:
    data = builders.relu_bytes()
    upload(vendor, listing["id"], data)
    session = app.extensions["db"].session()
    row = session.exec(select(ModelVersion)).one()
    assert row.blob_key == content_key(hashlib.sha256(data).hexdigest())
    session.close()


def content_digest(data: bytes) -> dict[str, str]:
    return {
        "Content-Digest": "sha-256=:"
        + base64.b64encode(hashlib.sha256(data).digest()).decode()
        + ":"
    }


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_declared_digest_streams_to_the_store(
    vendor: Org,
    listing: dict[str, Any],
    upload: Callable[..., Any],
    store: Any,
    stored_state: Any,
    chunked: bool,
) -> None:
    data = builders.relu_bytes(300_000)  # over one S3 part, so the stream really overlaps
    digest = hashlib.sha256(data).hexdigest()
    resp = upload(vendor, listing["id"], data, headers=content_digest(data), chunked=chunked)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.json["sha256"] == digest
    with store.open(content_key(digest)) as blob:
        assert blob.read() == data
    # The same bytes again, declared: found in the store, not written twice.
    before = stored_state()
    again = upload(vendor, listing["id"], data, "1.0.1", headers=content_digest(data))
    assert again.status_code == 201
    assert stored_state()[0] == before[0]


def test_a_blob_lost_to_a_concurrent_upload_is_not_committed(
    app: Any,
    vendor: Org,
    listing: dict[str, Any],
    upload: Callable[..., Any],
    store: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The upload's spool has no weights to put the blob back from; so when another upload of
    # the same bytes, failing, deletes the blob just before the commit, nothing is committed.
    from marketplace.audit import events as audit_events

    data = builders.relu_bytes(300_000)
    key = content_key(hashlib.sha256(data).hexdigest())
    record = audit_events.version_published

    def deleted_meanwhile(*args: Any, **kwargs: Any) -> Any:
        store.delete(key)
        return record(*args, **kwargs)

    monkeypatch.setattr(audit_events, "version_published", deleted_meanwhile)
    resp = upload(vendor, listing["id"], data, headers=content_digest(data))
    assert resp.status_code == 503, resp.get_data(as_text=True)
    assert resp.json["code"] == "storage_unavailable"
    session = app.extensions["db"].session()
    assert session.exec(select(ModelVersion)).all() == []
    session.close()
    monkeypatch.undo()
    again = upload(vendor, listing["id"], data, headers=content_digest(data))
    assert again.status_code == 201, again.get_data(as_text=True)
    with store.open(key) as blob:
        assert blob.read() == data


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda: (builders.relu_bytes(), content_digest(b"other bytes")), 400, "digest_mismatch"),
        (lambda: (builders.custom_domain(), content_digest(builders.custom_domain())), 422,
         "model_rejected"),
        (lambda: (os.urandom(5000), {"Content-Digest": "sha-256=:nope:"}), 400, "invalid_digest"),
        (lambda: (builders.relu_bytes(), {"Content-Digest": "sha-256=:AAAA:"}), 400,
         "invalid_digest"),
    ],
    ids=["mismatch", "rejected", "not-base64", "short"],
)  # fmt: skip
def test_declared_digest_refusals_store_nothing(
    vendor: Org,
    listing: dict[str, Any],
    upload: Callable[..., Any],
    stored_state: Any,
    make: Callable[[], tuple[bytes, dict[str, str]]],
    status: int,
    code: str,
) -> None:
    data, headers = make()
    before = stored_state()
    resp = upload(vendor, listing["id"], data, headers=headers)
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.json["code"] == code
    assert stored_state() == before
