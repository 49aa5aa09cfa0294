"""onnxruntime as the sandbox runs it: session options and the pre-load model backstop.

Imported by workers (and by the benchmark, which must time raw onnxruntime with the very same
options); the supervisor in the web process never imports onnxruntime.
"""

from __future__ import annotations

import functools
from collections.abc import Collection

import onnx
import onnxruntime as ort

from sandbox.errors import ModelInvalid, ResourceExhausted, SandboxError
from sandbox.onnxwalk import (
    DomainRefusal,
    DomainRule,
    NodeVisit,
    TensorVisit,
    TooDeep,
    is_external,
    walk,
)
from sandbox.protocol import DEFAULT_DOMAINS


def session_options(*, constant_folding_bytes_max: int) -> ort.SessionOptions:
    """Session options for untrusted models: one thread, no spinning, bounded folding.

    The CPU arena is off: a warm worker would otherwise keep its peak arena for ever, and with
    plain malloc the worker's RLIMIT_AS bounds every allocation the model makes.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    # Constant folding runs at load on the model's own constants: without a cap a
    # ConstantOfShape/Expand/Tile bomb is materialised while the session is built.
    options.add_session_config_entry(
        "optimization.constant_folding_max_output_size_in_bytes", str(constant_folding_bytes_max)
    )
    return options


@functools.cache
def registered_domains() -> frozenset[str]:
    """Every operator domain the installed onnxruntime has kernels or schemas for."""
    try:
        from onnxruntime.capi import _pybind_state

        return frozenset(schema.domain for schema in _pybind_state.get_all_operator_schema())
    except (ImportError, AttributeError, RuntimeError):
        # A build without schemas: the static reserved prefixes still cover its own domains.
        return frozenset()


def check_model(
    model_bytes: bytes,
    *,
    allowed_domains: Collection[str] = DEFAULT_DOMAINS,
    nodes_max: int,
    nesting_max: int = 16,
) -> None:
    """Refuse what must never reach onnxruntime: external data, foreign domains, huge graphs.

    This is a backstop behind the registry's inspection, over the same walk
    (`sandbox.onnxwalk`): a model that passed inspection passes here too.
    """
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:
        raise ModelInvalid(
            "The model is not a valid ONNX protobuf.", log_detail=repr(exc)
        ) from None
    try:
        rule = DomainRule.for_model(model, allowed_domains, registered_domains())
    except DomainRefusal as refusal:
        raise ModelInvalid(refusal.message) from None
    nodes = 0
    for item in walk(model, depth_max=nesting_max):
        if isinstance(item, NodeVisit):
            nodes += 1
            if nodes > nodes_max:
                raise ModelInvalid(f"The model has more than {nodes_max} nodes.")
            try:
                rule.check_node(item.node, item.where)
            except DomainRefusal as refusal:
                raise ModelInvalid(refusal.message) from None
        elif isinstance(item, TooDeep):
            raise ModelInvalid("The model's subgraphs are nested too deeply.")
        else:
            parts = (
                (item.tensor,)
                if isinstance(item, TensorVisit)
                else (item.sparse.values, item.sparse.indices)
            )
            if any(is_external(part) for part in parts):
                raise ModelInvalid("The model references external tensor data.")


def _load_error(exc: BaseException) -> SandboxError:
    text = str(exc)
    if isinstance(exc, MemoryError) or "alloc" in text.lower():
        return ResourceExhausted("Loading the model exceeded the memory limit.", log_detail=text)
    return ModelInvalid("onnxruntime could not load the model.", log_detail=text)


def load_session(
    model_bytes: bytes,
    *,
    allowed_domains: Collection[str] = DEFAULT_DOMAINS,
    nodes_max: int,
    constant_folding_bytes_max: int,
) -> ort.InferenceSession:
    """Check the model (:func:`check_model`) and build its session, as a worker does.

    Raises `ModelInvalid` or `ResourceExhausted`; onnxruntime's own text only in `log_detail`.
    """
    check_model(model_bytes, allowed_domains=allowed_domains, nodes_max=nodes_max)
    options = session_options(constant_folding_bytes_max=constant_folding_bytes_max)
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise _load_error(exc) from None
