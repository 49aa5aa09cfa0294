"""The ONNX models the tests run, benign and hostile, built with ``onnx.helper``.

One set for the registry's inspection, the sandbox's load-time backstop and the API tests:
``relu_*`` and the small arithmetic models are benign; ``external_*``, ``custom_domain``,
``function_claims_domain`` and the declared-size models are refused when a model is loaded or
inspected (``LOAD_TIME_HOSTILE`` lists them with the inspection's finding code); the bombs,
loops and long kernels are valid models that turn hostile only when they run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
F = TensorProto.FLOAT
I64 = TensorProto.INT64
# Where hostile tensors claim their data lives.
SECRET_PATH = "/etc/passwd"


def _model(graph: onnx.GraphProto, **kw: object) -> onnx.ModelProto:
    kw.setdefault("opset_imports", [helper.make_opsetid("", OPSET)])
    model = helper.make_model(graph, **kw)  # type: ignore[arg-type]
    model.ir_version = IR_VERSION
    return model


def _bytes(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    *,
    initializers: list[onnx.TensorProto] | None = None,
    sparse: list[onnx.SparseTensorProto] | None = None,
    extra_opsets: list[onnx.OperatorSetIdProto] | None = None,
    functions: list[onnx.FunctionProto] | None = None,
) -> bytes:
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, initializer=initializers or [], sparse_initializer=sparse
    )
    opsets = [helper.make_opsetid("", OPSET), *(extra_opsets or [])]
    return _model(graph, opset_imports=opsets, functions=functions or []).SerializeToString()


def _vi(name: str, elem: int, shape: list[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


# --- benign ----------------------------------------------------------------------------------
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


def add() -> bytes:
    """z = x + y with x: [N, 3], y: [1, 3]."""
    return _bytes(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        [_vi("x", F, ["N", 3]), _vi("y", F, [1, 3])],
        [_vi("z", F, ["N", 3])],
    )


MATMUL_W = np.arange(8, dtype=np.float32).reshape(4, 2) / 8


def matmul() -> bytes:
    """y = x @ W with x: [N, 4] and a fixed W."""
    return _bytes(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_vi("x", F, ["N", 4])],
        [_vi("y", F, ["N", 2])],
        initializers=[numpy_helper.from_array(MATMUL_W, "w")],
    )


def identity(shape: list[int | str], name: str = "x", elem: int = F, output: str = "y") -> bytes:
    return _bytes(
        [helper.make_node("Identity", [name], [output])],
        [_vi(name, elem, shape)],
        [_vi(output, elem, shape)],
    )


# --- refused at load: external data, foreign domains, declared sizes --------------------------


def _external(tensor: TensorProto, location: str = SECRET_PATH) -> TensorProto:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _four_floats(name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(4, dtype=np.float32), name)


def external_initializer(location: str = SECRET_PATH) -> bytes:
    model = relu_model()
    _external(model.graph.initializer[0], location)
    return model.SerializeToString()


def external_constant(location: str = SECRET_PATH, sparse: bool = False) -> bytes:
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


def external_sparse_initializer(location: str = SECRET_PATH) -> bytes:
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


def external_in_subgraph(location: str = SECRET_PATH) -> bytes:
    """An If whose branches hide a Constant with external data two levels down."""
    leaf = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=_external(_four_floats("w"), location))],
        "leaf",
        [],
        [_vi("w", F, [4])],
    )
    inner_if = helper.make_node("If", ["c"], ["w"], then_branch=leaf, else_branch=leaf)
    branch = helper.make_graph([inner_if], "branch", [], [_vi("w", F, [4])])
    outer_if = helper.make_node("If", ["c"], ["w"], then_branch=branch, else_branch=branch)
    return _bytes(
        [outer_if, helper.make_node("Add", ["x", "w"], ["y"])],
        [_vi("x", F, [4]), _vi("c", TensorProto.BOOL, [])],
        [_vi("y", F, [4])],
    )


def custom_domain(domain: str = "com.example.custom") -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Evil", ["x"], ["y"], domain=domain)],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return _model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(domain, 1)],
    ).SerializeToString()


def function_claims_domain(domain: str = "com.microsoft", op_type: str = "Gelu") -> bytes:
    """A node of a runtime-owned domain beside a model-local function of the same domain and
    name that only copies its input: onnxruntime would run its own kernel, not the function."""
    function = helper.make_function(
        domain,
        op_type,
        ["X"],
        ["Y"],
        [helper.make_node("Identity", ["X"], ["Y"])],
        [helper.make_opsetid("", OPSET)],
    )
    return _bytes(
        [helper.make_node(op_type, ["x"], ["y"], domain=domain)],
        [_vi("x", F, [1, 8, 2, 2])],
        [_vi("y", F, [1, 8, 2, 2])],
        extra_opsets=[helper.make_opsetid(domain, 1)],
        functions=[function],
    )


def local_function() -> bytes:
    """A node that calls a model-local function in the vendor's own domain: allowed."""
    function = helper.make_function(
        "com.vendor.local",
        "Double",
        ["X"],
        ["Y"],
        [helper.make_node("Add", ["X", "X"], ["Y"])],
        [helper.make_opsetid("", OPSET)],
    )
    return _bytes(
        [helper.make_node("Double", ["x"], ["y"], domain="com.vendor.local")],
        [_vi("x", F, [4])],
        [_vi("y", F, [4])],
        extra_opsets=[helper.make_opsetid("com.vendor.local", 1)],
        functions=[function],
    )


def nested_ifs(depth: int) -> bytes:
    """``depth`` If nodes each nested in the previous one's then-branch (else: a leaf)."""
    leaf = inner = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["out0"])],
        "leaf",
        [],
        [helper.make_tensor_value_info("out0", TensorProto.FLOAT, [1])],
    )
    for level in range(1, depth + 1):
        node = helper.make_node(
            "If", ["cond"], [f"out{level}"], then_branch=inner, else_branch=leaf
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


def declared_without_data(elements: int = 400_000_000) -> bytes:
    """A valid model plus an unused initializer that declares ``elements`` floats and carries
    no values at all."""
    model = relu_model()
    empty = model.graph.initializer.add()
    empty.name, empty.data_type = "unused", TensorProto.FLOAT
    empty.dims.append(elements)
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


def external_in_function_default(location: str = SECRET_PATH) -> bytes:
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


def external_in_training_info(location: str = SECRET_PATH) -> bytes:
    model = relu_model()
    training = model.training_info.add()
    weight = _external(numpy_helper.from_array(np.ones(2, dtype=np.float32), "t"), location)
    training.initialization.CopyFrom(helper.make_graph([], "init", [], [], initializer=[weight]))
    return model.SerializeToString()


# --- valid models that turn hostile when they run ------------------------------------------


def expand(rows: int, cols: int) -> bytes:
    """One Expand node: a 4-byte input becomes a [rows, cols] float32 output."""
    return _bytes(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        [_vi("x", F, [1])],
        [_vi("y", F, [rows, cols])],
        initializers=[_i64("shape", [rows, cols])],
    )


def renamed_outputs(names: list[str]) -> bytes:
    """x copied to one output per name (vendor-chosen names, however hostile)."""
    return _bytes(
        [helper.make_node("Identity", ["x"], [name]) for name in names],
        [_vi("x", F, [2])],
        [_vi(name, F, [2]) for name in names],
    )


def constant_of_shape_bomb() -> bytes:
    """A 64 Gi-element tensor whose shape comes from an input."""
    return _bytes(
        [helper.make_node("ConstantOfShape", ["shape"], ["y"])],
        [_vi("shape", I64, [2])],
        [_vi("y", F, None)],
    )


def expand_bomb() -> bytes:
    return _bytes(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        [_vi("x", F, [1])],
        [_vi("y", F, None)],
        initializers=[_i64("shape", [1 << 18, 1 << 18])],
    )


def tile_bomb() -> bytes:
    return _bytes(
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        [_vi("x", F, [1, 1])],
        [_vi("y", F, None)],
        initializers=[_i64("repeats", [1 << 18, 1 << 18])],
    )


def resize_bomb() -> bytes:
    scales = numpy_helper.from_array(np.array([1, 1, 1e5, 1e5], dtype=np.float32), "scales")
    return _bytes(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
        [_vi("x", F, [1, 1, 2, 2])],
        [_vi("y", F, None)],
        initializers=[scales],
    )


def huge_loop() -> bytes:
    """A Loop with a 2**62 trip count whose body adds one to a scalar."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "body",
        [_vi("i", I64, []), _vi("cond_in", TensorProto.BOOL, []), _vi("acc_in", F, [1])],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("acc_out", F, [1])],
        initializer=[numpy_helper.from_array(np.ones(1, dtype=np.float32), "one")],
    )
    loop = helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)
    return _bytes(
        [loop],
        [_vi("x", F, [1])],
        [_vi("y", F, [1])],
        initializers=[
            numpy_helper.from_array(np.array(1 << 62, dtype=np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "cond"),
        ],
    )


def long_matmul() -> bytes:
    """One MatMul of a square matrix (side from an input) by itself: a single long kernel."""
    return _bytes(
        [
            helper.make_node("Concat", ["n", "n"], ["shape"], axis=0),
            helper.make_node("Expand", ["x", "shape"], ["a"]),
            helper.make_node("MatMul", ["a", "a"], ["b"]),
            helper.make_node("ReduceSum", ["b"], ["y"], keepdims=0),
        ],
        [_vi("x", F, [1]), _vi("n", I64, [1])],
        [_vi("y", F, [])],
    )


def long_chain(nodes: int) -> bytes:
    chain = [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"]) for i in range(nodes)]
    return _bytes(chain, [_vi("t0", F, [1])], [_vi(f"t{nodes}", F, [1])])


def declared_huge_input() -> bytes:
    return identity([100_000, 100_000])


def large_output() -> bytes:
    """y = x expanded to [rows, 1024] with rows from an input: the output size is the caller's."""
    return _bytes(
        [
            helper.make_node("Concat", ["rows", "width"], ["shape"], axis=0),
            helper.make_node("Expand", ["x", "shape"], ["y"]),
        ],
        [_vi("x", F, [1]), _vi("rows", I64, [1])],
        [_vi("y", F, ["rows", 1024])],
        initializers=[_i64("width", [1024])],
    )


def type_error() -> bytes:
    """Structurally valid protobuf that onnxruntime refuses (Add of float and int64)."""
    return _bytes(
        [helper.make_node("Add", ["x", "n"], ["y"])],
        [_vi("x", F, [4]), _vi("n", I64, [4])],
        [_vi("y", F, [4])],
    )


# Models refused before onnxruntime ever builds a session, with the inspection's finding code.
# Both the registry's inspection and the worker's load path must refuse every one of them.
LOAD_TIME_HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "garbage": (lambda: b"\x08\x01garbage", "not_onnx"),
    "truncated": (lambda: relu_bytes()[:-7], "not_onnx"),
    "external-initializer": (external_initializer, "external_data"),
    "external-constant": (external_constant, "external_data"),
    "external-sparse-constant": (lambda: external_constant(sparse=True), "external_data"),
    "external-sparse-initializer": (external_sparse_initializer, "external_data"),
    "external-in-subgraph": (external_in_subgraph, "external_data"),
    "external-in-function-default": (external_in_function_default, "external_data"),
    "external-in-training-info": (external_in_training_info, "external_data"),
    "custom-domain": (custom_domain, "domain_not_allowed"),
    "contrib-domain": (lambda: custom_domain("com.microsoft"), "domain_not_allowed"),
    "function-claims-contrib": (function_claims_domain, "function_domain_reserved"),
    "function-claims-nchwc": (
        lambda: function_claims_domain("com.microsoft.nchwc", "ReorderInput"),
        "function_domain_reserved",
    ),
    "function-claims-default": (
        lambda: function_claims_domain("", "Relu"),
        "function_domain_reserved",
    ),
    "nested-too-deep": (lambda: nested_ifs(20), "nesting_too_deep"),
    "too-many-nodes": (lambda: long_chain(100_001), "too_many_nodes"),
    "declared-huge-initializer": (declared_huge_initializer, "initializers_too_large"),
    "checker-invalid": (checker_invalid, "checker_failed"),
}


CLASSIFIER_W = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float32
)  # logits are the first three features; the fourth only sets the run time


def slow_classifier(shift: int = 0) -> bytes:
    """Class scores ``y = x @ W`` ([N, 4] -> [N, 3]), plus a Loop that counts to the batch's
    largest fourth feature: a sample runs as long as its fourth feature says (0: at once).
    ``shift`` rolls W's columns: a rival that predicts class ``(c + shift) % 3``."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "body",
        [_vi("i", I64, []), _vi("cond_in", TensorProto.BOOL, []), _vi("acc_in", F, [1])],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("acc_out", F, [1])],
        initializer=[numpy_helper.from_array(np.ones(1, dtype=np.float32), "one")],
    )
    return _bytes(
        [
            helper.make_node("Slice", ["x", "start", "end", "axis"], ["delay"]),
            helper.make_node("ReduceMax", ["delay"], ["longest"], keepdims=0),
            helper.make_node("Cast", ["longest"], ["trips"], to=I64),
            helper.make_node("Loop", ["trips", "cond", "zero"], ["counted"], body=body),
            helper.make_node("Mul", ["counted", "zero"], ["nothing"]),
            helper.make_node("MatMul", ["x", "w"], ["scores"]),
            helper.make_node("Add", ["scores", "nothing"], ["y"]),
        ],
        [_vi("x", F, ["N", 4])],
        [_vi("y", F, ["N", 3])],
        initializers=[
            numpy_helper.from_array(np.roll(CLASSIFIER_W, shift, axis=1), "w"),
            _i64("start", [3]),
            _i64("end", [4]),
            _i64("axis", [1]),
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero"),
        ],
    )
