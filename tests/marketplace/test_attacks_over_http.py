"""The sandbox- and registry-side attacks on a running marketplace, replayed over real HTTP.

Each test is one attack as an outsider made it against a live app (a werkzeug server on a
fresh database, its own sandbox pool and inspectors), and asserts that it no longer works.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from tests import onnx_models as models
from tests.conftest import LiveServer
from tests.marketplace.live import Vendor

F32 = np.float32


@pytest.mark.parametrize(
    ("domain", "op_type"), [("com.microsoft", "Gelu"), ("com.microsoft.nchwc", "ReorderInput")]
)
def test_a_local_function_cannot_smuggle_in_a_runtime_kernel(
    live_server: Callable[..., LiveServer], domain: str, op_type: str
) -> None:
    server = live_server()
    vendor = Vendor(server)
    model = models.function_claims_domain(domain, op_type)
    refused = vendor.upload(model, "1.0.0")
    assert refused.status_code == 422, refused.text
    assert [f["code"] for f in refused.json()["findings"]] == ["function_domain_reserved"]
    # A version stored before inspection knew better is refused again when a worker loads it.
    vendor.plant_version(model, "0.9.0")
    ran = vendor.evaluate(vendor.model_id, "0.9.0", x=np.ones((1, 8, 2, 2), F32))
    assert ran.status_code == 422, ran.text
    assert ran.json()["code"] == "model_invalid"
    # A function in the vendor's own domain is still fine, over the same routes.
    accepted = vendor.upload(models.local_function(), "1.1.0")
    assert accepted.status_code == 201, accepted.text
    doubled = vendor.evaluate(vendor.model_id, "1.1.0", x=np.arange(4, dtype=F32))
    assert doubled.status_code == 200, doubled.text
    assert doubled.json()["outputs"]["y"]["data"] == [0.0, 2.0, 4.0, 6.0]


def test_external_data_in_a_function_default_is_refused_at_load(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server()
    vendor = Vendor(server)
    model = models.external_in_function_default("/etc/passwd")
    refused = vendor.upload(model, "1.0.0")
    assert refused.status_code == 422, refused.text
    assert [f["code"] for f in refused.json()["findings"]] == ["external_data"]
    vendor.plant_version(model, "0.9.0")
    ran = vendor.evaluate(vendor.model_id, "0.9.0", x=np.ones((1, 4), F32))
    assert ran.status_code == 422, ran.text
    assert ran.json()["code"] == "model_invalid"
    assert ran.json()["detail"] == "The model references external tensor data."
