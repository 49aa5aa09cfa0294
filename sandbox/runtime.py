"""onnxruntime as the sandbox runs it: session options and the pre-load model backstop.

Imported by workers (and by the benchmark, which must time raw onnxruntime with the very same
options); the supervisor in the web process never imports onnxruntime.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import onnx
import onnxruntime as ort

from sandbox.errors import ModelInvalid
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


def _graphs(model: onnx.ModelProto) -> Iterator[tuple[onnx.GraphProto | onnx.FunctionProto, int]]:
    """Every graph and function body in the model with its nesting depth, iteratively."""
    stack: list[tuple[onnx.GraphProto | onnx.FunctionProto, int]] = [(model.graph, 0)]
    stack += [(f, 0) for f in model.functions]
    for info in model.training_info:
        stack += [(info.initialization, 0), (info.algorithm, 0)]
    while stack:
        graph, depth = stack.pop()
        yield graph, depth
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append((attr.g, depth + 1))
                stack.extend((g, depth + 1) for g in attr.graphs)


def _tensors(graph: onnx.GraphProto | onnx.FunctionProto) -> Iterator[onnx.TensorProto]:
    if isinstance(graph, onnx.GraphProto):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices


def check_model(
    model_bytes: bytes,
    *,
    allowed_domains: Collection[str] = DEFAULT_DOMAINS,
    nodes_max: int,
    nesting_max: int = 16,
) -> None:
    """Refuse what must never reach onnxruntime: external data, foreign domains, huge graphs.

    This is a backstop behind the registry's inspection: a model that passed inspection
    passes here too.
    """
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:
        raise ModelInvalid(
            "The model is not a valid ONNX protobuf.", log_detail=repr(exc)
        ) from None
    local_functions = {(f.domain, f.name) for f in model.functions}
    allowed = set(allowed_domains)
    for opset in model.opset_import:
        if opset.domain not in allowed and not any(d == opset.domain for d, _ in local_functions):
            raise ModelInvalid(f"The operator domain {opset.domain[:100]!r} is not allowed.")
    nodes = 0
    for graph, depth in _graphs(model):
        if depth > nesting_max:
            raise ModelInvalid("The model's subgraphs are nested too deeply.")
        nodes += len(graph.node)
        if nodes > nodes_max:
            raise ModelInvalid(f"The model has more than {nodes_max} nodes.")
        for node in graph.node:
            if node.domain not in allowed and (node.domain, node.op_type) not in local_functions:
                raise ModelInvalid(f"The operator domain {node.domain[:100]!r} is not allowed.")
        for tensor in _tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
                raise ModelInvalid("The model references external tensor data.")
