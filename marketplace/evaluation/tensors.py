"""Tensors on the wire: JSON ``{dtype, shape, data}`` and ``application/x-npz``.

Framework-free so that a Python client can use the same codec. Decoding is defensive: the
element count is checked against the declared shape and the caps *before* any array is built,
and npz archives are read without pickle and with a bound on their uncompressed size.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

NPZ_MIME = "application/x-npz"

# Only plain numeric and boolean tensors cross the API; object and string dtypes would let a
# caller smuggle Python objects or unbounded text.
ALLOWED_DTYPES = frozenset(
    {
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)
NAME_LENGTH_MAX = 256
# JSON has no NaN or infinities: they travel as these strings, both ways.
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
RANK_MAX = 16


class TensorDecodeError(ValueError):
    """The tensors are malformed or over a cap; ``code`` is the stable error code."""

    def __init__(self, message: str, code: str = "input_invalid") -> None:
        super().__init__(message)
        self.code = code


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= NAME_LENGTH_MAX:
        raise TensorDecodeError("tensor names must be non-empty strings of at most 256 characters")
    return name


def _check_shape(shape: object, elements_max: int) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > RANK_MAX:
        raise TensorDecodeError(f"shape must be a list of at most {RANK_MAX} dimensions")
    dims: list[int] = []
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise TensorDecodeError("every dimension must be a non-negative integer")
        dims.append(dim)
    if math.prod(dims) > elements_max:
        raise TensorDecodeError(
            f"a tensor may have at most {elements_max} elements", "input_too_large"
        )
    return tuple(dims)


def _check_dtype(dtype: object) -> np.dtype[Any]:
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise TensorDecodeError(f"dtype must be one of {', '.join(sorted(ALLOWED_DTYPES))}")
    return np.dtype(dtype)


def _flatten(data: object, out: list[Any], budget: int) -> None:
    # Iterative flattening: nested lists from a hostile body must not recurse without bound.
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
            continue
        if isinstance(item, bool | int | float):
            out.append(item)
            if len(out) > budget:
                raise TensorDecodeError("data has more elements than the shape declares")
            continue
        if isinstance(item, str) and item in _NON_FINITE:
            out.append(_NON_FINITE[item])
            if len(out) > budget:
                raise TensorDecodeError("data has more elements than the shape declares")
            continue
        raise TensorDecodeError("data must hold only numbers or booleans")


def decode_json_tensors(payload: object, *, elements_max: int) -> dict[str, np.ndarray]:
    """``{name: {dtype, shape, data}}`` → arrays, with every size checked before allocation."""
    if not isinstance(payload, Mapping) or not payload:
        raise TensorDecodeError("inputs must be a non-empty object of named tensors")
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for name, spec in payload.items():
        _check_name(name)
        if not isinstance(spec, Mapping) or set(spec) - {"dtype", "shape", "data"}:
            raise TensorDecodeError(f"tensor {name!r} must be an object with dtype, shape and data")
        dtype = _check_dtype(spec.get("dtype"))
        shape = _check_shape(spec.get("shape"), elements_max)
        count = math.prod(shape)
        total += count
        if total > elements_max:
            raise TensorDecodeError(
                f"inputs may hold at most {elements_max} elements", "input_too_large"
            )
        flat: list[Any] = []
        _flatten(spec.get("data"), flat, count)
        if len(flat) != count:
            raise TensorDecodeError(
                f"tensor {name!r} has {len(flat)} values but its shape needs {count}"
            )
        try:
            arrays[name] = np.asarray(flat, dtype=dtype).reshape(shape)
        except (OverflowError, ValueError):
            raise TensorDecodeError(f"tensor {name!r} has values outside its dtype") from None
    return arrays


def _json_value(array: np.ndarray) -> list[Any]:
    if array.dtype.kind == "f":
        # JSON has no NaN or infinities; send them as strings the decoder of a client can map.
        return [
            v
            if math.isfinite(v)
            else ("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
            for v in array.astype(np.float64).ravel().tolist()
        ]
    return array.ravel().tolist()  # type: ignore[no-any-return]


def encode_json_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {
        name: {"dtype": str(a.dtype), "shape": list(a.shape), "data": _json_value(a)}
        for name, a in arrays.items()
    }


def decode_npz(data: bytes, *, elements_max: int, bytes_max: int) -> dict[str, np.ndarray]:
    """An ``.npz`` archive → arrays; no pickle, bounded uncompressed size and element count."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise TensorDecodeError("the body is not an npz archive") from None
    if not infos:
        raise TensorDecodeError("the npz archive holds no tensors")
    if sum(i.file_size for i in infos) > bytes_max:
        raise TensorDecodeError(
            f"the npz archive expands past {bytes_max} bytes", "input_too_large"
        )
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for info in infos:
        name = _check_name(info.filename.removesuffix(".npy"))
        try:
            with archive.open(info) as member:
                raw = member.read(info.file_size + 1)
            if len(raw) > info.file_size:
                raise TensorDecodeError(
                    "an npz member is larger than its header says", "input_too_large"
                )
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except TensorDecodeError:
            raise
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, RuntimeError):
            raise TensorDecodeError(f"npz member {name!r} is not a valid .npy array") from None
        _check_dtype(str(array.dtype))
        total += array.size
        if total > elements_max:
            raise TensorDecodeError(
                f"inputs may hold at most {elements_max} elements", "input_too_large"
            )
        arrays[name] = array
    return arrays


def encode_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    # Members are written by name, not through np.savez: it takes the names as keyword
    # arguments, so a tensor named "file" broke every response and one named "allow_pickle"
    # vanished into its flag. Names are the registry's safe charset (no "/"), so "NAME.npy" is
    # always a plain member name.
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()
