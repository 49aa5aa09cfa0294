"""What a chunk keeps of its samples' outputs: bounded per sample, one shape per chunk, and
never under the names the results archive keeps for itself. A sample refused for its outputs
fails alone and costs nothing."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import sqlalchemy as sa
from onnx import TensorProto, helper, numpy_helper

from tests import onnx_models as m
from tests.conftest import Org
from tests.marketplace.jobs.harness import Node, npz

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", m.OPSET)])
    model.ir_version = m.IR_VERSION
    return model.SerializeToString()


def _slice_by_input() -> bytes:
    """``y = x[:, 0:e]``: each sample's output is as wide as its own ``e`` says."""
    return _model(
        [helper.make_node("Slice", ["x", "starts", "e", "axes"], ["y"])],
        [
            helper.make_tensor_value_info("x", F, ["N", 10]),
            helper.make_tensor_value_info("e", I64, ["N"]),
        ],
        [helper.make_tensor_value_info("y", F, ["N", "K"])],
        [
            numpy_helper.from_array(np.array([0], np.int64), "starts"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
        ],
    )


def _trial(node: Node, vendor: Org, buyer: Org, model: bytes) -> tuple[int, int]:
    """A published model and the buyer's trial of it; (model id, trial licence id)."""
    published = node.publish_model(vendor, model)
    offer = node.offer(
        vendor, published["model_id"], kind="perpetual", price_minor=1, trial_calls=100
    )
    return int(published["model_id"]), int(node.trial(buyer, offer)["id"])


def _finished_job(node: Node, buyer: Org, model_ids: list[int], **arrays: Any) -> dict[str, Any]:
    """A job of the dataset ``arrays`` against the models' first versions, a sample per call,
    once it has finished."""
    dataset = node.dataset(buyer, npz(**arrays)).json
    resp = node.job(
        buyer,
        dataset_id=dataset["id"],
        versions=[{"model_id": model_id, "version": "1.0.0"} for model_id in model_ids],
        batch_size=1,
    )
    assert resp.status_code == 201, resp.json
    return node.wait(buyer, resp.json["id"])


def _results(node: Node, buyer: Org, job_id: int, version_id: int) -> Any:
    resp = node.client.get(
        f"/api/v1/evaluation-jobs/{job_id}/results",
        query_string={"version": version_id},
        headers=buyer.headers(),
    )
    assert resp.status_code == 200, resp.data[:300]
    return resp.data


def test_a_sample_whose_outputs_pass_the_bound_fails_and_costs_nothing(node: Node) -> None:
    bound = node.app.extensions["settings"].job_sample_outputs_bytes_max
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    # One float past the bound per sample (a model of that width is far under the per-call
    # output cap), beside a model whose outputs fit.
    wide_id, wide_trial = _trial(node, vendor, buyer, m.expand(1, bound // 4 + 1))
    narrow_id, narrow_trial = _trial(node, vendor, buyer, m.expand(1, 16))
    samples = 12
    job = _finished_job(node, buyer, [wide_id, narrow_id], x=np.ones(samples, np.float32))
    wide, narrow = job["versions"]
    assert (wide["samples_done"], wide["samples_failed"]) == (0, samples), node.chunks(job["id"])
    assert wide["failures"] == {"sample_outputs_too_large": samples}
    assert wide["samples_charged"] == 0
    assert node.licence(buyer, wide_trial)["calls_remaining"] == 100
    with node.app.extensions["db"].engine.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT count(output_key) FROM evaluation_chunks WHERE job_version_id IN "
                "(SELECT id FROM evaluation_job_versions WHERE job_id = :job AND position = 0)"
            ),
            {"job": job["id"]},
        ).scalar_one()
    assert stored == 0  # nothing of the refused outputs reached the blob store

    assert (narrow["samples_done"], narrow["failures"]) == (samples, {})
    assert narrow["samples_charged"] == samples
    assert node.licence(buyer, narrow_trial)["calls_remaining"] == 100 - samples
    arrays = np.load(io.BytesIO(_results(node, buyer, job["id"], narrow["version_id"])))
    assert arrays["y"].shape == (samples, 16) and arrays["jishi.ok"].all()


def test_samples_whose_outputs_change_shape_fail_alone_and_the_rest_are_recorded(
    node: Node,
) -> None:
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    model_id, trial = _trial(node, vendor, buyer, _slice_by_input())
    x = np.arange(1, 41, dtype=np.float32).reshape(4, 10)
    job = _finished_job(node, buyer, [model_id], x=x, e=np.array([1, 2, 3, 4], np.int64))
    (version,) = job["versions"]
    assert (version["samples_done"], version["samples_failed"]) == (1, 3), node.chunks(job["id"])
    assert version["failures"] == {"output_shape_varies": 3}
    assert version["samples_charged"] == 1
    assert node.licence(buyer, trial)["calls_remaining"] == 99
    arrays = np.load(io.BytesIO(_results(node, buyer, job["id"], version["version_id"])))
    assert arrays["y"].shape == (4, 1)
    np.testing.assert_array_equal(arrays["y"][:, 0], [1.0, 0.0, 0.0, 0.0])
    assert list(arrays["jishi.ok"]) == [True, False, False, False]


def test_outputs_named_like_the_results_arrays_are_refused_at_upload(node: Node) -> None:
    vendor = node.org(["vendor"])
    listing = node.client.post(
        "/api/v1/models",
        json={"name": "Reserved outputs", "task": "classification"},
        headers=vendor.headers(),
    )
    assert listing.status_code == 201, listing.json
    for name in ("jishi.ok", "jishi.sample"):
        resp = node.client.post(
            f"/api/v1/models/{listing.json['id']}/versions?version=1.0.0",
            data=m.renamed_outputs(["y", name]),
            content_type="application/octet-stream",
            headers=vendor.headers(),
        )
        assert (resp.status_code, resp.json["code"]) == (422, "model_rejected"), resp.json
        assert [f["code"] for f in resp.json["findings"]] == ["tensor_name_reserved"]


def _output_keys(node: Node, job_id: int) -> list[str]:
    with node.app.extensions["db"].engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT output_key FROM evaluation_chunks WHERE job_id = :job "
                    "AND output_key IS NOT NULL ORDER BY chunk_index"
                ),
                {"job": job_id},
            ).scalars()
        )


def test_a_version_that_names_an_output_like_a_results_array_runs_nothing(node: Node) -> None:
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    model_id, trial = _trial(node, vendor, buyer, m.expand(1, 4))
    # A version published before such names were refused at upload.
    with node.app.extensions["db"].engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE model_versions SET outputs = :outputs WHERE listing_id = :listing"),
            {
                "outputs": '[{"name": "jishi.ok", "dtype": "float32", "shape": [1, 4]}]',
                "listing": model_id,
            },
        )
    job = _finished_job(node, buyer, [model_id], x=np.ones(5, np.float32))
    (version,) = job["versions"]
    assert (version["samples_done"], version["failures"]) == (0, {"tensor_name_reserved": 5})
    assert version["samples_charged"] == 0
    assert node.licence(buyer, trial)["calls_remaining"] == 100
    assert _output_keys(node, job["id"]) == []


def test_the_results_archive_never_holds_a_member_twice(node: Node) -> None:
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    model_id, _trial_id = _trial(node, vendor, buyer, m.expand(1, 4))
    job = _finished_job(node, buyer, [model_id], x=np.ones(3, np.float32))
    (version,) = job["versions"]
    # A chunk recorded before reserved names were refused holds a model output named like the
    # results' own arrays.
    (key,) = _output_keys(node, job["id"])
    legacy = npz(
        y=np.ones((3, 4), np.float32),
        **{"jishi.ok": np.ones(3, np.bool_), "jishi.sample": np.full(3, 7, np.int64)},
    )
    node.app.extensions["blob_store"].put_stream(key, io.BytesIO(legacy), size_max=len(legacy))
    body = _results(node, buyer, job["id"], version["version_id"])
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert sorted(names) == ["jishi.ok.npy", "jishi.sample.npy", "y.npy"]
    arrays = np.load(io.BytesIO(body))
    assert list(arrays["jishi.sample"]) == [0, 1, 2]
    assert arrays["jishi.ok"].all() and arrays["y"].shape == (3, 4)
