"""The one ONNX walk and the domain rule: inspection and the worker's load path agree.

Every load-time hostile model of the shared set goes through both checks: the registry's
inspection must refuse it with its finding code, and the worker's load path (the same
`load_session` a worker runs, here in-process) must refuse it before a session exists.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import onnx
import pytest

from model_registry.inspection import inspect_model
from sandbox import onnxwalk
from sandbox.errors import SandboxError
from sandbox.runtime import load_session, registered_domains
from tests import onnx_models as models

HOSTILE = sorted(models.LOAD_TIME_HOSTILE.items())


def _load(data: bytes) -> None:
    """The worker's load path, on a thread of its own: building a session sets the calling
    thread's denormals-as-zero flag, which must not leak into the test process's main thread."""
    failures: list[BaseException] = []

    def load() -> None:
        try:
            load_session(data, nodes_max=100_000, constant_folding_bytes_max=16 << 20)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=load)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


@pytest.mark.parametrize(("build", "code"), [v for _, v in HOSTILE], ids=[k for k, _ in HOSTILE])
def test_inspection_refuses_every_load_time_hostile_model(
    build: Callable[[], bytes], code: str
) -> None:
    report = inspect_model(build())
    assert not report.ok
    assert code in [f.code for f in report.findings if f.severity == "error"], report.findings


@pytest.mark.parametrize(("build", "code"), [v for _, v in HOSTILE], ids=[k for k, _ in HOSTILE])
def test_the_load_path_refuses_every_load_time_hostile_model(
    build: Callable[[], bytes], code: str
) -> None:
    with pytest.raises(SandboxError) as exc:
        _load(build())
    assert exc.value.code == "model_invalid"
    assert "/etc/passwd" not in exc.value.detail


@pytest.mark.parametrize(
    "build",
    [models.add, models.matmul, models.relu_bytes, models.ml_model, models.local_function],
)
def test_both_checks_accept_benign_models(build: Callable[[], bytes]) -> None:
    data = build()
    assert inspect_model(data).ok
    _load(data)


def test_a_function_may_not_claim_a_contrib_kernel() -> None:
    """The issue's model: onnxruntime would run its Gelu kernel, not the identity function."""
    report = inspect_model(models.function_claims_domain("com.microsoft", "Gelu"))
    assert [f.code for f in report.findings] == ["function_domain_reserved"]
    with pytest.raises(SandboxError) as exc:
        _load(models.function_claims_domain("com.microsoft", "Gelu"))
    assert "reserved" in exc.value.detail


def test_the_reserved_prefixes_cover_every_domain_the_installed_runtime_registers() -> None:
    # Inspection runs without onnxruntime, so the static prefixes must cover what it registers;
    # an upgrade that adds a domain of its own fails here first.
    registered = registered_domains()
    assert {"com.microsoft", "com.microsoft.nchwc"} <= registered
    assert all(onnxwalk.is_reserved_domain(domain) for domain in registered)


def test_the_walk_reaches_function_defaults_training_graphs_and_deep_subgraphs() -> None:
    def externals(data: bytes) -> list[str]:
        model = onnx.ModelProto.FromString(data)
        return [
            item.where
            for item in onnxwalk.walk(model, depth_max=4)
            if isinstance(item, onnxwalk.TensorVisit) and onnxwalk.is_external(item.tensor)
        ]

    assert externals(models.external_in_function_default()) == ["function Ident"]
    assert externals(models.external_in_training_info()) == ["training_info#0/t"]
    assert externals(models.external_in_subgraph()) == ["If#0/If#0/Constant#0"] * 4
    deep = onnx.ModelProto.FromString(models.nested_ifs(6))
    too_deep = [i for i in onnxwalk.walk(deep, depth_max=2) if isinstance(i, onnxwalk.TooDeep)]
    assert too_deep and all(i.depth == 3 for i in too_deep)
