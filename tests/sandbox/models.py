"""Builders for the benign and hostile ONNX models the sandbox tests run (as serialized bytes)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

OPSET = 17
F = TensorProto.FLOAT
I64 = TensorProto.INT64


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    *,
    initializers: list[onnx.TensorProto] | None = None,
    sparse: list[onnx.SparseTensorProto] | None = None,
    extra_opsets: list[onnx.OperatorSetIdProto] | None = None,
) -> bytes:
    graph = oh.make_graph(
        nodes, "g", inputs, outputs, initializer=initializers or [], sparse_initializer=sparse
    )
    opsets = [oh.make_opsetid("", OPSET), *(extra_opsets or [])]
    model = oh.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model.SerializeToString()


def _vi(name: str, elem: int, shape: list[int | str] | None) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, elem, shape)


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return nh.from_array(np.array(values, dtype=np.int64), name)


def add() -> bytes:
    """z = x + y with x: [N, 3], y: [1, 3]."""
    return _model(
        [oh.make_node("Add", ["x", "y"], ["z"])],
        [_vi("x", F, ["N", 3]), _vi("y", F, [1, 3])],
        [_vi("z", F, ["N", 3])],
    )


MATMUL_W = np.arange(8, dtype=np.float32).reshape(4, 2) / 8


def matmul() -> bytes:
    """y = x @ W with x: [N, 4] and a fixed W."""
    return _model(
        [oh.make_node("MatMul", ["x", "w"], ["y"])],
        [_vi("x", F, ["N", 4])],
        [_vi("y", F, ["N", 2])],
        initializers=[nh.from_array(MATMUL_W, "w")],
    )


def identity(shape: list[int | str], name: str = "x", elem: int = F) -> bytes:
    return _model(
        [oh.make_node("Identity", [name], ["y"])], [_vi(name, elem, shape)], [_vi("y", elem, shape)]
    )


def _external(tensor: onnx.TensorProto) -> onnx.TensorProto:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "/etc/passwd"), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _four_floats(name: str) -> onnx.TensorProto:
    return nh.from_array(np.zeros(4, dtype=np.float32), name)


def external_initializer() -> bytes:
    return _model(
        [oh.make_node("Add", ["x", "w"], ["y"])],
        [_vi("x", F, [4])],
        [_vi("y", F, [4])],
        initializers=[_external(_four_floats("w"))],
    )


def external_constant() -> bytes:
    constant = oh.make_node("Constant", [], ["w"], value=_external(_four_floats("w")))
    return _model(
        [constant, oh.make_node("Add", ["x", "w"], ["y"])], [_vi("x", F, [4])], [_vi("y", F, [4])]
    )


def external_sparse() -> bytes:
    values = _external(_four_floats("w"))
    indices = nh.from_array(np.arange(4, dtype=np.int64), "w_indices")
    sparse = oh.make_sparse_tensor(values, indices, [4])
    return _model(
        [oh.make_node("Add", ["x", "w"], ["y"])],
        [_vi("x", F, [4])],
        [_vi("y", F, [4])],
        sparse=[sparse],
    )


def external_in_subgraph() -> bytes:
    """An If whose branches hide a Constant with external data two levels down."""
    leaf = oh.make_graph(
        [oh.make_node("Constant", [], ["w"], value=_external(_four_floats("w")))],
        "leaf",
        [],
        [_vi("w", F, [4])],
    )
    inner_if = oh.make_node("If", ["c"], ["w"], then_branch=leaf, else_branch=leaf)
    branch = oh.make_graph([inner_if], "branch", [], [_vi("w", F, [4])])
    outer_if = oh.make_node("If", ["c"], ["w"], then_branch=branch, else_branch=branch)
    return _model(
        [outer_if, oh.make_node("Add", ["x", "w"], ["y"])],
        [_vi("x", F, [4]), _vi("c", TensorProto.BOOL, [])],
        [_vi("y", F, [4])],
    )


def custom_domain(domain: str = "com.evil") -> bytes:
    return _model(
        [oh.make_node("Pwn", ["x"], ["y"], domain=domain)],
        [_vi("x", F, [4])],
        [_vi("y", F, [4])],
        extra_opsets=[oh.make_opsetid(domain, 1)],
    )


def expand(rows: int, cols: int) -> bytes:
    """One Expand node: a 4-byte input becomes a [rows, cols] float32 output."""
    return _model(
        [oh.make_node("Expand", ["x", "shape"], ["y"])],
        [_vi("x", F, [1])],
        [_vi("y", F, [rows, cols])],
        initializers=[_i64("shape", [rows, cols])],
    )


def renamed_outputs(names: list[str]) -> bytes:
    """x copied to one output per name (vendor-chosen names, however hostile)."""
    return _model(
        [oh.make_node("Identity", ["x"], [name]) for name in names],
        [_vi("x", F, [2])],
        [_vi(name, F, [2]) for name in names],
    )


def constant_of_shape_bomb() -> bytes:
    """A 64 Gi-element tensor whose shape comes from an input."""
    return _model(
        [oh.make_node("ConstantOfShape", ["shape"], ["y"])],
        [_vi("shape", I64, [2])],
        [_vi("y", F, None)],
    )


def expand_bomb() -> bytes:
    return _model(
        [oh.make_node("Expand", ["x", "shape"], ["y"])],
        [_vi("x", F, [1])],
        [_vi("y", F, None)],
        initializers=[_i64("shape", [1 << 18, 1 << 18])],
    )


def tile_bomb() -> bytes:
    return _model(
        [oh.make_node("Tile", ["x", "repeats"], ["y"])],
        [_vi("x", F, [1, 1])],
        [_vi("y", F, None)],
        initializers=[_i64("repeats", [1 << 18, 1 << 18])],
    )


def resize_bomb() -> bytes:
    scales = nh.from_array(np.array([1, 1, 1e5, 1e5], dtype=np.float32), "scales")
    return _model(
        [oh.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
        [_vi("x", F, [1, 1, 2, 2])],
        [_vi("y", F, None)],
        initializers=[scales],
    )


def huge_loop() -> bytes:
    """A Loop with a 2**62 trip count whose body adds one to a scalar."""
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
            oh.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "body",
        [_vi("i", I64, []), _vi("cond_in", TensorProto.BOOL, []), _vi("acc_in", F, [1])],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("acc_out", F, [1])],
        initializer=[nh.from_array(np.ones(1, dtype=np.float32), "one")],
    )
    loop = oh.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)
    return _model(
        [loop],
        [_vi("x", F, [1])],
        [_vi("y", F, [1])],
        initializers=[
            nh.from_array(np.array(1 << 62, dtype=np.int64), "trips"),
            nh.from_array(np.array(True), "cond"),
        ],
    )


def long_matmul() -> bytes:
    """One MatMul of a square matrix (side from an input) by itself: a single long kernel."""
    return _model(
        [
            oh.make_node("Concat", ["n", "n"], ["shape"], axis=0),
            oh.make_node("Expand", ["x", "shape"], ["a"]),
            oh.make_node("MatMul", ["a", "a"], ["b"]),
            oh.make_node("ReduceSum", ["b"], ["y"], keepdims=0),
        ],
        [_vi("x", F, [1]), _vi("n", I64, [1])],
        [_vi("y", F, [])],
    )


def long_chain(nodes: int) -> bytes:
    chain = [oh.make_node("Identity", [f"t{i}"], [f"t{i + 1}"]) for i in range(nodes)]
    return _model(chain, [_vi("t0", F, [1])], [_vi(f"t{nodes}", F, [1])])


def declared_huge_input() -> bytes:
    return identity([100_000, 100_000])


def large_output() -> bytes:
    """y = x expanded to [rows, 1024] with rows from an input: the output size is the caller's."""
    return _model(
        [
            oh.make_node("Concat", ["rows", "width"], ["shape"], axis=0),
            oh.make_node("Expand", ["x", "shape"], ["y"]),
        ],
        [_vi("x", F, [1]), _vi("rows", I64, [1])],
        [_vi("y", F, None)],
        initializers=[_i64("width", [1024])],
    )


def type_error() -> bytes:
    """Structurally valid protobuf that onnxruntime refuses (Add of float and int64)."""
    return _model(
        [oh.make_node("Add", ["x", "n"], ["y"])],
        [_vi("x", F, [4]), _vi("n", I64, [4])],
        [_vi("y", F, [4])],
    )
