"""The wire format: headers from a worker are bounds-checked, since a worker may be hostile."""

from __future__ import annotations

import numpy as np
import pytest

from sandbox import protocol as p
from sandbox.errors import SandboxError

REGION = (1024, 2048)
F32 = np.dtype(np.float32)


def _header(code: int, rank: int, offset: int, nbytes: int, dims: list[int]) -> bytes:
    dims = dims + [0] * (p.RANK_MAX - len(dims))
    return p.TENSOR.pack(0, code, rank, 0, offset, nbytes, *dims)


def test_a_well_formed_header_round_trips() -> None:
    header = p.pack_tensor(3, F32, (2, 5), 1024)
    t = p.unpack_tensor(header, 0, REGION)
    assert (t.index, t.dtype, t.shape, t.offset, t.nbytes) == (3, F32, (2, 5), 1024, 40)


@pytest.mark.parametrize(
    "header",
    [
        _header(99, 1, 1024, 4, [1]),  # unknown dtype
        _header(1, 9, 1024, 4, [1]),  # rank above the maximum
        _header(1, 1, 1024, 4, [-1]),  # negative dimension
        _header(1, 1, 1024, 8, [1]),  # byte count that does not match the shape
        _header(1, 1, 0, 4, [1]),  # before the region
        _header(1, 1, 2046, 4, [1]),  # runs past the region
    ],
)
def test_malformed_headers_are_refused(header: bytes) -> None:
    with pytest.raises(SandboxError) as exc:
        p.unpack_tensor(header, 0, REGION)
    assert exc.value.code == "worker_crashed"


def test_huge_dimensions_cannot_overflow_the_bounds_check() -> None:
    # 2**62 * 2**2 elements of 4 bytes wraps a 64-bit product; Python integers do not.
    header = _header(1, 2, 1024, 0, [1 << 62, 4])
    with pytest.raises(SandboxError):
        p.unpack_tensor(header, 0, REGION)


def test_signatures_from_a_worker_are_validated() -> None:
    good = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 3]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["N"]}],
    }
    signature = p.Signature.from_json(good)
    assert signature.inputs[0].shape == (None, 3) and signature.outputs[0].shape == (None,)
    for bad in (
        {"inputs": [], "outputs": good["outputs"]},
        {"inputs": [{"name": "x", "dtype": "object", "shape": []}], "outputs": good["outputs"]},
        {"inputs": [{"name": "x", "dtype": "float32", "shape": [1] * 9}], "outputs": []},
        ["not", "an", "object"],
    ):
        with pytest.raises((ValueError, TypeError)):
            p.Signature.from_json(bad)
