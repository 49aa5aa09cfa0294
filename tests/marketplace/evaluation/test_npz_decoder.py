"""The npz decoder: archives as numpy and this module write them, and hostile ones.

Archives laid out as ``np.savez`` writes them are read from their central directory by hand;
every other archive goes through zipfile. Both readings must give the same answer for the same
bytes, however they are damaged.
"""

from __future__ import annotations

import io
import struct
import zipfile
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketplace.evaluation import tensors
from marketplace.evaluation.tensors import TensorDecodeError, decode_npz, encode_npz

LIMITS = {"elements_max": 10_000, "bytes_max": 100_000}


def _savez(arrays: dict[str, np.ndarray], *, compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _zip(members: list[tuple[str, bytes]], **options: object) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", **options) as archive:  # type: ignore[arg-type]
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _refusal(body: bytes, **limits: int) -> str:
    with pytest.raises(TensorDecodeError) as exc:
        decode_npz(body, **(LIMITS | limits))
    return exc.value.code


def _outcome(body: bytes) -> tuple[str, object]:
    try:
        arrays = decode_npz(body, **LIMITS)
    except TensorDecodeError as exc:
        return "refused", exc.code
    return "decoded", {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in arrays.items()}


def _zipfile_outcome(body: bytes) -> tuple[str, object]:
    with mock.patch.object(tensors, "_plain_members", return_value=None):
        return _outcome(body)


ARRAYS = {
    "x": np.arange(12, dtype=np.float32).reshape(3, 4),
    "ids": np.array([[1, -2]], dtype=np.int64),
    "mask": np.array(True),
    "empty": np.zeros((0, 3), np.uint8),
}


@pytest.mark.parametrize(
    "encode",
    [_savez, lambda a: _savez(a, compressed=True), encode_npz],
    ids=["np.savez", "np.savez_compressed", "encode_npz"],
)
def test_archives_from_numpy_and_this_module_decode_exactly(encode):
    decoded = decode_npz(encode(ARRAYS), **LIMITS)
    assert list(decoded) == list(ARRAYS)
    for name, value in ARRAYS.items():
        assert decoded[name].dtype == value.dtype and decoded[name].shape == value.shape
        np.testing.assert_array_equal(decoded[name], value)


def test_stored_members_are_views_of_the_body_not_copies():
    body = _savez({"x": np.arange(1000, dtype=np.float32)})
    x = decode_npz(body, **LIMITS)["x"]
    assert not x.flags.owndata and not x.flags.writeable


def test_big_endian_and_fortran_order_arrive_native_and_equal():
    value = np.arange(6, dtype=">f8").reshape(2, 3)
    decoded = decode_npz(_savez({"a": value, "f": np.asfortranarray(value)}), **LIMITS)
    for array in decoded.values():
        assert array.dtype == np.dtype("float64") and array.dtype.isnative
        np.testing.assert_array_equal(array, value)


def test_archives_zipfile_reads_but_numpy_does_not_write_still_decode():
    member = _npy(np.ones(3, np.float32))
    commented = io.BytesIO()
    with zipfile.ZipFile(commented, "w") as archive:
        archive.writestr("x.npy", member)
        archive.comment = b"made elsewhere"
    prefixed = b"#!prefix\n" + _zip([("x.npy", member)])
    utf8 = _zip([("名字.npy", member)])
    for body in (commented.getvalue(), prefixed, utf8):
        (value,) = decode_npz(body, **LIMITS).values()
        np.testing.assert_array_equal(value, np.ones(3, np.float32))


def _flip_data_byte(body: bytes) -> bytes:
    at = body.index(b"\x93NUMPY") + 200  # inside the array data of a 100-element member
    return body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1 :]


def _with_central_field(body: bytes, offset: int, fmt: str, value: int) -> bytes:
    at = body.rindex(b"PK\x01\x02") + offset
    return body[:at] + struct.pack(fmt, value) + body[at + struct.calcsize(fmt) :]


X100 = _savez({"x": np.zeros(100, np.float32)})


@pytest.mark.parametrize(
    ("body", "limits", "code"),
    [
        (b"", {}, "input_invalid"),
        (b"not a zip archive at all, just some bytes", {}, "input_invalid"),
        (_zip([]), {}, "input_invalid"),
        (X100[: len(X100) // 2], {}, "input_invalid"),
        (X100[:-1], {}, "input_invalid"),
        (_flip_data_byte(X100), {}, "input_invalid"),
        (_zip([("x.npy", _npy(np.ones(2))), ("%78.npy", _npy(np.ones(2)))]), {}, "input_invalid"),
        (_zip([("%FF.npy", _npy(np.ones(2)))]), {}, "input_invalid"),
        (_zip([("n" * 300 + ".npy", _npy(np.ones(2)))]), {}, "input_invalid"),
        (_zip([("x.npy", b"\x93NUMPY not really")]), {}, "input_invalid"),
        (_savez({"x": np.zeros(5000, np.float32)}), {"bytes_max": 1000}, "input_too_large"),
        (_savez({"x": np.zeros(500, np.float32)}), {"elements_max": 100}, "input_too_large"),
        # Declares 2 GiB once inflated: refused before anything is inflated.
        (
            _with_central_field(
                _savez({"x": np.zeros(100, np.float32)}, compressed=True), 24, "<L", 1 << 31
            ),
            {},
            "input_too_large",
        ),
        # Stored, but its local header is said to lie past the end of the body.
        (_with_central_field(X100, 42, "<L", len(X100) + 10), {}, "input_invalid"),
        # Stored, with a compressed size that differs from its size.
        (_with_central_field(X100, 20, "<L", 10), {}, "input_invalid"),
        # A format version zipfile does not read.
        (_with_central_field(X100, 6, "<H", 99), {}, "input_invalid"),
        # An unknown compression method.
        (_with_central_field(X100, 10, "<H", 99), {}, "input_invalid"),
    ],
    ids=[
        "empty-body",
        "not-zip",
        "no-members",
        "cut-in-half",
        "cut-by-one",
        "bad-crc",
        "twice",
        "name-not-utf8",
        "name-too-long",
        "not-npy",
        "over-bytes-max",
        "over-elements-max",
        "inflate-bomb",
        "member-past-end",
        "sizes-differ",
        "version-99",
        "method-99",
    ],
)
def test_hostile_archives_are_refused_with_their_code(body, limits, code):
    assert _refusal(body, **limits) == code
    with mock.patch.object(tensors, "_plain_members", return_value=None):
        assert _refusal(body, **limits) == code


_small_arrays = st.dictionaries(
    st.text("abxyz_.%-", min_size=1, max_size=6),
    st.tuples(
        st.sampled_from(["<f4", "<i8", "|u1", "|b1", ">f8", "<f2"]),
        st.lists(st.integers(0, 3), max_size=3),
    ).map(lambda spec: np.zeros(spec[1], np.dtype(spec[0]))),
    min_size=1,
    max_size=3,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrays=_small_arrays,
    writer=st.sampled_from(["savez", "encode_npz", "savez_compressed"]),
    damage=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 1 << 16)),
)
def test_damaged_archives_get_the_same_answer_as_zipfile_gives(arrays, writer, damage, cut):
    if writer == "encode_npz":
        body = bytearray(encode_npz(arrays))
    else:
        body = bytearray(_savez(arrays, compressed=writer == "savez_compressed"))
    for at, value in damage:
        body[at % len(body)] = value
    data = bytes(body if cut is None else body[: cut % (len(body) + 1)])
    outcome = _outcome(data)
    assert outcome == _zipfile_outcome(data)
    if not damage and cut is None and not any("%" in name for name in arrays):
        assert outcome[0] == "decoded"
