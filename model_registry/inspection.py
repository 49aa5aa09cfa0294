"""ONNX inspection of untrusted bytes: what a vendor uploaded, and whether we accept it.

:func:`inspect_model` is pure and runs wherever it is called; the web service calls it only
through :func:`model_registry.confined.inspect_file`, which runs it in a confined child process.

The structural walk runs *before* ``onnx.checker``: it looks only at declared sizes and
references, so a hostile model (a declared-huge initializer, external data, deep nesting) is
refused without allocating what it declares and without any file being opened. Only a model
that passes the walk reaches the full checker (with shape inference).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx.checker
import onnx.helper
import onnx.shape_inference
from google.protobuf.message import DecodeError
from onnx import SparseTensorProto, TensorProto

from sandbox.onnxwalk import (
    DomainRefusal,
    DomainRule,
    NodeVisit,
    SparseVisit,
    TensorVisit,
    is_external,
    walk,
)

# Names of a model's inputs and outputs travel to callers as JSON keys, npz member names and
# headers: only a plain charset, so none can be a path ("../../x", "/etc/cron.d/x").
TENSOR_NAME_CHARS_MAX = 128
TENSOR_NAME = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{TENSOR_NAME_CHARS_MAX}}}")
# Output names under this prefix are the platform's own: an evaluation job's results hold
# arrays named ``jishi.ok`` and ``jishi.sample`` beside the model's outputs, and a model's output
# of the same name would replace one of them.
RESERVED_NAME_PREFIX = "jishi."

ERROR = "error"
WARNING = "warning"

_MESSAGE_CHARS_MAX = 300


@dataclass(frozen=True)
class InspectionPolicy:
    """What the registry accepts. Every cap is inclusive."""

    ir_version_min: int = 3
    ir_version_max: int = onnx.IR_VERSION
    opset_min: int = 7
    opset_max: int = onnx.defs.onnx_opset_version()
    ml_opset_max: int = 5
    allowed_domains: tuple[str, ...] = ("", "ai.onnx", "ai.onnx.ml")
    node_count_max: int = 100_000
    subgraph_depth_max: int = 4
    initializer_bytes_max: int = 2 * 1024**3
    tensor_count_max: int = 100_000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InspectionPolicy:
        values = dict(data)
        if "allowed_domains" in values:
            values["allowed_domains"] = tuple(values["allowed_domains"])
        return cls(**values)


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    message: str
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "severity": self.severity}
        out["message"] = self.message
        if self.node is not None:
            out["node"] = self.node
        return out


@dataclass
class Report:
    """The outcome of an inspection; ``ok`` is False when any finding is an error."""

    findings: list[Finding] = field(default_factory=list)
    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)

    def error(self, code: str, message: str, node: str | None = None) -> None:
        self.findings.append(Finding(code, ERROR, _clip(message), _clip(node) if node else None))

    def warn(self, code: str, message: str, node: str | None = None) -> None:
        self.findings.append(Finding(code, WARNING, _clip(message), _clip(node) if node else None))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "ir_version": self.ir_version,
            "opsets": self.opsets,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(
            findings=[
                Finding(f["code"], f["severity"], f["message"], f.get("node"))
                for f in data.get("findings", [])
            ],
            ir_version=int(data.get("ir_version", 0)),
            opsets=dict(data.get("opsets", {})),
            inputs=list(data.get("inputs", [])),
            outputs=list(data.get("outputs", [])),
            stats=dict(data.get("stats", {})),
        )


def _clip(text: str) -> str:
    text = text.replace("\x00", "")
    return text if len(text) <= _MESSAGE_CHARS_MAX else text[: _MESSAGE_CHARS_MAX - 1] + "…"


# --- sizes ---------------------------------------------------------------------------------

_STRING = TensorProto.STRING
# Element sizes of the packed formats numpy has no dtype for.
_SUBBYTE_BITS: dict[int, int] = {
    TensorProto.INT4: 4,
    TensorProto.UINT4: 4,
}


def _element_bits(elem_type: int) -> int | None:
    if elem_type in _SUBBYTE_BITS:
        return _SUBBYTE_BITS[elem_type]
    name = getattr(TensorProto, "FLOAT4E2M1", None)
    if name is not None and elem_type == name:
        return 4
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize) * 8
    except (KeyError, TypeError, ValueError):
        return None


# Which typed field holds a tensor's values when it has no raw_data, and how many entries one
# element takes there (ONNX's TensorProto: complex numbers take two, 4-bit types pack two
# elements into one int32 entry).
_TYPED_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)
_TYPED_FIELD: dict[int, tuple[str, float]] = {
    TensorProto.FLOAT: ("float_data", 1),
    TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1),
    TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1),
    TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1),
    TensorProto.STRING: ("string_data", 1),
    **{
        getattr(TensorProto, name): ("int32_data", 1)
        for name in (
            "INT32", "INT16", "INT8", "UINT16", "UINT8", "BOOL", "FLOAT16", "BFLOAT16",
            "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0",
        )
        if hasattr(TensorProto, name)
    },
    **{
        getattr(TensorProto, name): ("int32_data", 0.5)
        for name in ("INT4", "UINT4", "FLOAT4E2M1")
        if hasattr(TensorProto, name)
    },
}  # fmt: skip


def typed_data_mismatch(tensor: TensorProto) -> str | None:
    """Why the tensor's typed data fields do not hold exactly what its dims declare, or None.

    Only for tensors without raw_data: an initializer that declares 400M floats and carries no
    values must be refused, not counted (and shown in the catalog) as 1.6 GB of weights.
    """
    expected_field, per_element = _TYPED_FIELD.get(tensor.data_type, ("", 0))
    if not expected_field:
        return "its data type has no typed data field"
    for name in _TYPED_FIELDS:
        if name != expected_field and len(getattr(tensor, name)):
            return f"it holds {name} for a tensor of another type"
    expected = math.ceil(math.prod(tensor.dims) * per_element)
    held = len(getattr(tensor, expected_field))
    if held != expected:
        return f"it declares {expected} values in {expected_field} but holds {held}"
    return None


# Field numbers of the wire format (onnx.proto): ModelProto.graph, GraphProto.initializer,
# TensorProto.data_type, TensorProto.raw_data.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_DATA_TYPE, _TENSOR_RAW_DATA = 7, 5, 2, 9
_LENGTH_DELIMITED = 2
# Protobuf refuses messages of 2 GiB or more: such a file is left whole to the parser, so that
# it is refused exactly as the runtime would refuse it.
_PROTOBUF_BYTES_MAX = (1 << 31) - 1


class _WireError(ValueError):
    """The bytes do not have the simple shape the length scan relies on."""


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise _WireError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(frozen=True)
class _Field:
    """One field of a serialized message: its number and wire type, where it starts (its key),
    where its value starts (a length-delimited field's payload, past its length) and ends."""

    number: int
    wire_type: int
    start: int
    value_start: int
    end: int


def _wire_fields(data: memoryview, start: int, end: int) -> Iterator[_Field]:
    """Every field of the message in data[start:end], reading only keys and lengths."""
    at = start
    while at < end:
        field_start = at
        key, at = _varint(data, at)
        number, wire_type = key >> 3, key & 7
        value_start = at
        if wire_type == 0:
            _, at = _varint(data, at)
        elif wire_type == 1:
            at += 8
        elif wire_type == 5:
            at += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, value_start = _varint(data, at)
            at = value_start + length
        else:
            raise _WireError("groups are not expected")
        if at > end:
            raise _WireError("field runs past its message")
        yield _Field(number, wire_type, field_start, value_start, at)


def _spliced(data: memoryview, start: int, end: int, edits: list[tuple[_Field, bytes]]) -> bytes:
    """data[start:end] with each edited field (in order, within the range) replaced."""
    parts: list[bytes | memoryview] = []
    at = start
    for item, replacement in edits:
        parts.append(data[at : item.start])
        parts.append(replacement)
        at = item.end
    parts.append(data[at:end])
    return b"".join(parts)


def _message_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LENGTH_DELIMITED) + _encode_varint(len(payload)) + payload


@dataclass(frozen=True)
class InitializerScan:
    """What the wire format says about a model's main-graph initializers, read without parsing.

    ``raw_lengths``: the raw_data length of each initializer, in order (None: it has no
    raw_data). ``lean``: the same model with every raw_data of at least ``bulk_bytes_min``
    bytes emptied (None when there is none), for the parser: everything the inspection reads
    but the bulk bytes, which it only measures (and ``raw_lengths`` holds their lengths).
    """

    raw_lengths: list[int | None]
    lean: bytes | None


def scan_initializers(data: bytes | memoryview, bulk_bytes_min: int) -> InitializerScan | None:
    """Read the main graph's initializers from the wire format, touching only keys and lengths.

    Parsing a model copies its weights: a gigabyte of weights would cost a gigabyte of fresh
    memory and a second of copying, only to learn their lengths, which the serialized bytes
    already hold. Returns None when the model is laid out in any unusual way protobuf would
    still accept (the graph or a raw_data field twice, which parsers merge; a message of 2 GiB
    or more, which they refuse): callers then parse the bytes as they are.

    The lean copy differs from the model only in the emptied fields' bytes and in the lengths
    of the messages that hold them, so it parses to the same message but for those bytes. A
    string tensor's raw_data is never emptied (the checker judges it, not the walk).
    """
    view = memoryview(data)
    if len(view) > _PROTOBUF_BYTES_MAX:
        return None
    try:
        graphs = [
            item
            for item in _wire_fields(view, 0, len(view))
            if item.number == _MODEL_GRAPH and item.wire_type == _LENGTH_DELIMITED
        ]
        if len(graphs) != 1:
            return None
        graph = graphs[0]
        lengths: list[int | None] = []
        graph_edits: list[tuple[_Field, bytes]] = []
        for initializer in _wire_fields(view, graph.value_start, graph.end):
            if (
                initializer.number != _GRAPH_INITIALIZER
                or initializer.wire_type != _LENGTH_DELIMITED
            ):
                continue
            raws: list[_Field] = []
            data_type = 0
            for item in _wire_fields(view, initializer.value_start, initializer.end):
                if item.number == _TENSOR_RAW_DATA and item.wire_type == _LENGTH_DELIMITED:
                    raws.append(item)
                elif item.number == _TENSOR_DATA_TYPE and item.wire_type == 0:
                    data_type = _varint(view, item.value_start)[0]  # the last one counts
            if len(raws) > 1:
                return None
            raw = raws[0] if raws else None
            lengths.append(None if raw is None else raw.end - raw.value_start)
            if raw is None or raw.end - raw.value_start < bulk_bytes_min or data_type == _STRING:
                continue
            empty_raw = _message_field(_TENSOR_RAW_DATA, b"")
            tensor = _spliced(view, initializer.value_start, initializer.end, [(raw, empty_raw)])
            graph_edits.append((initializer, _message_field(_GRAPH_INITIALIZER, tensor)))
    except _WireError:
        return None
    if not graph_edits:
        return InitializerScan(lengths, None)
    lean_graph = _spliced(view, graph.value_start, graph.end, graph_edits)
    lean = _spliced(view, 0, len(view), [(graph, _message_field(_MODEL_GRAPH, lean_graph))])
    return InitializerScan(lengths, lean)


# A field's key and length take at most ten bytes each.
_HEADER_BYTES_MAX = 20


def _field_header(data: bytes, at: int) -> tuple[int, int, int, int] | None:
    """(field number, wire type, value length, header length) of the field at ``data[at:]``;
    None when the header runs past the data. The value length of a varint is 0 (the varint is
    counted in the header), of fixed fields 8 or 4. Raises _WireError for bytes no protobuf
    field starts with."""
    view = memoryview(data)
    try:
        key, after = _varint(view, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, after = _varint(view, after)
            return number, wire_type, 0, after - at
        if wire_type in (1, 5):
            return number, wire_type, 8 if wire_type == 1 else 4, after - at
        if wire_type == _LENGTH_DELIMITED:
            length, after = _varint(view, after)
            return number, wire_type, length, after - at
    except _WireError:
        if len(data) - at >= _HEADER_BYTES_MAX:
            raise
        return None
    raise _WireError("groups are not expected")


_MODEL, _GRAPH, _TENSOR = "model", "graph", "tensor"


class BulkRanges:
    """Finds the bulk bytes of a serialized model while it arrives in chunks: the payloads of
    main-graph initializers' raw_data of at least ``bulk_bytes_min`` bytes, the bytes
    :func:`scan_initializers` measures but never reads.

    An upload's spool may leave these bytes out (a hole of the same length), sparing a
    gigabyte's write to disk: the inspection of the spool reads the same keys and lengths, and
    its verdict never depends on what a bulk payload holds (protobuf treats raw_data as opaque
    bytes, and the walk and the checker use only its length). Framing that is not what this
    expects (a group, a field running past its message) ends the search: the rest is kept.
    """

    def __init__(self, bulk_bytes_min: int) -> None:
        self._bulk_bytes_min = bulk_bytes_min
        self._fed = 0  # bytes fed so far
        self._at = 0  # where the next field header starts, or the current value's position
        self._value_end = 0  # the current field's value runs to here
        self._value_is_bulk = False
        self._pending = b""  # a field header split between chunks
        # Open messages and where they end (None: at the end of the stream).
        self._open: list[tuple[str, int | None]] = [(_MODEL, None)]
        self._lost = False

    def feed(self, chunk: bytes) -> list[tuple[int, int]]:
        """The bulk ranges of ``chunk``, as (start, end) offsets within it, in order."""
        chunk_start = self._fed
        self._fed += len(chunk)
        if self._lost:
            return []
        data = self._pending + chunk if self._pending else chunk
        base = chunk_start - len(self._pending)
        self._pending = b""
        end = base + len(data)
        found: list[tuple[int, int]] = []
        at = self._at
        try:
            while at < end:
                if at < self._value_end:
                    stop = min(self._value_end, end)
                    if self._value_is_bulk:
                        found.append((at - chunk_start, stop - chunk_start))
                    at = stop
                    continue
                while len(self._open) > 1 and self._open[-1][1] == at:
                    self._open.pop()
                header = _field_header(data, at - base)
                if header is None:
                    self._pending = bytes(data[at - base :])
                    break
                number, wire_type, length, header_length = header
                at += header_length
                kind, parent_end = self._open[-1]
                if parent_end is not None and at + length > parent_end:
                    raise _WireError("field runs past its message")
                self._value_end, self._value_is_bulk = at + length, False
                if wire_type != _LENGTH_DELIMITED:
                    continue
                if kind == _MODEL and number == _MODEL_GRAPH:
                    self._open.append((_GRAPH, at + length))
                    self._value_end = at
                elif kind == _GRAPH and number == _GRAPH_INITIALIZER:
                    self._open.append((_TENSOR, at + length))
                    self._value_end = at
                elif kind == _TENSOR and number == _TENSOR_RAW_DATA:
                    self._value_is_bulk = length >= self._bulk_bytes_min
        except _WireError:
            self._lost = True
        self._at = at
        return found


def declared_bytes(tensor: TensorProto) -> int | None:
    """Bytes the tensor's dims and type declare (strings: the bytes present); None if invalid."""
    if any(d < 0 for d in tensor.dims):
        return None
    count = math.prod(tensor.dims)
    if tensor.data_type == _STRING:
        return sum(len(s) for s in tensor.string_data)
    bits = _element_bits(tensor.data_type)
    if bits is None:
        return None
    return (count * bits + 7) // 8


# --- the walk ------------------------------------------------------------------------------


@dataclass
class _Tally:
    nodes: int = 0
    tensors: int = 0
    initializer_bytes: int = 0
    params: int = 0
    depth_max: int = 0
    op_types: Counter[str] = field(default_factory=Counter)


class _Checker:
    """Checks each item of :func:`sandbox.onnxwalk.walk` against the policy and tallies it."""

    def __init__(
        self,
        policy: InspectionPolicy,
        report: Report,
        rule: DomainRule,
        raw_lengths: Sequence[tuple[TensorProto, int]] = (),
    ):
        self.policy = policy
        self.report = report
        self.rule = rule
        # raw_data lengths known without reading the data, by id() of the tensor message.
        # Protobuf hands out the same wrapper for a message while it is alive, and holding the
        # pairs keeps them alive: an id is never a freed and reused one.
        self._known = list(raw_lengths)
        self.raw_lengths = {id(tensor): length for tensor, length in self._known}
        self.tally = _Tally()
        self.stopped = False

    def _stop(self, code: str, message: str, node: str | None = None) -> None:
        self.report.error(code, message, node)
        self.stopped = True

    def run(self, model: onnx.ModelProto) -> None:
        for item in walk(model, depth_max=self.policy.subgraph_depth_max):
            if isinstance(item, NodeVisit):
                self.node(item)
            elif isinstance(item, TensorVisit):
                self.tensor(item.tensor, item.where, initializer=item.initializer)
            elif isinstance(item, SparseVisit):
                self.sparse(item.sparse, item.where)
            else:
                self._stop(
                    "nesting_too_deep",
                    f"Subgraphs nest deeper than {self.policy.subgraph_depth_max} levels.",
                )
            if self.stopped:
                return

    def node(self, item: NodeVisit) -> None:
        node = item.node
        self.tally.depth_max = max(self.tally.depth_max, item.depth)
        self.tally.nodes += 1
        if self.tally.nodes > self.policy.node_count_max:
            self._stop("too_many_nodes", f"More than {self.policy.node_count_max} nodes.")
            return
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        self.tally.op_types[op] += 1
        try:
            self.rule.check_node(node, item.where)
        except DomainRefusal as refusal:
            self._stop(refusal.code, refusal.message, refusal.where)

    def tensor(self, tensor: TensorProto, where: str, *, initializer: bool) -> None:
        self.tally.tensors += 1
        if self.tally.tensors > self.policy.tensor_count_max:
            self._stop("too_many_tensors", f"More than {self.policy.tensor_count_max} tensors.")
            return
        if is_external(tensor):
            self._stop(
                "external_data",
                f"Tensor {tensor.name!r} refers to external data; upload self-contained models.",
                where,
            )
            return
        size = declared_bytes(tensor)
        if size is None:
            self._stop("tensor_invalid", f"Tensor {tensor.name!r} has an invalid type or shape.")
            return
        self.tally.initializer_bytes += size
        if initializer:
            self.tally.params += math.prod(tensor.dims)
        if self.tally.initializer_bytes > self.policy.initializer_bytes_max:
            self._stop(
                "initializers_too_large",
                f"Constant tensors declare more than {self.policy.initializer_bytes_max} bytes.",
                where,
            )
            return
        has_raw = tensor.data_type != _STRING and tensor.HasField("raw_data")
        held = self.raw_lengths.get(id(tensor)) if has_raw else 0
        if held is None:
            held = len(tensor.raw_data)
        if has_raw and held != size:
            self._stop(
                "tensor_size_mismatch",
                f"Tensor {tensor.name!r} declares {size} bytes but holds {held}.",
                where,
            )
            return
        mismatch = None if has_raw else typed_data_mismatch(tensor)
        if mismatch is not None:
            self._stop("tensor_size_mismatch", f"Tensor {tensor.name!r}: {mismatch}.", where)

    def sparse(self, sparse: SparseTensorProto, where: str) -> None:
        values, indices = sparse.values, sparse.indices
        for part in (values, indices):
            if is_external(part):
                self._stop(
                    "external_data",
                    f"Sparse tensor {values.name!r} refers to external data.",
                    where,
                )
                return
        # Runtimes densify sparse initializers at load: the dense shape is what memory costs.
        if any(d < 0 for d in sparse.dims):
            self._stop("tensor_invalid", f"Sparse tensor {values.name!r} has a negative dim.")
            return
        bits = _element_bits(values.data_type)
        if bits is None:
            self._stop("tensor_invalid", f"Sparse tensor {values.name!r} has an invalid type.")
            return
        dense = (math.prod(sparse.dims) * bits + 7) // 8
        self.tally.initializer_bytes += dense
        if self.tally.initializer_bytes > self.policy.initializer_bytes_max:
            self._stop(
                "initializers_too_large",
                f"Sparse tensor {values.name!r} declares a dense size over the limit.",
                where,
            )
            return
        self.tensor(values, where, initializer=True)
        if not self.stopped:
            self.tensor(indices, where, initializer=False)


# --- signature -----------------------------------------------------------------------------


def _value_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": value.name, "dtype": kind or "unknown", "shape": None}
    tensor_type = value.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    except (KeyError, TypeError, ValueError):
        dtype = "unknown"
    shape: list[int | str | None] | None = None
    if tensor_type.HasField("shape"):
        shape = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                shape.append(dim.dim_param[:64])
            else:
                shape.append(None)
    return {"name": value.name, "dtype": dtype, "shape": shape}


# --- the entry point -----------------------------------------------------------------------


def inspect_model(data: bytes | memoryview, policy: InspectionPolicy | None = None) -> Report:
    """Inspect serialized ONNX bytes against ``policy``; never raises for bad bytes."""
    policy = policy or InspectionPolicy()
    report = Report()
    if len(data) == 0:
        report.error("empty_model", "The body is empty.")
        return report
    scan = scan_initializers(data, BULK_TENSOR_BYTES_MIN)
    try:
        model = onnx.ModelProto.FromString(scan.lean if scan and scan.lean is not None else data)
    except (DecodeError, RuntimeError, ValueError):
        report.error("not_onnx", "The body is not a serialized ONNX model.")
        return report
    if not model.HasField("graph") or model.ir_version <= 0:
        report.error("not_onnx", "The body is not a serialized ONNX model (no graph).")
        return report

    report.ir_version = int(model.ir_version)
    if not policy.ir_version_min <= model.ir_version <= policy.ir_version_max:
        report.error(
            "ir_version_unsupported",
            f"IR version {model.ir_version} is outside "
            f"{policy.ir_version_min}..{policy.ir_version_max}.",
        )
    for opset in model.opset_import:
        domain = opset.domain
        report.opsets[domain or "ai.onnx"] = int(opset.version)
        if domain in ("", "ai.onnx"):
            if not policy.opset_min <= opset.version <= policy.opset_max:
                report.error(
                    "opset_unsupported",
                    f"Opset {opset.version} is outside {policy.opset_min}..{policy.opset_max}.",
                )
        elif domain == "ai.onnx.ml" and not 1 <= opset.version <= policy.ml_opset_max:
            report.error(
                "opset_unsupported",
                f"ai.onnx.ml opset {opset.version} is outside 1..{policy.ml_opset_max}.",
            )
    try:
        rule = DomainRule.for_model(model, policy.allowed_domains)
    except DomainRefusal as refusal:
        report.error(refusal.code, refusal.message, refusal.where)
    if not report.ok:
        return report

    checker = _Checker(policy, report, rule, _known_raw_lengths(model, scan))
    checker.run(model)
    if not report.ok:
        return report

    initializer_names = {t.name for t in model.graph.initializer}
    initializer_names |= {s.values.name for s in model.graph.sparse_initializer}
    report.inputs = [_value_info(v) for v in model.graph.input if v.name not in initializer_names]
    report.outputs = [_value_info(v) for v in model.graph.output]
    for value in (*report.inputs, *report.outputs):
        if not TENSOR_NAME.fullmatch(value["name"]):
            report.error(
                "tensor_name_invalid",
                f"Input and output names must be 1 to {TENSOR_NAME_CHARS_MAX} letters, digits, "
                f"'_', '.', ':' or '-'; {value['name'][:64]!r} is not (rename it and upload "
                "again).",
            )
    for value in report.outputs:
        if value["name"].startswith(RESERVED_NAME_PREFIX):
            report.error(
                "tensor_name_reserved",
                f"Output names starting with {RESERVED_NAME_PREFIX!r} are reserved for the "
                f"platform's own arrays; rename {value['name'][:64]!r} and upload again.",
            )
    if not report.ok:
        return report
    tally = checker.tally
    report.stats = {
        "node_count": tally.nodes,
        "initializer_bytes": tally.initializer_bytes,
        "param_count": tally.params,
        "op_types": dict(sorted(tally.op_types.items())),
        "subgraph_depth": tally.depth_max,
    }

    checked = _without_bulk_data(model)
    del model
    try:
        onnx.checker.check_model(checked, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        report.error("checker_failed", f"The ONNX checker rejected the model: {_first_line(exc)}")
    except (ValueError, RuntimeError) as exc:
        report.error("checker_failed", f"The ONNX checker failed: {_first_line(exc)}")
    if not report.inputs:
        report.warn("no_inputs", "The graph declares no inputs.")
    return report


def _known_raw_lengths(
    model: onnx.ModelProto, scan: InitializerScan | None
) -> list[tuple[TensorProto, int]]:
    """raw_data lengths of the main graph's initializers (where the bulk lives)."""
    initializers = model.graph.initializer
    if scan is None or len(scan.raw_lengths) != len(initializers):
        # The parser read the whole file (laid out in a way the scan leaves to it): each
        # raw_data is measured on the message. A lean copy always has the scan's initializers;
        # were one emptied without its length, it would read as a mismatch, never pass.
        return []
    return [
        (tensor, length)
        for tensor, length in zip(initializers, scan.raw_lengths, strict=True)
        if length is not None and tensor.HasField("raw_data")
    ]


# Initializers at least this large reach the checker as typed graph inputs instead of data.
BULK_TENSOR_BYTES_MIN = 1024 * 1024


def _without_bulk_data(model: onnx.ModelProto) -> bytes:
    """The model for the checker, with large initializers turned into typed graph inputs.

    The full check copies the model twice (its own parse, then shape inference on a copy), so a
    1 GiB initializer would cost several GiB. The walk has already checked every initializer's
    declared size against its data, and shape inference only reads small constants (shapes,
    axes), so the checker needs the bulk data's type and shape, not its bytes.
    """
    graph = model.graph
    inputs = {v.name for v in graph.input}
    kept: list[TensorProto] = []
    moved = False
    for tensor in graph.initializer:
        size = declared_bytes(tensor) or 0
        if size < BULK_TENSOR_BYTES_MIN:
            kept.append(tensor)
            continue
        moved = True
        if tensor.name not in inputs:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
    if moved:
        kept = [TensorProto.FromString(t.SerializeToString()) for t in kept]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return model.SerializeToString()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
