"""The node-wide evaluation cap: slots shared by processes, released when a call is done."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from marketplace.evaluation.admission import NodeAdmission, NodeBusy
from marketplace.evaluation.tensors import NPZ_MIME, encode_npz
from tests import onnx_models as m

_HOLDER = """
import sys
from pathlib import Path
from marketplace.evaluation.admission import NodeAdmission
slot = NodeAdmission(Path(sys.argv[1]), 2).acquire()
print("held", flush=True)
sys.stdin.readline()
slot.release()
"""


def test_slots_are_shared_by_the_processes_of_a_node(tmp_path):
    other = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        admission = NodeAdmission(tmp_path, 2)
        mine = admission.acquire()
        with pytest.raises(NodeBusy):
            admission.acquire()
        mine.release()
        mine.release()  # idempotent
        admission.acquire().release()
    finally:
        other.kill()  # a process that dies releases its slot with it
        other.wait(30)
        for stream in (other.stdin, other.stdout):
            if stream is not None:
                stream.close()
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
