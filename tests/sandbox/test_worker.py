"""The worker's call runner, in process: plans, bindings and their fallback."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest

from sandbox import protocol as p
from sandbox.errors import SandboxError
from sandbox.runtime import session_options
from sandbox.worker import WorkerParams, _Canceller, _Runner, _signature
from tests import onnx_models as models

SLOT_INPUT_BYTES = 1 << 20
SLOT_OUTPUT_BYTES = 4 << 20


@pytest.fixture
def runner() -> Iterator[_Runner]:
    session = ort.InferenceSession(
        models.large_output(),
        session_options(constant_folding_bytes_max=1 << 20),
        providers=["CPUExecutionProvider"],
    )
    params = WorkerParams(
        slot_input_bytes=SLOT_INPUT_BYTES,
        slot_output_bytes=SLOT_OUTPUT_BYTES,
        output_bytes_max=SLOT_OUTPUT_BYTES,
        model_bytes=0,
        memory_bytes_max=1 << 30,
        cpu_s_max=60,
        nodes_max=100,
        constant_folding_bytes_max=1 << 20,
        allowed_domains=p.DEFAULT_DOMAINS,
    )
    slot = mmap.mmap(-1, SLOT_INPUT_BYTES + SLOT_OUTPUT_BYTES)
    cancel_r, cancel_w = os.pipe()
    run_options = ort.RunOptions()
    yield _Runner(
        session, _signature(session), params, slot, run_options, _Canceller(cancel_r, run_options)
    )
    os.close(cancel_w)  # The canceller thread sees EOF and ends.


def _call(runner: _Runner, rows: int, seq: int) -> np.ndarray:
    """Place x and rows in the slot as the supervisor would, run, read y back."""
    x = np.full(1, rows, np.float32)
    n = np.array([rows], np.int64)
    runner.buffer[0:4] = x.view(np.uint8)
    runner.buffer[64:72] = n.view(np.uint8)
    body = p.pack_tensor(0, x.dtype, x.shape, 0) + p.pack_tensor(1, n.dtype, n.shape, 64)
    _, reply = runner.call(body, 2, seq)
    t = p.unpack_tensor(reply, 0, runner.output_region)
    return np.ndarray(t.shape, t.dtype, buffer=runner.buffer, offset=t.offset).copy()


def test_large_outputs_are_bound_and_rebound_when_their_shape_changes(runner: _Runner) -> None:
    np.testing.assert_array_equal(_call(runner, 64, 1), np.full((64, 1024), 64, np.float32))
    (state,) = runner.bindings.values()
    assert state is not None  # 256 KiB of output: bound from now on.
    np.testing.assert_array_equal(_call(runner, 64, 2), np.full((64, 1024), 64, np.float32))
    # The bound shape no longer fits: the runner falls back to a plain run, correctly.
    np.testing.assert_array_equal(_call(runner, 100, 3), np.full((100, 1024), 100, np.float32))
    assert list(runner.bindings.values()) == [None]
    np.testing.assert_array_equal(_call(runner, 3, 4), np.full((3, 1024), 3, np.float32))


def test_small_outputs_are_not_bound(runner: _Runner) -> None:
    np.testing.assert_array_equal(_call(runner, 2, 1), np.full((2, 1024), 2, np.float32))
    assert list(runner.bindings.values()) == [None]
    np.testing.assert_array_equal(_call(runner, 5, 2), np.full((5, 1024), 5, np.float32))


def test_outputs_above_the_slot_are_refused(runner: _Runner) -> None:
    with pytest.raises(SandboxError) as exc:
        _call(runner, (SLOT_OUTPUT_BYTES // 4096) + 1, 1)
    assert exc.value.code == "resource_exhausted"
