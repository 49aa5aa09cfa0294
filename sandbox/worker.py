"""The worker: a confined process holding one model's onnxruntime session.

Forked by the zygote. It confines itself first, only then maps the model bytes the supervisor
left in a memfd, checks and loads them, reports the model's signature and serves calls: inputs
are read in place from the shared slot, outputs are copied into the slot's output region, and
only fixed-size headers cross the pipes. A second thread waits on the cancel pipe and sets
`RunOptions.terminate` for the call it names.
"""

from __future__ import annotations

import mmap
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from sandbox import protocol as p
from sandbox.confine import Limits, apply_confinement
from sandbox.errors import (
    DeadlineExceeded,
    InputInvalid,
    ModelInvalid,
    ResourceExhausted,
    SandboxError,
)
from sandbox.runtime import load_session


@dataclass(frozen=True)
class WorkerFds:
    request: int
    response: int
    cancel: int
    slot: int
    model: int


@dataclass(frozen=True)
class WorkerParams:
    """What the supervisor tells a new worker, as JSON through the zygote."""

    slot_input_bytes: int
    slot_output_bytes: int
    # The exact cap on a call's output bytes; the slot's output region is a little larger,
    # for the alignment of each tensor.
    output_bytes_max: int
    model_bytes: int
    memory_bytes_max: int
    cpu_s_max: int
    nodes_max: int
    constant_folding_bytes_max: int
    allowed_domains: tuple[str, ...]
    crash_on_input_name: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerParams:
        return cls(**{**data, "allowed_domains": tuple(data["allowed_domains"])})


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _send_error(fd: int, exc: SandboxError, seq: int = 0) -> None:
    log = (exc.log_detail or "")[-2000:]
    message = {"code": exc.code, "detail": exc.detail[:500], "log": log}
    p.write_all(fd, p.pack_json(p.KIND_ERROR, message, seq=seq, maxrss_kb=_maxrss_kb()))


def _run_error(exc: BaseException) -> SandboxError:
    """Translate an onnxruntime failure during a run; the raw text only goes to log_detail."""
    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, MemoryError) or "alloc" in lowered or "would require more than" in lowered:
        return ResourceExhausted(log_detail=text)
    if "terminate flag" in lowered:
        return DeadlineExceeded(log_detail=text)
    if type(exc).__name__ == "InvalidArgument":
        return InputInvalid("The model rejected the inputs.", log_detail=text)
    return ModelInvalid("The model failed while evaluating.", log_detail=text)


def _signature(session: Any) -> p.Signature:
    def spec(arg: Any) -> p.TensorSpec:
        if len(arg.name) > p.NAME_CHARS_MAX:
            raise ModelInvalid("A tensor name of the model is too long.")
        dtype = p.DTYPE_BY_ORT_TYPE.get(arg.type)
        if dtype is None:
            raise ModelInvalid(f"The tensor {arg.name[:100]!r} has an unsupported type.")
        shape = arg.shape if isinstance(arg.shape, list) else []
        if len(shape) > p.RANK_MAX:
            raise ModelInvalid(f"The tensor {arg.name[:100]!r} has too many dimensions.")
        dims = tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)
        return p.TensorSpec(name=arg.name, dtype=dtype.name, shape=dims)

    inputs = tuple(spec(a) for a in session.get_inputs())
    outputs = tuple(spec(a) for a in session.get_outputs())
    if not 0 < len(inputs) <= p.TENSORS_MAX or not 0 < len(outputs) <= p.TENSORS_MAX:
        raise ModelInvalid("The model has too many or too few inputs or outputs.")
    return p.Signature(inputs=inputs, outputs=outputs)


class _Canceller:
    """Sets RunOptions.terminate when the supervisor cancels the call in progress."""

    def __init__(self, fd: int, run_options: Any) -> None:
        self._fd = fd
        self._run_options = run_options
        self._lock = threading.Lock()
        self._current = 0
        threading.Thread(target=self._watch, daemon=True).start()

    def begin(self, seq: int) -> None:
        with self._lock:
            self._current = seq
            self._run_options.terminate = False

    def end(self) -> None:
        with self._lock:
            self._current = 0

    def _watch(self) -> None:
        while True:
            data = p.read_exact(self._fd, p.CANCEL.size)
            if not data:
                return
            (seq,) = p.CANCEL.unpack(data)
            with self._lock:
                if seq == self._current:
                    self._run_options.terminate = True


def serve(fds: WorkerFds, params: WorkerParams) -> None:
    """Confine this process, load the model and answer calls until the request pipe closes."""
    protections = apply_confinement(
        Limits(
            memory_added_bytes_max=params.memory_bytes_max,
            cpu_s_max=params.cpu_s_max,
            wall_s_max=float(params.cpu_s_max),
            open_files_max=32,
        ),
        keep_fds=(fds.request, fds.response, fds.cancel, fds.slot, fds.model),
    )
    slot_bytes = params.slot_input_bytes + params.slot_output_bytes
    slot = mmap.mmap(fds.slot, slot_bytes)
    os.close(fds.slot)
    if params.model_bytes == 0:  # A probe: report the protections and leave.
        os.close(fds.model)
        ready = {"protections": protections.as_dict()}
        p.write_all(fds.response, p.pack_json(p.KIND_READY, ready, maxrss_kb=_maxrss_kb()))
        return

    try:
        with mmap.mmap(fds.model, params.model_bytes, prot=mmap.PROT_READ) as source:
            model_bytes = source[:]
        os.close(fds.model)
        session = load_session(
            model_bytes,
            allowed_domains=params.allowed_domains,
            nodes_max=params.nodes_max,
            constant_folding_bytes_max=params.constant_folding_bytes_max,
        )
        del model_bytes
        signature = _signature(session)
    except SandboxError as exc:
        _send_error(fds.response, exc)
        return
    except MemoryError:
        _send_error(fds.response, ResourceExhausted("Loading the model exceeded the memory limit."))
        return

    ready = {"protections": protections.as_dict(), "signature": signature.as_json()}
    p.write_all(fds.response, p.pack_json(p.KIND_READY, ready, maxrss_kb=_maxrss_kb()))
    _serve_calls(fds, params, session, signature, slot, ort.RunOptions())


def _serve_calls(
    fds: WorkerFds,
    params: WorkerParams,
    session: Any,
    signature: p.Signature,
    slot: mmap.mmap,
    run_options: Any,
) -> None:
    runner = _Runner(
        session, signature, params, slot, run_options, _Canceller(fds.cancel, run_options)
    )
    request_max = p.REQUEST.size + len(signature.inputs) * p.TENSOR.size
    while True:
        data = os.read(fds.request, request_max)
        if len(data) < p.REQUEST.size:
            return
        op, count, seq = p.REQUEST.unpack_from(data)
        need = p.REQUEST.size + count * p.TENSOR.size
        if op != p.OP_RUN or count > len(signature.inputs):
            return
        if len(data) < need:
            data += p.read_exact(fds.request, need - len(data))
        try:
            run_ns, reply = runner.call(data[p.REQUEST.size : need], count, seq)
        except SandboxError as exc:
            _send_error(fds.response, exc, seq)
            continue
        header = p.RESPONSE.pack(p.KIND_OK, len(signature.outputs), seq, run_ns, _maxrss_kb())
        p.write_all(fds.response, header + reply)


_BIND_OUTPUT_BYTES_MIN = 256 * 1024


class _Runner:
    """Runs calls on the session, with inputs and outputs in the shared slot.

    Feeds (slot views) are cached per request headers, slot views plus packed headers per
    output dtypes and shapes, and, for large outputs, an IOBinding per request headers once a
    call has shown the output shapes: a repeated call validates, allocates and copies as
    little as possible.
    """

    def __init__(
        self,
        session: Any,
        signature: p.Signature,
        params: WorkerParams,
        slot: mmap.mmap,
        run_options: Any,
        canceller: _Canceller,
    ) -> None:
        self.session = session
        self.run_options = run_options
        self.canceller = canceller
        self.buffer = np.frombuffer(slot, dtype=np.uint8)
        self.input_region = (0, params.slot_input_bytes)
        self.output_region = (
            params.slot_input_bytes,
            params.slot_input_bytes + params.slot_output_bytes,
        )
        self.output_bytes_max = params.output_bytes_max
        self.input_names = [s.name for s in signature.inputs]
        self.output_names = [s.name for s in signature.outputs]
        crash_on = params.crash_on_input_name
        self.crash = crash_on is not None and crash_on in self.input_names
        self.feed_plans: dict[bytes, dict[str, np.ndarray]] = {}
        self.output_plans: dict[tuple[Any, ...], tuple[list[np.ndarray], bytes]] = {}
        self.bindings: dict[bytes, tuple[Any, bytes] | None] = {}

    def call(self, body: bytes, count: int, seq: int) -> tuple[int, bytes]:
        """Run one call; returns (run time in ns, output headers)."""
        feeds = self.feed_plans.get(body)
        if feeds is None:
            feeds = _feeds(body, count, self.buffer, self.input_region, self.input_names)
            p.remember(self.feed_plans, body, feeds)
        if self.crash:  # Test hook, enabled only by the pool's explicit configuration.
            os.kill(os.getpid(), signal.SIGSEGV)
        bound = self.bindings.get(body)
        if bound is not None:
            self.canceller.begin(seq)
            started = time.perf_counter_ns()
            try:
                self.session.run_with_iobinding(bound[0], self.run_options)
                return time.perf_counter_ns() - started, bound[1]
            except BaseException as exc:
                error = _run_error(exc)
                if error.code == DeadlineExceeded.code:
                    raise error from None
                # Perhaps the output shapes changed with the data: run unbound from now on.
                self.bindings[body] = None
            finally:
                self.canceller.end()
        return self._run_plain(body, feeds, seq)

    def _run_plain(self, body: bytes, feeds: dict[str, np.ndarray], seq: int) -> tuple[int, bytes]:
        self.canceller.begin(seq)
        started = time.perf_counter_ns()
        try:
            outputs = self.session.run(self.output_names, feeds, self.run_options)
        except BaseException as exc:
            raise _run_error(exc) from None
        finally:
            self.canceller.end()
        run_ns = time.perf_counter_ns() - started
        try:
            key = tuple((value.dtype, value.shape) for value in outputs)
        except AttributeError:
            raise ModelInvalid("The model produced a non-tensor output.") from None
        plan = self.output_plans.get(key)
        if plan is None:
            plan = _output_plan(outputs, self.buffer, self.output_region, self.output_bytes_max)
            p.remember(self.output_plans, key, plan)
        targets, reply = plan
        for target, value in zip(targets, outputs, strict=True):
            np.copyto(target, value, casting="no")
        if body not in self.bindings:
            # A bound run costs tens of microseconds more than a plain one on this
            # onnxruntime, so binding only pays off when it saves copying large outputs.
            if sum(target.nbytes for target in targets) >= _BIND_OUTPUT_BYTES_MIN:
                binding = _bind(self.session, feeds, self.output_names, targets)
                p.remember(self.bindings, body, (binding, reply))
            else:
                p.remember(self.bindings, body, None)
        return run_ns, reply


def _bind(
    session: Any, feeds: dict[str, np.ndarray], output_names: list[str], targets: list[np.ndarray]
) -> Any:
    """An IOBinding reading the inputs from and writing the outputs straight into the slot.

    Once a call with these input shapes has shown the output shapes, later calls skip the
    output allocation and the copy into the slot.
    """
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
    for name, target in zip(output_names, targets, strict=True):
        binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(target))
    return binding


def _feeds(
    body: bytes,
    count: int,
    buffer: np.ndarray,
    region: tuple[int, int],
    input_names: list[str],
) -> dict[str, np.ndarray]:
    feeds = {}
    for i in range(count):
        t = p.unpack_tensor(body, i * p.TENSOR.size, region)
        if t.index >= len(input_names):
            raise InputInvalid(log_detail="input index out of range")
        feeds[input_names[t.index]] = np.ndarray(t.shape, t.dtype, buffer=buffer, offset=t.offset)
    return feeds


def _output_plan(
    outputs: list[Any], buffer: np.ndarray, region: tuple[int, int], bytes_max: int
) -> tuple[list[np.ndarray], bytes]:
    targets = []
    descriptors = []
    offset, end = region
    total = 0
    for index, value in enumerate(outputs):
        if not isinstance(value, np.ndarray) or value.dtype not in p.CODE_BY_DTYPE:
            raise ModelInvalid("The model produced an output of an unsupported type.")
        if value.ndim > p.RANK_MAX:
            raise ModelInvalid("The model produced an output with too many dimensions.")
        total += value.nbytes
        if total > bytes_max or offset + value.nbytes > end:
            raise ResourceExhausted("The model's outputs exceed the output size limit.")
        targets.append(np.ndarray(value.shape, value.dtype, buffer=buffer, offset=offset))
        descriptors.append(p.pack_tensor(index, value.dtype, value.shape, offset))
        offset = p.align(offset + value.nbytes)
    return targets, b"".join(descriptors)
