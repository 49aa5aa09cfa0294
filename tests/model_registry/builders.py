"""Small ONNX models for tests, valid and hostile, built with ``onnx.helper``."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _model(graph: onnx.GraphProto, **kw: object) -> onnx.ModelProto:
    kw.setdefault("opset_imports", [helper.make_opsetid("", OPSET)])
    model = helper.make_model(graph, **kw)  # type: ignore[arg-type]
    model.ir_version = IR_VERSION
    return model


def relu_model(width: int = 4) -> onnx.ModelProto:
    """``y = relu(x @ W + b)`` with a symbolic batch dimension."""
    w = numpy_helper.from_array(np.ones((width, 2), dtype=np.float32), "W")
    b = numpy_helper.from_array(np.zeros((2,), dtype=np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[w, b],
    )
    return _model(graph)


def relu_bytes(width: int = 4) -> bytes:
    return relu_model(width).SerializeToString()


def _external(tensor: TensorProto, location: str) -> TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def external_initializer(location: str) -> bytes:
    model = relu_model()
    _external(model.graph.initializer[0], location)
    return model.SerializeToString()


def external_constant(location: str, sparse: bool = False) -> bytes:
    """A Constant node whose ``value`` (or ``sparse_value``) tensor is external."""
    if sparse:
        values = _external(numpy_helper.from_array(np.ones(2, dtype=np.float32), "v"), location)
        indices = numpy_helper.from_array(np.array([0, 3], dtype=np.int64), "i")
        attr = helper.make_attribute(
            "sparse_value", helper.make_sparse_tensor(values, indices, [4])
        )
        node = helper.make_node("Constant", [], ["c"])
        node.attribute.append(attr)
    else:
        value = _external(numpy_helper.from_array(np.ones(4, dtype=np.float32), "c"), location)
        node = helper.make_node("Constant", [], ["c"], value=value)
    graph = helper.make_graph(
        [node, helper.make_node("Add", ["x", "c"], ["y"])],
        "const",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return _model(graph).SerializeToString()


def external_sparse_initializer(location: str) -> bytes:
    values = _external(numpy_helper.from_array(np.ones(2, dtype=np.float32), "sv"), location)
    indices = numpy_helper.from_array(np.array([0, 1], dtype=np.int64), "si")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "sparse",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        sparse_initializer=[sparse],
    )
    return _model(graph).SerializeToString()


def external_in_subgraph(location: str) -> bytes:
    """An If node whose then-branch holds a Constant with external data."""
    value = _external(numpy_helper.from_array(np.ones(1, dtype=np.float32), "k"), location)
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=value)],
        "then",
        [],
        [helper.make_tensor_value_info("k", TensorProto.FLOAT, [1])],
    )
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["k2"], value_floats=[0.0])],
        "else",
        [],
        [helper.make_tensor_value_info("k2", TensorProto.FLOAT, [1])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)],
        "if",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return _model(graph).SerializeToString()


def custom_domain() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Evil", ["x"], ["y"], domain="com.example.custom")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return _model(
        graph,
        opset_imports=[
            helper.make_opsetid("", OPSET),
            helper.make_opsetid("com.example.custom", 1),
        ],
    ).SerializeToString()


def nested_ifs(depth: int) -> bytes:
    """``depth`` If nodes each nested in the previous one's branches."""
    inner = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["out0"])],
        "leaf",
        [],
        [helper.make_tensor_value_info("out0", TensorProto.FLOAT, [1])],
    )
    for level in range(1, depth + 1):
        node = helper.make_node(
            "If", ["cond"], [f"out{level}"], then_branch=inner, else_branch=inner
        )
        inner = helper.make_graph(
            [node],
            f"level{level}",
            [],
            [helper.make_tensor_value_info(f"out{level}", TensorProto.FLOAT, [1])],
        )
    graph = helper.make_graph(
        list(inner.node),
        "top",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        list(inner.output),
    )
    return _model(graph).SerializeToString()


def declared_huge_initializer() -> bytes:
    """An initializer that declares 2**40 floats but carries four bytes."""
    model = relu_model()
    tensor = model.graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend([1 << 20, 1 << 20])
    tensor.raw_data = b"\0\0\0\0"
    return model.SerializeToString()


def many_nodes(count: int) -> bytes:
    nodes = [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"]) for i in range(count)]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(f"t{count}", TensorProto.FLOAT, [1])],
    )
    return _model(graph).SerializeToString()


def ml_model() -> bytes:
    """An ``ai.onnx.ml`` operator: allowed by default."""
    graph = helper.make_graph(
        [helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml", norm="L2")],
        "ml",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    return _model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", 3)],
    ).SerializeToString()


def checker_invalid() -> bytes:
    """Parses, but the Relu consumes a tensor nothing produces."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return _model(graph).SerializeToString()


def external_in_function_default(location: str) -> bytes:
    """A model-local function whose default attribute value is an external tensor."""
    model = relu_model()
    value = _external(numpy_helper.from_array(np.ones(1, dtype=np.float32), "d"), location)
    function = helper.make_function(
        "local.fn",
        "Ident",
        ["a"],
        ["b"],
        [helper.make_node("Identity", ["a"], ["b"])],
        [helper.make_opsetid("", OPSET)],
    )
    function.attribute_proto.append(helper.make_attribute("bias", value))
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local.fn", 1))
    return model.SerializeToString()


def external_in_training_info(location: str) -> bytes:
    model = relu_model()
    training = model.training_info.add()
    weight = _external(numpy_helper.from_array(np.ones(2, dtype=np.float32), "t"), location)
    training.initialization.CopyFrom(helper.make_graph([], "init", [], [], initializer=[weight]))
    return model.SerializeToString()
