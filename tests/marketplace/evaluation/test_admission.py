"""The node-wide evaluation cap: slots shared by processes, released when a call is done."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from marketplace.evaluation.admission import NodeAdmission, NodeBusy
from marketplace.evaluation.tensors import NPZ_MIME, encode_npz
from tests.sandbox import models as m


def _hold_one(directory, ready, done) -> None:
    slot = NodeAdmission(directory, 2).acquire()
    ready.set()
    done.wait(30)
    slot.release()


def test_slots_are_shared_by_the_processes_of_a_node(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold_one, args=(tmp_path, ready, done))
    other.start()
    try:
        assert ready.wait(30)
        admission = NodeAdmission(tmp_path, 2)
        mine = admission.acquire()
        with pytest.raises(NodeBusy):
            admission.acquire()
        mine.release()
        mine.release()  # idempotent
        admission.acquire().release()
    finally:
        done.set()
        other.join(30)
    # The other process has gone: its slot is free again.
    admission = NodeAdmission(tmp_path, 2)
    slots = [admission.acquire(), admission.acquire()]
    for slot in slots:
        slot.release()


@pytest.fixture
def app_config(app_config):
    app_config["EVAL_CONCURRENCY_MAX"] = 2
    return app_config


def test_calls_release_their_slot_and_a_full_node_answers_503(app, client, vendor, publish):
    p = publish(vendor, m.add())
    url = f"/api/v1/models/{p.model_id}/versions/{p.version}/evaluate"
    ones = np.ones((1, 3), np.float32)
    tensor = {"dtype": "float32", "shape": [1, 3], "data": [1.0, 1.0, 1.0]}
    headers = vendor.headers("sandbox:run")
    for _ in range(3):
        assert (
            client.post(
                url, json={"inputs": {"x": tensor, "y": tensor}}, headers=headers
            ).status_code
            == 200
        )
        npz = client.post(
            url,
            data=encode_npz({"x": ones, "y": ones}),
            content_type=NPZ_MIME,
            headers={**headers, "Accept": NPZ_MIME},
        )
        assert npz.status_code == 200 and npz.data  # the streamed body is read to its end
        bad = client.post(url, json={"inputs": {"x": tensor}}, headers=headers)
        assert bad.status_code == 422
    admission = app.extensions["eval_admission"]
    held = [admission.acquire(), admission.acquire()]
    busy = client.post(url, json={"inputs": {"x": tensor, "y": tensor}}, headers=headers)
    assert busy.status_code == 503
    assert busy.json["code"] == "evaluation_busy"
    assert busy.headers["Retry-After"] == "1"
    for slot in held:
        slot.release()
    assert (
        client.post(url, json={"inputs": {"x": tensor, "y": tensor}}, headers=headers).status_code
        == 200
    )
