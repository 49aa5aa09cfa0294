"""The API's tensor decoders take exactly what the sandbox carries: one dtype list, one rank cap."""

from __future__ import annotations

import numpy as np
import pytest

from marketplace.evaluation.tensors import (
    ALLOWED_DTYPES,
    TensorDecodeError,
    decode_json_tensors,
    decode_npz,
    encode_npz,
)
from sandbox import protocol


def test_the_api_allows_the_sandboxs_dtypes_and_no_other() -> None:
    assert ALLOWED_DTYPES == protocol.DTYPE_NAMES
    assert {np.dtype(name) for name in ALLOWED_DTYPES} == set(protocol.CODE_BY_DTYPE)
    assert "object" not in ALLOWED_DTYPES and "str" not in ALLOWED_DTYPES


@pytest.mark.parametrize("dtype", sorted(protocol.DTYPE_NAMES))
def test_every_allowed_dtype_decodes(dtype: str) -> None:
    value = {"x": {"dtype": dtype, "shape": [1], "data": [1]}}
    assert decode_json_tensors(value, elements_max=10)["x"].dtype == np.dtype(dtype)


def test_a_rank_the_sandbox_cannot_carry_is_refused_at_the_door() -> None:
    deepest = [1] * protocol.RANK_MAX
    ok = decode_json_tensors(
        {"x": {"dtype": "float32", "shape": deepest, "data": [0.5]}}, elements_max=10
    )
    assert ok["x"].ndim == protocol.RANK_MAX
    too_deep = {"x": {"dtype": "float32", "shape": [*deepest, 1], "data": [0.5]}}
    with pytest.raises(TensorDecodeError) as exc:
        decode_json_tensors(too_deep, elements_max=10)
    assert exc.value.code == "input_invalid"
    body = encode_npz({"x": np.zeros([1] * (protocol.RANK_MAX + 1), np.float32)})
    with pytest.raises(TensorDecodeError) as exc:
        decode_npz(body, elements_max=10, bytes_max=10_000)
    assert exc.value.code == "input_invalid"


def test_a_string_tensor_is_refused() -> None:
    with pytest.raises(TensorDecodeError):
        decode_json_tensors({"x": {"dtype": "str", "shape": [1], "data": ["a"]}}, elements_max=10)
