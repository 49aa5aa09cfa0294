"""Tensors on the wire: JSON ``{dtype, shape, data}`` and ``application/x-npz``.

Framework-free so that a Python client can use the same codec. Decoding is defensive: the
element count and byte size are checked against the declared shape and the caps *before* any
array is built, and npz archives are read without pickle, with a bound on their uncompressed
size, and with every ``.npy`` header checked before its data is touched. Encoding copies no
tensor: npz members are the arrays' own buffers, written as they are.

npz member names are tensor names made safe to extract (:func:`npz_member_name`): characters
outside ``[A-Za-z0-9_.-]`` (and a leading dot) are percent-encoded as UTF-8, so a vendor's
output called ``../../etc/x`` arrives as ``%2E%2E%2F%2E%2E%2Fetc%2Fx.npy``, never as a path.
Decoding reverses it (``urllib.parse.unquote``).
"""

from __future__ import annotations

import io
import lzma
import math
import re
import string
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import IO, Any
from urllib.parse import unquote

import numpy as np

from sandbox.protocol import CODE_BY_DTYPE, DTYPE_NAMES, RANK_MAX, remember

NPZ_MIME = "application/x-npz"

# Only the tensors the sandbox carries cross the API (its one allow-list, plain numeric and
# boolean dtypes: object and string dtypes would let a caller smuggle Python objects or unbounded
# text), and no more dimensions than its wire format holds.
ALLOWED_DTYPES = DTYPE_NAMES
_ALLOWED_NUMPY = frozenset(CODE_BY_DTYPE)
NAME_LENGTH_MAX = 256
# JSON has no NaN or infinities: they travel as these strings, both ways.
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class TensorDecodeError(ValueError):
    """The tensors are malformed or over a cap; ``code`` is the stable error code."""

    def __init__(self, message: str, *, code: str = "input_invalid") -> None:
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
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise TensorDecodeError("every dimension must be a non-negative integer")
        dims.append(dim)
    _check_dims(dims, elements_max, f"a tensor may have at most {elements_max} elements")
    return tuple(dims)


def _check_dims(dims: Sequence[int], elements_max: int, too_large: str) -> int:
    """Refuse negative dimensions, and shapes past ``elements_max``; the element count.

    A zero dimension makes the count zero whatever the others are, yet numpy still refuses
    (with a ValueError) a shape whose other dimensions overflow: so the bound holds for the
    shape with its zeros counted as ones.
    """
    if any(dim < 0 for dim in dims):
        raise TensorDecodeError("every dimension must be a non-negative integer")
    if math.prod(max(dim, 1) for dim in dims) > elements_max:
        raise TensorDecodeError(too_large, code="input_too_large")
    return math.prod(dims)


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


def _numeric_array(
    data: object, dtype: np.dtype[Any], shape: tuple[int, ...], count: int
) -> np.ndarray | None:
    """The common case in C: data that is plain numbers (or booleans) of the declared count.

    None sends the caller to the element-by-element path, which accepts the spelled-out
    non-finite values and words its errors precisely.
    """
    if not isinstance(data, list):
        return None
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    if raw.dtype.kind not in "biuf" or raw.size != count:
        return None
    if dtype.kind in "iu" and raw.size:
        if raw.dtype.kind == "f":
            return None
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise TensorDecodeError("a tensor has values outside its dtype")
    return raw.astype(dtype, copy=False).reshape(shape)


def decode_json_tensors(
    payload: object, *, elements_max: int, bytes_max: int | None = None
) -> dict[str, np.ndarray]:
    """``{name: {dtype, shape, data}}`` → arrays, with every size checked before allocation.

    ``bytes_max`` bounds the tensors' total bytes (JSON inputs have a smaller limit than npz,
    since every value costs a Python object on the way in).
    """
    if not isinstance(payload, Mapping) or not payload:
        raise TensorDecodeError("inputs must be a non-empty object of named tensors")
    specs: list[tuple[str, np.dtype[Any], tuple[int, ...], object]] = []
    total = 0
    total_bytes = 0
    # Every declared size first: nothing is flattened before the whole request is known to fit.
    for name, spec in payload.items():
        _check_name(name)
        if not isinstance(spec, Mapping) or set(spec) - {"dtype", "shape", "data"}:
            raise TensorDecodeError(f"tensor {name!r} must be an object with dtype, shape and data")
        dtype = _check_dtype(spec.get("dtype"))
        shape = _check_shape(spec.get("shape"), elements_max)
        count = math.prod(shape)
        total += count
        total_bytes += count * dtype.itemsize
        if total > elements_max:
            raise TensorDecodeError(
                f"inputs may hold at most {elements_max} elements", code="input_too_large"
            )
        if bytes_max is not None and total_bytes > bytes_max:
            raise TensorDecodeError(
                f"JSON inputs may hold at most {bytes_max} tensor bytes; "
                f"send larger inputs as {NPZ_MIME}",
                code="input_too_large",
            )
        specs.append((name, dtype, shape, spec.get("data")))
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, shape, data in specs:
        count = math.prod(shape)
        fast = _numeric_array(data, dtype, shape, count)
        if fast is not None:
            arrays[name] = fast
            continue
        flat: list[Any] = []
        _flatten(data, flat, count)
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
    flat = array.ravel()
    if array.dtype.kind == "f" and not np.isfinite(flat).all():
        # JSON has no NaN or infinities; send them as strings the decoder of a client can map.
        return [
            v
            if math.isfinite(v)
            else ("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
            for v in flat.tolist()
        ]
    return flat.tolist()  # type: ignore[no-any-return]


def encode_json_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {
        name: {"dtype": str(a.dtype), "shape": list(a.shape), "data": _json_value(a)}
        for name, a in arrays.items()
    }


# --- npz ------------------------------------------------------------------------------------

_NAME_SAFE = frozenset(string.ascii_letters + string.digits + "_.-")
_NPY_HEADER_BYTES_MAX = 10_000  # numpy's own bound on a .npy header
# Parsed .npy headers by their exact bytes: (dtype, shape, Fortran order).
_NPY_PARSED: dict[bytes, tuple[np.dtype[Any], tuple[int, ...], bool]] = {}
_NPY_CACHED_HEADER_BYTES_MAX = 256
# Written .npy headers of C-ordered arrays by (dtype, shape).
_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}
# What numpy writes for a version 1.0 header: magic, length, the dict literal, padding.
_NPY_HEADER_RE = re.compile(
    rb"\x93NUMPY\x01\x00..\{'descr': '(?P<descr>[<>|=][a-z][0-9]{1,2})', "
    rb"'fortran_order': (?P<fortran>True|False), 'shape': \((?P<shape>[0-9, ]{0,200})\), \} *\n",
    re.DOTALL,
)
_ZIP_LOCAL = struct.Struct("<4sHHHHHLLLHH")
_ZIP_CENTRAL = struct.Struct("<4sHHHHHHLLLHHHHHLL")
_ZIP_END = struct.Struct("<4sHHHHLLH")
_ZIP_LOCAL_SIG = b"PK\x03\x04"
_ZIP_CENTRAL_SIG = b"PK\x01\x02"
_ZIP_END_SIG = b"PK\x05\x06"
_ZIP_DOS_DATE = 0x21  # 1980-01-01: archives do not depend on the clock
_ZIP_UTF8_NAME = 0x800  # the general-purpose flag for UTF-8 member names
_ZIP_EXTRACT_VERSION_MAX = 63  # zipfile's own limit
_ZIP32_LIMIT = 1 << 32


def npz_member_name(name: str) -> str:
    """The archive member for tensor ``name``: percent-encoded outside a safe set, plus ``.npy``."""
    out = []
    for i, byte in enumerate(name.encode()):
        char = chr(byte)
        if char in _NAME_SAFE and not (i == 0 and char == "."):
            out.append(char)
        else:
            out.append(f"%{byte:02X}")
    return "".join(out) + ".npy"


def _tensor_name(member: str) -> str:
    try:
        name = unquote(member.removesuffix(".npy"), errors="strict")
    except UnicodeDecodeError:
        raise TensorDecodeError("npz member names must be UTF-8") from None
    return _check_name(name)


def _parse_npy_header(
    data: memoryview | bytes, name: str
) -> tuple[np.dtype[Any], tuple[int, ...], bool, int]:
    """The dtype, shape, Fortran order and data offset a ``.npy`` member's header declares."""
    fast = _NPY_HEADER_RE.match(bytes(data[:256]))
    if fast is not None:
        # The exact header numpy itself writes, parsed without numpy's literal evaluator
        # (which costs more than a small model's run).
        try:
            dtype = np.dtype(fast["descr"].decode())
        except TypeError:
            raise TensorDecodeError(f"npz member {name!r} is not a valid .npy array") from None
        dims = fast["shape"].decode()
        shape = tuple(int(d) for d in dims.replace(" ", "").split(",") if d)
        return dtype, shape, fast["fortran"] == b"True", fast.end()
    head = io.BytesIO(bytes(data[: _NPY_HEADER_BYTES_MAX + 16]))
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
        else:
            raise ValueError("unsupported .npy version")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        raise TensorDecodeError(f"npz member {name!r} is not a valid .npy array") from None
    return dtype, shape, fortran, head.tell()


def _check_npy(
    name: str, dtype: np.dtype[Any], shape: tuple[int, ...], elements_left: int, data_bytes: int
) -> int:
    """Refuse a member whose declared dtype, rank, size or data length breaks a cap; its count."""
    if dtype.hasobject or dtype.shape or dtype.newbyteorder("=") not in _ALLOWED_NUMPY:
        raise TensorDecodeError(f"dtype must be one of {', '.join(sorted(ALLOWED_DTYPES))}")
    if len(shape) > RANK_MAX:
        raise TensorDecodeError(f"shape must be a list of at most {RANK_MAX} dimensions")
    count = _check_dims(shape, elements_left, "inputs hold more elements than allowed")
    if data_bytes != count * dtype.itemsize:
        raise TensorDecodeError(f"npz member {name!r} does not hold the data its header declares")
    return count


def _npy_array(data: memoryview, name: str, elements_left: int) -> np.ndarray:
    """The array in one ``.npy`` member, its header checked before its data is used."""
    # A header seen before (clients send the same shapes again and again): its parsed form,
    # keyed by its exact bytes. The caps are checked on every call all the same.
    end = 10 + (data[8] | data[9] << 8) if len(data) >= 10 else -1
    cacheable = 0 < end <= _NPY_CACHED_HEADER_BYTES_MAX
    known = _NPY_PARSED.get(bytes(data[:end])) if cacheable else None
    if known is not None:
        dtype, shape, fortran = known
        offset = end
    else:
        dtype, shape, fortran, offset = _parse_npy_header(data, name)
        if cacheable and offset == end:
            remember(_NPY_PARSED, bytes(data[:end]), (dtype, shape, fortran))
    count = _check_npy(name, dtype, shape, elements_left, len(data) - offset)
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    array = array.reshape(shape, order="F" if fortran else "C")
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


@dataclass(frozen=True)
class _Member:
    """One archive member: its name, declared (uncompressed) size and how to read it (given the
    tensor's name, for messages)."""

    name: str
    size: int
    read: Callable[[str], memoryview]


def _stored_member(body: memoryview, at: int, size: int, crc: int, _name: str = "") -> memoryview:
    """The bytes of the stored member whose local header is at ``at``, as a view into the body
    (no copy), its CRC checked."""
    if not 0 <= at <= len(body) - _ZIP_LOCAL.size:
        raise TensorDecodeError("the npz archive is truncated")
    fields = _ZIP_LOCAL.unpack_from(body, at)
    if fields[0] != _ZIP_LOCAL_SIG:
        raise TensorDecodeError("the body is not an npz archive")
    start = at + _ZIP_LOCAL.size + fields[9] + fields[10]
    end = start + size
    if end > len(body):
        raise TensorDecodeError("the npz archive is truncated")
    data = body[start:end]
    if zlib.crc32(data) != crc:
        raise TensorDecodeError("an npz member fails its checksum")
    return data


def _plain_members(body: memoryview) -> list[_Member] | None:
    """The members of an archive laid out as ``np.savez`` and this module write it, else None.

    That layout is read from the central directory by hand: no archive comment, nothing before
    the first member, no Zip64 records, no extra fields, no encryption or data descriptors,
    stored members with ASCII names free of NUL. Anything else (compressed members included)
    goes to :func:`_zipfile_members`, which reads it as zipfile does.
    """
    size = len(body)
    if size < _ZIP_END.size:
        return None
    end_at = size - _ZIP_END.size
    signature, disk, cd_disk, on_disk, entries, cd_size, cd_at, comment = _ZIP_END.unpack_from(
        body, end_at
    )
    if (
        signature != _ZIP_END_SIG
        or comment
        or disk
        or cd_disk
        or on_disk != entries
        or cd_at + cd_size != end_at
    ):
        return None
    members = []
    at = cd_at
    for _ in range(entries):
        if at + _ZIP_CENTRAL.size > end_at:
            return None
        fields = _ZIP_CENTRAL.unpack_from(body, at)
        flags, method, crc, packed, unpacked = fields[3], fields[4], fields[7], fields[8], fields[9]
        name_len, extra_len, comment_len, local_at = fields[10], fields[11], fields[12], fields[16]
        name = bytes(body[at + _ZIP_CENTRAL.size : at + _ZIP_CENTRAL.size + name_len])
        at += _ZIP_CENTRAL.size + name_len + extra_len + comment_len
        if (
            fields[0] != _ZIP_CENTRAL_SIG
            or fields[2] > _ZIP_EXTRACT_VERSION_MAX
            or flags & ~_ZIP_UTF8_NAME
            or method != zipfile.ZIP_STORED
            or extra_len
            or packed != unpacked
            or at > end_at
            or not name.isascii()
            or b"\0" in name
        ):
            return None
        members.append(
            _Member(name.decode(), unpacked, partial(_stored_member, body, local_at, unpacked, crc))
        )
    return members if at == end_at else None


def _zipfile_members(data: bytes, body: memoryview) -> list[_Member]:
    """The members of any archive zipfile reads; compressed ones inflate up to their size."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError):
        raise TensorDecodeError("the body is not an npz archive") from None

    def stored(info: zipfile.ZipInfo, _name: str) -> memoryview:
        if info.compress_size != info.file_size:
            raise TensorDecodeError("the npz archive is truncated")
        return _stored_member(body, info.header_offset, info.file_size, info.CRC)

    def inflated(info: zipfile.ZipInfo, name: str) -> memoryview:
        try:
            with archive.open(info) as stream:
                raw = stream.read(info.file_size + 1)
        except (
            ValueError,
            OSError,
            zipfile.BadZipFile,
            EOFError,
            RuntimeError,
            zlib.error,
            lzma.LZMAError,  # not an OSError, unlike bz2's errors
        ):
            raise TensorDecodeError(f"npz member {name!r} is not a valid .npy array") from None
        except NotImplementedError:
            raise TensorDecodeError(f"npz member {name!r} uses an unknown compression") from None
        if len(raw) != info.file_size:
            raise TensorDecodeError(
                "an npz member's size differs from its header", code="input_too_large"
            )
        return memoryview(raw)

    return [
        _Member(
            info.filename,
            info.file_size,
            partial(stored if info.compress_type == zipfile.ZIP_STORED else inflated, info),
        )
        for info in infos
    ]


def decode_npz(data: bytes, *, elements_max: int, bytes_max: int) -> dict[str, np.ndarray]:
    """An ``.npz`` archive → arrays; no pickle, bounded size, headers checked before data.

    Stored (uncompressed) members become arrays over the body's own bytes; compressed ones are
    inflated up to their declared, bounded size.
    """
    body = memoryview(data)
    members = _plain_members(body)
    if members is None:
        members = _zipfile_members(data, body)
    if not members:
        raise TensorDecodeError("the npz archive holds no tensors")
    if sum(member.size for member in members) > bytes_max:
        raise TensorDecodeError(
            f"the npz archive expands past {bytes_max} bytes", code="input_too_large"
        )
    arrays: dict[str, np.ndarray] = {}
    left = elements_max
    for member in members:
        name = _tensor_name(member.name)
        if name in arrays:
            raise TensorDecodeError(f"the npz archive holds {name!r} twice")
        array = _npy_array(member.read(name), name, left)
        left -= array.size
        arrays[name] = array
    return arrays


@dataclass(frozen=True)
class NpyMember:
    """One array of an npz archive on disk: its header, and where its C-ordered data starts."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int


def npz_layout(file: IO[bytes], *, elements_max: int, arrays_max: int) -> list[NpyMember]:
    """The arrays of an npz archive on disk, from their headers, so that rows can be read in place.

    Only what :func:`read_rows` can read without loading a whole array is accepted: stored
    (uncompressed) members in C order, as ``numpy.savez`` writes them. Every member's checksum
    is verified, reading the file once in bounded pieces.
    """
    try:
        archive = zipfile.ZipFile(file)
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise TensorDecodeError("the file is not an npz archive") from None
    if not infos:
        raise TensorDecodeError("the npz archive holds no arrays")
    if len(infos) > arrays_max:
        raise TensorDecodeError(f"the npz archive holds more than {arrays_max} arrays")
    members: list[NpyMember] = []
    seen: set[str] = set()
    left = elements_max
    for info in infos:
        name = _tensor_name(info.filename)
        if name in seen:
            raise TensorDecodeError(f"the npz archive holds {name!r} twice")
        seen.add(name)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise TensorDecodeError(
                f"npz member {name!r} is compressed or encrypted; save with numpy.savez, "
                "not savez_compressed"
            )
        file.seek(info.header_offset)
        local = file.read(_ZIP_LOCAL.size)
        if len(local) != _ZIP_LOCAL.size or local[:4] != _ZIP_LOCAL_SIG:
            raise TensorDecodeError("the npz archive is truncated")
        fields = _ZIP_LOCAL.unpack(local)
        start = info.header_offset + _ZIP_LOCAL.size + fields[9] + fields[10]
        file.seek(start)
        head = file.read(min(info.file_size, _NPY_HEADER_BYTES_MAX + 16))
        dtype, shape, fortran, header_bytes = _parse_npy_header(head, name)
        count = _check_npy(name, dtype, shape, left, info.file_size - header_bytes)
        if fortran and len(shape) > 1:
            raise TensorDecodeError(f"npz member {name!r} is in Fortran order; save it in C order")
        left -= count
        file.seek(start)
        crc, remaining = 0, info.file_size
        while remaining > 0:
            piece = file.read(min(remaining, 1 << 20))
            if not piece:
                raise TensorDecodeError("the npz archive is truncated")
            crc = zlib.crc32(piece, crc)
            remaining -= len(piece)
        if crc != info.CRC:
            raise TensorDecodeError("an npz member fails its checksum")
        members.append(NpyMember(name, dtype, tuple(shape), start + header_bytes))
    return members


def read_rows(file: IO[bytes], member: NpyMember, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` (along the first axis) of ``member``, read in place, native order."""
    if not member.shape or not 0 <= start <= stop <= member.shape[0]:
        raise ValueError("rows outside the array")
    row_shape = member.shape[1:]
    row_bytes = member.dtype.itemsize * math.prod(row_shape)
    file.seek(member.offset + start * row_bytes)
    data = file.read((stop - start) * row_bytes)
    if len(data) != (stop - start) * row_bytes:
        raise TensorDecodeError("the npz archive is truncated")
    array = np.frombuffer(data, dtype=member.dtype).reshape((stop - start, *row_shape))
    if not member.dtype.isnative:
        return array.astype(member.dtype.newbyteorder("="))
    return array


def _npy_header(array: np.ndarray) -> bytes:
    """numpy's own .npy header for a C-ordered array, kept per dtype and shape (numpy's writer
    costs more than a small model's run)."""
    key = (array.dtype.str, array.shape)
    header = _NPY_HEADERS.get(key)
    if header is None:
        # Rank is at most 8 here, so the version 1.0 header (up to 64 KiB) always suffices.
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buffer, np.lib.format.header_data_from_array_1_0(array)
        )
        header = remember(_NPY_HEADERS, key, buffer.getvalue())
    return header


def encode_npz_chunks(
    arrays: Mapping[str, np.ndarray], chunk_bytes: int = 1 << 20
) -> Iterator[bytes]:
    """An ``.npz`` archive of ``arrays`` as chunks of at most ``chunk_bytes`` of tensor data.

    The archive is an uncompressed (stored) zip, which is what ``np.savez`` writes: each member
    is a ``.npy`` header followed by the array's own buffer, sliced into chunks as it is sent,
    so the whole archive never exists in memory. Member names come from
    :func:`npz_member_name`, so no tensor name can become a path.
    """
    directory: list[bytes] = []
    offset = 0
    for name, array in arrays.items():
        # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
        data = array if array.flags.c_contiguous else array.copy(order="C")
        header = _npy_header(data)
        flat = data.reshape(-1).view(np.uint8)
        body = memoryview(flat) if data.nbytes else memoryview(b"")  # type: ignore[arg-type]
        crc = zlib.crc32(body, zlib.crc32(header))
        size = len(header) + data.nbytes
        member = npz_member_name(name).encode()
        if size >= _ZIP32_LIMIT or offset >= _ZIP32_LIMIT:
            raise ValueError("npz members above 4 GiB are not written")
        local = _ZIP_LOCAL.pack(_ZIP_LOCAL_SIG, 20, 0, 0, 0, 0x21, crc, size, size, len(member), 0)
        directory.append(
            _ZIP_CENTRAL.pack(
                _ZIP_CENTRAL_SIG,
                20,
                20,
                0,
                0,
                0,
                0x21,
                crc,
                size,
                size,
                len(member),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + member
        )
        yield local + member + header
        for start in range(0, data.nbytes, chunk_bytes):
            yield bytes(body[start : start + chunk_bytes])
        offset += len(local) + len(member) + size
    central = b"".join(directory)
    yield central + _ZIP_END.pack(
        _ZIP_END_SIG, 0, 0, len(directory), len(directory), len(central), offset, 0
    )


def encode_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The whole archive as bytes (for clients and tests; responses stream the chunks)."""
    return b"".join(encode_npz_chunks(arrays))
