"""POST /api/v1/models/{id}/versions/{v}/evaluate: codecs, errors, and who may call it."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

from marketplace.evaluation.tensors import NPZ_MIME, decode_npz, encode_npz
from marketplace.evaluation.views import NPZ_INLINE_BYTES_MAX
from model_registry.blobstore import content_key
from tests import onnx_models as m


def _url(p):
    return f"/api/v1/models/{p.model_id}/versions/{p.version}/evaluate"


def _tensor(array):
    return {"dtype": str(array.dtype), "shape": list(array.shape), "data": array.ravel().tolist()}


def test_owner_evaluates_with_json(client, vendor, publish):
    p = publish(vendor, m.add())
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    y = np.array([[10, 20, 30]], np.float32)
    resp = client.post(
        _url(p),
        json={"inputs": {"x": _tensor(x), "y": _tensor(y)}},
        headers=vendor.headers("sandbox:run"),
    )
    assert resp.status_code == 200, resp.json
    out = resp.json["outputs"]["z"]
    assert out["dtype"] == "float32" and out["shape"] == [2, 3]
    assert out["data"] == (x + y).ravel().tolist()
    assert resp.json["usage"]["kind"] == "owner"
    assert set(resp.json["timing"]) >= {"queue_ms", "run_ms"}


def test_owner_evaluates_with_npz_both_ways(client, vendor, publish):
    p = publish(vendor, m.matmul())
    x = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    resp = client.post(
        _url(p),
        data=encode_npz({"x": x}),
        content_type=NPZ_MIME,
        headers=vendor.headers("sandbox:run", Accept=NPZ_MIME),
    )
    assert resp.status_code == 200
    assert resp.mimetype == NPZ_MIME
    out = decode_npz(resp.data, elements_max=1000, bytes_max=10_000)
    np.testing.assert_allclose(out["y"], x @ m.MATMUL_W, rtol=1e-6)


@pytest.mark.parametrize(
    ("cols", "streamed"), [(16, False), (NPZ_INLINE_BYTES_MAX // 4, False), (1 << 19, True)]
)
def test_small_npz_answers_go_whole_and_large_ones_stream(
    app, client, vendor, publish, cols, streamed
):
    p = publish(vendor, m.expand(1, cols))
    resp = client.post(
        _url(p),
        data=encode_npz({"x": np.array([1.5], np.float32)}),
        content_type=NPZ_MIME,
        headers=vendor.headers("sandbox:run", Accept=NPZ_MIME),
        buffered=False,
    )
    assert resp.status_code == 200
    # A whole body has a length; a streamed one has none (the server sends it chunked).
    assert ("Content-Length" in resp.headers) is not streamed
    body = resp.get_data()
    if not streamed:
        assert int(resp.headers["Content-Length"]) == len(body)
    y = decode_npz(body, elements_max=1 << 20, bytes_max=1 << 22)["y"]
    assert y.shape == (1, cols) and bool((y == 1.5).all())
    assert "run_ms=" in resp.headers["X-Jishi-Timing"]
    resp.close()
    # The call's evaluation slot is free again either way.
    admission = app.extensions["eval_admission"]
    held = [admission.acquire() for _ in range(admission.slots)]
    for slot in held:
        slot.release()


@pytest.mark.parametrize(
    ("accept", "mimetype"),
    [
        (NPZ_MIME, NPZ_MIME),
        ("application/json", "application/json"),
        ("*/*", "application/json"),
        (f"application/json;q=0.5, {NPZ_MIME}", NPZ_MIME),
        (f"{NPZ_MIME};q=0.1, application/json", "application/json"),
        ("text/html", "application/json"),
    ],
)
def test_the_answer_follows_the_accept_header(client, vendor, publish, accept, mimetype):
    p = publish(vendor, m.matmul())
    x = np.ones((1, 4), dtype=np.float32)
    resp = client.post(
        _url(p),
        data=encode_npz({"x": x}),
        content_type=NPZ_MIME,
        headers=vendor.headers("sandbox:run", Accept=accept),
    )
    assert resp.status_code == 200
    assert resp.mimetype == mimetype


def test_non_finite_values_round_trip_through_json(client, vendor, publish):
    p = publish(vendor, m.add())
    body = {
        "inputs": {
            "x": {"dtype": "float32", "shape": [1, 3], "data": ["NaN", "Infinity", 1.0]},
            "y": {"dtype": "float32", "shape": [1, 3], "data": [1.0, 1.0, 1.0]},
        }
    }
    resp = client.post(_url(p), json=body, headers=vendor.headers("sandbox:run"))
    assert resp.status_code == 200
    assert resp.json["outputs"]["z"]["data"] == ["NaN", "Infinity", 2.0]


@pytest.mark.parametrize(
    ("inputs", "code"),
    [
        ({"x": {"dtype": "float32", "shape": [1, 3], "data": [1, 2]}}, "input_invalid"),
        ({"x": {"dtype": "object", "shape": [1], "data": [1]}}, "input_invalid"),
        ({"x": {"dtype": "float32", "shape": [1, -3], "data": []}}, "input_invalid"),
        ({"x": {"dtype": "float32", "shape": [100000, 100000], "data": []}}, "input_too_large"),
        ({"x": {"dtype": "float32", "shape": [1], "data": ["text"]}}, "input_invalid"),
        ({"x": {"dtype": "int8", "shape": [1], "data": [1000]}}, "input_invalid"),
        ({}, "input_invalid"),
        (
            {
                "x": {"dtype": "int64", "shape": [1, 3], "data": [1, 2, 3]},
                "y": {"dtype": "float32", "shape": [1, 3], "data": [1, 2, 3]},
            },
            "input_invalid",
        ),
        (
            {
                "x": {"dtype": "float32", "shape": [1, 3, 1], "data": [1, 2, 3]},
                "y": {"dtype": "float32", "shape": [1, 3], "data": [1, 2, 3]},
            },
            "input_invalid",
        ),
    ],
    ids=[
        "count",
        "dtype-object",
        "negative-dim",
        "huge-shape",
        "string",
        "overflow",
        "empty",
        "wrong-dtype",
        "wrong-rank",
    ],
)
def test_bad_inputs_are_422_with_a_code(client, vendor, publish, inputs, code):
    p = publish(vendor, m.add())
    resp = client.post(_url(p), json={"inputs": inputs}, headers=vendor.headers("sandbox:run"))
    assert resp.status_code == 422, resp.json
    assert resp.json["code"] == code


def test_deeply_nested_data_does_not_crash(client, vendor, publish):
    p = publish(vendor, m.add())
    raw = (
        '{"inputs": {"x": {"dtype": "float32", "shape": [1], "data": '
        + "[" * 50_000
        + "1"
        + "]" * 50_000
        + "}}}"
    )
    resp = client.post(
        _url(p), data=raw, content_type="application/json", headers=vendor.headers("sandbox:run")
    )
    assert resp.status_code == 422


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"not a zip", NPZ_MIME, 422, "input_invalid"),
        (b"x=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"[1]", "application/json", 422, "body_not_object"),
    ],
)
def test_bad_bodies(client, vendor, publish, data, content_type, status, code):
    p = publish(vendor, m.add())
    resp = client.post(
        _url(p), data=data, content_type=content_type, headers=vendor.headers("sandbox:run")
    )
    assert resp.status_code == status
    assert resp.json["code"] == code


_X_Y = '{"inputs": {"x": {"dtype": "float32", "shape": [1, 3], "data": [%s]}, "y": {"dtype": "float32", "shape": [1, 3], "data": [1, 1, 1]}}}'


@pytest.mark.parametrize(
    ("body", "status", "z"),
    [
        # Strict JSON, read by the fast parser.
        (_X_Y % "1, 2.5, -3e2", 200, [2.0, 3.5, -299.0]),
        # What Python's json writes for non-finite floats: not JSON, accepted all the same.
        (_X_Y % "NaN, Infinity, -Infinity", 200, ["NaN", "Infinity", "-Infinity"]),
        # The spelled-out strings the API documents for them.
        (_X_Y % '"NaN", 1, 1', 200, ["NaN", 2.0, 2.0]),
        # An integer past 64 bits is still a number to the standard decoder.
        (_X_Y % f"{2**70}, 0, 0", 200, [float(np.float32(2**70) + 1), 1.0, 1.0]),
        ((_X_Y % "1, 2, 3").encode("utf-16"), 200, [2.0, 3.0, 4.0]),
        (_X_Y % "1, 2, 3,", 422, "malformed_json"),
        ('{"inputs": 1, "inputs": 2', 422, "malformed_json"),
        ('"inputs"', 422, "body_not_object"),
    ],
    ids=[
        "strict",
        "nan-tokens",
        "nan-strings",
        "big-int",
        "utf-16",
        "trailing-comma",
        "cut",
        "string",
    ],
)
def test_json_bodies_are_read_as_the_standard_decoder_reads_them(
    client, vendor, publish, body, status, z
):
    p = publish(vendor, m.add())
    resp = client.post(
        _url(p),
        data=body if isinstance(body, bytes) else body.encode(),
        content_type="application/json",
        headers=vendor.headers("sandbox:run"),
    )
    assert resp.status_code == status, resp.json
    if status == 200:
        assert resp.json["outputs"]["z"]["data"] == z
    else:
        assert resp.json["code"] == z


def test_pickled_npz_is_refused(client, vendor, publish):
    p = publish(vendor, m.add())
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"evil": 1}], dtype=object))
    resp = client.post(
        _url(p),
        data=buffer.getvalue(),
        content_type=NPZ_MIME,
        headers=vendor.headers("sandbox:run"),
    )
    assert resp.status_code == 422
    assert resp.json["code"] == "input_invalid"


def test_oversized_body_is_413(app, client, vendor, publish):
    p = publish(vendor, m.add())
    limit = app.extensions["settings"].eval_body_bytes_max
    resp = client.post(
        _url(p),
        data=b"\0" * (limit + 1),
        content_type=NPZ_MIME,
        headers=vendor.headers("sandbox:run"),
    )
    assert resp.status_code == 413
    assert resp.json["code"] == "payload_too_large"


def _f32(*values):
    return {"dtype": "float32", "shape": [len(values)], "data": list(values)}


def _i64(*values):
    return {"dtype": "int64", "shape": [len(values)], "data": list(values)}


@pytest.mark.parametrize(
    ("builder", "inputs", "status", "code"),
    [
        (m.huge_loop, {"x": _f32(0.0)}, 504, "deadline_exceeded"),
        (m.long_matmul, {"x": _f32(1.0), "n": _i64(6_000)}, 504, "deadline_exceeded"),
        (m.expand_bomb, {"x": _f32(1.0)}, 422, "resource_exhausted"),
        (m.large_output, {"x": _f32(1.0), "rows": _i64(1 << 20)}, 422, "resource_exhausted"),
        (m.custom_domain, None, 422, "model_invalid"),
        (m.external_initializer, None, 422, "model_invalid"),
    ],
    ids=["loop", "long-kernel", "expand-bomb", "output-cap", "custom-domain", "external-data"],
)
def test_hostile_models_get_stable_codes_and_the_sandbox_recovers(
    client, vendor, publish, builder, inputs, status, code
):
    hostile = publish(vendor, builder())
    resp = client.post(
        _url(hostile),
        json={"inputs": inputs or {"x": _f32(1.0)}},
        headers=vendor.headers("sandbox:run"),
    )
    assert resp.status_code == status, resp.json
    assert resp.json["code"] == code
    body = resp.get_data(as_text=True)
    assert "onnxruntime" not in body.lower() and "/tmp" not in body
    benign = publish(vendor, m.add(), version="2.0.0")
    ok = client.post(
        _url(benign),
        json={
            "inputs": {
                "x": _tensor(np.ones((1, 3), np.float32)),
                "y": _tensor(np.ones((1, 3), np.float32)),
            }
        },
        headers=vendor.headers("sandbox:run"),
    )
    assert ok.status_code == 200
    assert ok.json["outputs"]["z"]["data"] == [2.0, 2.0, 2.0]


def test_model_missing_version_missing_and_revoked(client, vendor, publish, db_session):
    p = publish(vendor, m.add())
    headers = vendor.headers("sandbox:run")
    body = {
        "inputs": {
            "x": _tensor(np.zeros((1, 3), np.float32)),
            "y": _tensor(np.zeros((1, 3), np.float32)),
        }
    }
    assert (
        client.post(
            "/api/v1/models/999999/versions/1.0.0/evaluate", json=body, headers=headers
        ).json["code"]
        == "model_not_found"
    )
    assert (
        client.post(
            f"/api/v1/models/{p.model_id}/versions/9.9.9/evaluate", json=body, headers=headers
        ).json["code"]
        == "version_not_found"
    )
    from marketplace.catalog.models import ModelVersion
    from marketplace.db import utcnow

    row = db_session.get(ModelVersion, p.version_id)
    row.revoked_at = utcnow()
    db_session.add(row)
    db_session.commit()
    resp = client.post(_url(p), json=body, headers=headers)
    assert resp.status_code == 410
    assert resp.json["code"] == "version_revoked"


def test_scope_and_token_are_required(client, vendor, publish):
    p = publish(vendor, m.add())
    assert client.post(_url(p), json={"inputs": {}}).status_code == 401
    resp = client.post(_url(p), json={"inputs": {}}, headers=vendor.headers("models:read"))
    assert resp.status_code == 403
    assert resp.json["code"] == "insufficient_scope"


def test_sandbox_health_reports_protections(client):
    resp = client.get("/api/v1/sandbox/health")
    assert resp.status_code == 200
    body = resp.json
    assert body["available"] is True
    protections = body["protections"]
    for name in ("rlimits", "no_new_privs", "seccomp", "empty_cwd", "fds_closed"):
        assert protections[name] is True, name
    assert isinstance(body["quarantined"], int)


def test_suspended_listing_cannot_be_evaluated(client, vendor, publish, db_session):
    from marketplace.catalog.models import LISTING_SUSPENDED, Listing

    p = publish(vendor, m.add())
    listing = db_session.get(Listing, p.model_id)
    listing.status = LISTING_SUSPENDED
    db_session.add(listing)
    db_session.commit()
    body = {
        "inputs": {
            "x": _tensor(np.zeros((1, 3), np.float32)),
            "y": _tensor(np.zeros((1, 3), np.float32)),
        }
    }
    resp = client.post(_url(p), json=body, headers=vendor.headers("sandbox:run"))
    assert resp.status_code == 403
    assert resp.json["code"] == "listing_suspended"


def test_an_artifact_altered_in_the_store_is_never_run(app, client, vendor, publish):
    """The filesystem store's bytes were checked by length only: a changed byte ran."""
    # Bytes no other test publishes: a warm worker for them would never read the store.
    model = m.identity([1, 3], name="x_altered_in_store")
    p = publish(vendor, model)
    store = app.extensions["blob_store"]
    path = store.root / content_key(hashlib.sha256(model).hexdigest())
    altered = bytearray(path.read_bytes())
    altered[-1] ^= 0x01
    path.write_bytes(bytes(altered))
    body = {"inputs": {"x_altered_in_store": _tensor(np.zeros((1, 3), np.float32))}}
    resp = client.post(_url(p), json=body, headers=vendor.headers("sandbox:run"))
    assert resp.status_code == 503, resp.get_data(as_text=True)
    assert resp.json["code"] == "storage_unavailable"
