"""Wire format between the supervisor and a worker.

Tensors never cross a pipe: they sit in a shared-memory slot (inputs in the first region,
outputs in the second) and the pipe carries fixed-size binary headers that say where. Larger
control messages (a model's signature, an error) are JSON, length-prefixed, capped. Nothing is
pickled in either direction.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from sandbox.errors import WorkerCrashed

DEFAULT_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
RANK_MAX = 8
K = TypeVar("K")
V = TypeVar("V")
TENSORS_MAX = 256
NAME_CHARS_MAX = 1024
JSON_BYTES_MAX = 1 << 20
ALIGN_BYTES = 64

# Request: op, tensor count, call sequence number.
REQUEST = struct.Struct("<IIQ")
# Response: kind, tensor count or JSON length, sequence number, run time (ns), peak RSS (KiB).
RESPONSE = struct.Struct("<IIQQQ")
# One tensor: signature index, dtype code, rank, reserved, slot offset, byte count, dims.
TENSOR = struct.Struct(f"<IIIIQQ{RANK_MAX}q")
# Cancel message: the sequence number of the call to terminate.
CANCEL = struct.Struct("<Q")

OP_RUN = 1

KIND_OK = 0
KIND_ERROR = 1
KIND_READY = 2

# ONNX element type names (as onnxruntime spells them) <-> numpy dtypes <-> wire codes.
_DTYPES: tuple[tuple[str, np.dtype[Any]], ...] = (
    ("float", np.dtype(np.float32)),
    ("double", np.dtype(np.float64)),
    ("float16", np.dtype(np.float16)),
    ("int8", np.dtype(np.int8)),
    ("int16", np.dtype(np.int16)),
    ("int32", np.dtype(np.int32)),
    ("int64", np.dtype(np.int64)),
    ("uint8", np.dtype(np.uint8)),
    ("uint16", np.dtype(np.uint16)),
    ("uint32", np.dtype(np.uint32)),
    ("uint64", np.dtype(np.uint64)),
    ("bool", np.dtype(np.bool_)),
)
DTYPE_BY_CODE: dict[int, np.dtype[Any]] = {code: dt for code, (_, dt) in enumerate(_DTYPES, 1)}
CODE_BY_DTYPE: dict[np.dtype[Any], int] = {dt: code for code, dt in DTYPE_BY_CODE.items()}
DTYPE_BY_ORT_TYPE: dict[str, np.dtype[Any]] = {f"tensor({name})": dt for name, dt in _DTYPES}
# The one allow-list of element types, by numpy name, for every layer that takes tensors in.
DTYPE_NAMES: frozenset[str] = frozenset(dt.name for _, dt in _DTYPES)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: name, numpy dtype name, dims (None = symbolic)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Any) -> TensorSpec:
        if not isinstance(data, dict):
            raise ValueError("tensor spec is not an object")
        name, dtype, shape = data.get("name"), data.get("dtype"), data.get("shape")
        if not isinstance(name, str) or not isinstance(dtype, str) or not isinstance(shape, list):
            raise ValueError("malformed tensor spec")
        if np.dtype(dtype) not in CODE_BY_DTYPE or len(shape) > RANK_MAX:
            raise ValueError("unsupported tensor spec")
        dims = tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)
        return cls(name=name, dtype=dtype, shape=dims)


@dataclass(frozen=True)
class Signature:
    """A model's tensor inputs and outputs as the worker's session reports them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "inputs": [s.as_json() for s in self.inputs],
            "outputs": [s.as_json() for s in self.outputs],
        }

    @classmethod
    def from_json(cls, data: Any) -> Signature:
        if not isinstance(data, dict):
            raise ValueError("signature is not an object")
        inputs = [TensorSpec.from_json(s) for s in data.get("inputs", [])]
        outputs = [TensorSpec.from_json(s) for s in data.get("outputs", [])]
        if not 0 < len(inputs) <= TENSORS_MAX or not 0 < len(outputs) <= TENSORS_MAX:
            raise ValueError("signature has too many or too few tensors")
        return cls(inputs=tuple(inputs), outputs=tuple(outputs))


PLANS_MAX = 32


def remember(cache: dict[K, V], key: K, value: V) -> V:
    """Store `value` in a small cache that starts afresh when it holds PLANS_MAX entries."""
    if len(cache) >= PLANS_MAX:
        cache.clear()
    cache[key] = value
    return value


def align(offset: int) -> int:
    return (offset + ALIGN_BYTES - 1) // ALIGN_BYTES * ALIGN_BYTES


def pack_tensor(index: int, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int) -> bytes:
    dims = (*shape, *([0] * (RANK_MAX - len(shape))))
    nbytes = math.prod(shape) * dtype.itemsize
    return TENSOR.pack(index, CODE_BY_DTYPE[dtype], len(shape), 0, offset, nbytes, *dims)


@dataclass(frozen=True)
class WireTensor:
    index: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def unpack_tensor(data: bytes | memoryview, at: int, region: tuple[int, int]) -> WireTensor:
    """Decode and bounds-check one tensor header; the peer may be hostile."""
    index, code, rank, _, offset, nbytes, *dims = TENSOR.unpack_from(data, at)
    dtype = DTYPE_BY_CODE.get(code)
    if dtype is None or rank > RANK_MAX or any(d < 0 for d in dims[:rank]):
        raise WorkerCrashed(log_detail="malformed tensor header")
    shape = tuple(dims[:rank])
    count = 1
    for d in shape:
        count *= d
    start, end = region
    if count * dtype.itemsize != nbytes or offset < start or offset + nbytes > end:
        raise WorkerCrashed(log_detail="tensor header outside its slot region")
    return WireTensor(index, dtype, shape, offset, nbytes)


def wait_readable(fd: int, timeout_s: float) -> bool:
    """Whether `fd` became readable (or hung up) within `timeout_s`; poll works for any fd."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(timeout_s, 0.0) * 1000.0))


def read_exact(fd: int, size: int) -> bytes:
    """Read exactly `size` bytes from a blocking fd; b"" if the peer closed first."""
    data = os.read(fd, size)
    if len(data) == size or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < size:
        chunk = os.read(fd, size - got)
        if not chunk:
            return b""
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pack_json(kind: int, message: dict[str, Any], *, seq: int = 0, maxrss_kb: int = 0) -> bytes:
    body = json.dumps(message).encode()
    return RESPONSE.pack(kind, len(body), seq, 0, maxrss_kb) + body
