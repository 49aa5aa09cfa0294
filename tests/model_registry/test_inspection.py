"""ONNX inspection: the pure checks in-process, and the confined runner on real files."""

from __future__ import annotations

import os
import random
from pathlib import Path

import onnx
import pytest

from model_registry.confined import inspect_file
from model_registry.inspection import InspectionPolicy, Report, inspect_model
from sandbox.errors import SandboxError
from tests import onnx_models as builders

EXTERNAL_PATHS = ["../secret.bin", "sub/../../etc/passwd", "/etc/passwd", "weights.bin"]


def codes(report: Report) -> list[str]:
    return [f.code for f in report.findings if f.severity == "error"]


def test_valid_model_is_described() -> None:
    report = inspect_model(builders.relu_bytes(4))
    assert report.ok, report.findings
    assert report.ir_version == builders.IR_VERSION
    assert report.opsets == {"ai.onnx": builders.OPSET}
    assert report.inputs == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    assert report.outputs == [{"name": "y", "dtype": "float32", "shape": ["N", 2]}]
    assert report.stats["node_count"] == 3
    assert report.stats["param_count"] == 4 * 2 + 2
    assert report.stats["initializer_bytes"] == (4 * 2 + 2) * 4
    assert report.stats["op_types"] == {"Add": 1, "MatMul": 1, "Relu": 1}


def test_ml_domain_is_allowed() -> None:
    report = inspect_model(builders.ml_model())
    assert report.ok, report.findings
    assert report.stats["op_types"] == {"ai.onnx.ml:Normalizer": 1}
    assert report.opsets["ai.onnx.ml"] == 3


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_model"),
        (os.urandom(4096), "not_onnx"),
        (builders.relu_bytes()[:-7], "not_onnx"),
        (builders.custom_domain(), "domain_not_allowed"),
        (builders.declared_huge_initializer(), "initializers_too_large"),
        (builders.nested_ifs(6), "nesting_too_deep"),
        (builders.checker_invalid(), "checker_failed"),
        (builders.declared_without_data(), "tensor_size_mismatch"),
        (builders.identity([1], name="../../x"), "tensor_name_invalid"),
        (builders.identity([1], output="/etc/cron.d/x"), "tensor_name_invalid"),
        (builders.identity([1], name="x" * 129), "tensor_name_invalid"),
        (builders.renamed_outputs(["y", "jishi.ok"]), "tensor_name_reserved"),
        (builders.renamed_outputs(["jishi.sample"]), "tensor_name_reserved"),
    ],
    ids=[
        "empty",
        "random",
        "truncated",
        "custom-domain",
        "huge-decl",
        "nesting",
        "checker",
        "declared-without-data",
        "input-name-path",
        "output-name-path",
        "name-too-long",
        "output-named-like-results-ok",
        "output-named-like-results-sample",
    ],
)
def test_hostile_bytes_are_rejected(data: bytes, code: str) -> None:
    report = inspect_model(data)
    assert not report.ok
    assert code in codes(report), report.findings


@pytest.mark.parametrize("location", EXTERNAL_PATHS)
@pytest.mark.parametrize(
    "build",
    [
        builders.external_initializer,
        builders.external_constant,
        lambda loc: builders.external_constant(loc, sparse=True),
        builders.external_sparse_initializer,
        builders.external_in_subgraph,
        builders.external_in_function_default,
        builders.external_in_training_info,
    ],
    ids=[
        "initializer",
        "constant",
        "constant-sparse",
        "sparse-initializer",
        "subgraph",
        "function-default",
        "training-info",
    ],
)
def test_external_data_is_rejected_wherever_it_hides(build, location: str) -> None:  # type: ignore[no-untyped-def]
    report = inspect_model(build(location))
    assert codes(report) == ["external_data"], report.findings


def test_caps_follow_the_policy() -> None:
    assert codes(inspect_model(builders.many_nodes(50), InspectionPolicy(node_count_max=49))) == [
        "too_many_nodes"
    ]
    assert inspect_model(builders.many_nodes(50), InspectionPolicy(node_count_max=50)).ok
    assert inspect_model(builders.nested_ifs(2), InspectionPolicy(subgraph_depth_max=2)).ok
    assert codes(inspect_model(builders.nested_ifs(3), InspectionPolicy(subgraph_depth_max=2))) == [
        "nesting_too_deep"
    ]
    small = InspectionPolicy(initializer_bytes_max=39)
    assert codes(inspect_model(builders.relu_bytes(4), small)) == ["initializers_too_large"]
    assert inspect_model(builders.relu_bytes(4), InspectionPolicy(initializer_bytes_max=40)).ok
    allowing = InspectionPolicy(allowed_domains=("", "com.example.custom"))
    assert "domain_not_allowed" not in codes(inspect_model(builders.custom_domain(), allowing))


def test_ir_and_opset_ranges() -> None:
    assert codes(inspect_model(builders.relu_bytes(), InspectionPolicy(ir_version_max=7))) == [
        "ir_version_unsupported"
    ]
    assert codes(inspect_model(builders.relu_bytes(), InspectionPolicy(opset_min=18))) == [
        "opset_unsupported"
    ]


def test_report_round_trips_through_json() -> None:
    report = inspect_model(builders.relu_bytes())
    assert Report.from_dict(report.to_dict()).to_dict() == report.to_dict()


def test_confined_inspection_of_a_file(tmp_path: Path) -> None:
    good = tmp_path / "good.onnx"
    good.write_bytes(builders.relu_bytes())
    assert inspect_file(good).ok
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(builders.external_initializer("../../etc/passwd"))
    assert codes(inspect_file(bad)) == ["external_data"]
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert codes(inspect_file(empty)) == ["empty_model"]


def test_confined_inspection_runs_out_of_memory_as_a_sandbox_error(tmp_path: Path) -> None:
    # 64 MiB of documentation: the parser copies it, more than the 64 MiB the child may add.
    wordy = builders.relu_model()
    wordy.doc_string = "x" * (64 * 1024 * 1024)
    model = tmp_path / "m.onnx"
    model.write_bytes(wordy.SerializeToString())
    # The child fails an allocation (in protobuf, or in Python reading the text), or protobuf
    # reports its failed allocation as a decode error: either way the model is refused.
    try:
        report = inspect_file(model, memory_bytes_max=64 * 1024 * 1024)
    except SandboxError as exc:
        assert exc.code in {"resource_exhausted", "worker_crashed", "model_invalid"}
    else:
        assert codes(report) == ["not_onnx"]
    assert inspect_file(model, memory_bytes_max=512 * 1024 * 1024).ok


def test_bulk_weights_cost_the_inspection_no_memory(tmp_path: Path) -> None:
    # 64 MiB of weights are measured where they lie in the file, never copied by the parser.
    model = tmp_path / "m.onnx"
    model.write_bytes(builders.relu_bytes(width=8 * 1024 * 1024))
    report = inspect_file(model, memory_bytes_max=64 * 1024 * 1024)
    assert report.ok, report.findings
    assert report.stats["initializer_bytes"] == 8 * 1024 * 1024 * 2 * 4 + 2 * 4


def test_bulk_initializers_reach_the_checker_as_typed_inputs() -> None:
    # 2 MiB of weights: the checker sees W's type and shape, and shape inference still runs.
    model = builders.relu_model(width=256 * 1024)
    report = inspect_model(model.SerializeToString())
    assert report.ok, report.findings
    assert report.inputs == [{"name": "x", "dtype": "float32", "shape": ["N", 256 * 1024]}]
    assert report.stats["initializer_bytes"] == (256 * 1024 * 2 + 2) * 4
    # The shapes still have to agree: a wrongly shaped bulk initializer fails shape inference.
    broken = builders.relu_model(width=256 * 1024)
    broken.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7
    assert codes(inspect_model(broken.SerializeToString())) == ["checker_failed"]
    short = builders.relu_model(width=256 * 1024)
    short.graph.initializer[0].raw_data = short.graph.initializer[0].raw_data[:-4]
    assert codes(inspect_model(short.SerializeToString())) == ["tensor_size_mismatch"]


def test_a_dead_helper_is_replaced(tmp_path: Path) -> None:
    from model_registry import confined

    model = tmp_path / "m.onnx"
    model.write_bytes(builders.relu_bytes())
    assert inspect_file(model).ok
    for helper in confined._helpers._idle:
        helper.process.kill()
        helper.process.wait()
    assert inspect_file(model).ok


def test_a_wedged_helper_is_killed_at_the_deadline(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from model_registry import confined

    model = tmp_path / "m.onnx"
    model.write_bytes(builders.relu_bytes())
    monkeypatch.setattr(confined, "_HELPER_GRACE_S", 0.0)
    with pytest.raises(SandboxError) as exc:
        # No time at all: the answer cannot arrive before the deadline.
        inspect_file(model, wall_s_max=0.000001)
    assert exc.value.code == "deadline_exceeded"
    monkeypatch.undo()
    assert inspect_file(model).ok


def test_typed_data_must_match_the_declared_shape() -> None:
    def with_initializer(tensor: onnx.TensorProto) -> bytes:
        model = builders.relu_model()
        model.graph.initializer.append(tensor)
        return model.SerializeToString()

    good = onnx.helper.make_tensor("k", onnx.TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0])
    assert inspect_model(with_initializer(good)).ok
    short = onnx.TensorProto()
    short.CopyFrom(good)
    del short.float_data[-1]
    wrong_field = onnx.helper.make_tensor("k", onnx.TensorProto.INT64, [2], [1, 2])
    wrong_field.float_data.extend([1.0, 2.0])
    ints = onnx.helper.make_tensor("k", onnx.TensorProto.INT8, [3], [1, 2, 3])
    del ints.int32_data[-1]
    for tensor in (short, wrong_field, ints):
        assert codes(inspect_model(with_initializer(tensor))) == ["tensor_size_mismatch"]
    report = inspect_model(with_initializer(good))
    assert report.stats["initializer_bytes"] == (4 * 2 + 2 + 4) * 4


def test_raw_lengths_come_from_the_wire_format_or_not_at_all() -> None:
    from model_registry.inspection import scan_initializers

    data = builders.relu_bytes(8)
    scan = scan_initializers(data, BULK)
    assert scan is not None
    assert scan.raw_lengths == [8 * 2 * 4, 2 * 4]
    assert scan.lean is None  # nothing bulky: the parser reads the bytes as they are
    # A second graph field is merged by parsers: the scan leaves such a file to the parser.
    graph = onnx.ModelProto.FromString(data).graph.SerializeToString()
    assert 128 <= len(graph) < 1 << 14
    length = bytes([len(graph) & 0x7F | 0x80, len(graph) >> 7])
    twice = data + b"\x3a" + length + graph  # field 7 (graph), length-delimited
    assert len(onnx.ModelProto.FromString(twice).graph.initializer) == 4  # merged
    assert scan_initializers(twice, BULK) is None
    assert scan_initializers(b"\xff\xff\xff", BULK) is None
    # Either way the inspection's verdict is the parser's.
    short = builders.relu_model()
    short.graph.initializer[0].raw_data = short.graph.initializer[0].raw_data[:-4]
    assert codes(inspect_model(short.SerializeToString())) == ["tensor_size_mismatch"]


# A weight of exactly the size from which the parser is handed a lean copy.
BULK = 1 << 20
BULK_WIDTH = BULK // (2 * 4)


def test_the_parser_reads_a_lean_copy_equal_but_for_the_bulk_bytes() -> None:
    from model_registry.inspection import scan_initializers

    model = builders.relu_model(BULK_WIDTH)
    model.graph.initializer[0].doc_string = "kept"  # a field after raw_data survives the edit
    data = model.SerializeToString()
    scan = scan_initializers(data, BULK)
    assert scan is not None and scan.lean is not None
    assert scan.raw_lengths == [BULK, 2 * 4]
    assert len(scan.lean) < 4096
    lean = onnx.ModelProto.FromString(scan.lean)
    expected = onnx.ModelProto()
    expected.CopyFrom(model)
    expected.graph.initializer[0].raw_data = b""
    assert lean == expected
    assert lean.graph.initializer[0].HasField("raw_data")
    # One byte under the bound: parsed as it is.
    assert scan_initializers(data, BULK + 1).lean is None  # type: ignore[union-attr]


def test_a_bulky_model_is_judged_as_if_parsed_whole() -> None:
    report = inspect_model(builders.relu_bytes(BULK_WIDTH))
    assert report.ok, report.findings
    assert report.stats["initializer_bytes"] == BULK + 2 * 4
    assert report.stats["param_count"] == BULK // 4 + 2
    # The emptied bytes are measured from the wire: a weight that holds less or more than its
    # shape declares is refused, as a parsed one is.
    for delta in (-4, 4):
        model = builders.relu_model(BULK_WIDTH)
        weight = model.graph.initializer[0]
        weight.raw_data = weight.raw_data[:delta] if delta < 0 else weight.raw_data + b"\0" * 4
        assert codes(inspect_model(model.SerializeToString())) == ["tensor_size_mismatch"]
    # A string tensor's raw_data is the checker's to judge, and it keeps its bytes for it.
    model = builders.relu_model(4)
    text = onnx.TensorProto(name="t", data_type=onnx.TensorProto.STRING, dims=[1])
    text.raw_data = b"x" * BULK
    model.graph.initializer.append(text)
    from model_registry.inspection import scan_initializers

    scan = scan_initializers(model.SerializeToString(), BULK)
    assert scan is not None and scan.lean is None
    assert not inspect_model(model.SerializeToString()).ok


def _bulky_models() -> dict[str, bytes]:
    one = builders.relu_model(BULK_WIDTH)
    one.graph.initializer[0].doc_string = "after the weights"
    many = builders.relu_model(BULK_WIDTH)
    for i in range(3):
        extra = onnx.TensorProto(name=f"e{i}", data_type=onnx.TensorProto.FLOAT, dims=[BULK // 4])
        extra.raw_data = bytes([i + 1]) * BULK
        many.graph.initializer.append(extra)
    mismatched = builders.relu_model(BULK_WIDTH)
    mismatched.graph.initializer[0].raw_data += b"\0\0\0\0"
    data = one.SerializeToString()
    graph = onnx.ModelProto.FromString(data).graph.SerializeToString()
    header = b"\x3a" + _varint_bytes(len(graph))
    return {
        "one": data,
        "many": many.SerializeToString(),
        "mismatched": mismatched.SerializeToString(),
        "graph twice": data + header + graph,
        "small": builders.relu_bytes(8),
    }


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def _holes(data: bytes, step: int) -> tuple[bytes, int]:
    """The model with what BulkRanges finds (fed ``step`` bytes at a time) zeroed."""
    from model_registry.inspection import BulkRanges

    ranges = BulkRanges(BULK)
    held = bytearray(data)
    found = 0
    for at in range(0, len(data), step):
        chunk = data[at : at + step]
        for start, end in ranges.feed(chunk):
            assert 0 <= start < end <= len(chunk)
            held[at + start : at + end] = bytes(end - start)
            found += end - start
    return bytes(held), found


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20, 1 << 30])
def test_bulk_ranges_are_the_weights_the_inspection_only_measures(step: int) -> None:
    models = _bulky_models()
    expected_bulk = {
        "one": BULK,
        "many": 4 * BULK,
        "mismatched": BULK + 4,
        "graph twice": 2 * BULK,
        "small": 0,
    }
    for name, data in models.items():
        if step == 1 and name != "one":
            continue  # a byte at a time is slow in Python; one model is enough
        held, found = _holes(data, step)
        assert found == expected_bulk[name], name
        # Whatever the weights held, the inspection judges the model the same.
        assert inspect_model(held).to_dict() == inspect_model(data).to_dict(), name


def test_bulk_ranges_survive_hostile_framing() -> None:
    from model_registry.inspection import BulkRanges

    data = _bulky_models()["many"]
    rng = random.Random(7)
    for _ in range(200):
        spoiled = bytearray(data[: rng.randrange(len(data))])
        for _ in range(rng.randrange(4)):
            if spoiled:
                spoiled[rng.randrange(len(spoiled))] = rng.randrange(256)
        ranges = BulkRanges(BULK)
        for at in range(0, len(spoiled), 65536):
            chunk = bytes(spoiled[at : at + 65536])
            for start, end in ranges.feed(chunk):
                assert 0 <= start < end <= len(chunk)
    # Groups are not protobuf fields ONNX uses: the search stops and keeps the rest.
    ranges = BulkRanges(BULK)
    assert ranges.feed(b"\x0b" + data) == []
    assert ranges.feed(data) == []
