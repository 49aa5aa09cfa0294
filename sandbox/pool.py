"""The supervisor: a pool of confined, warm onnxruntime workers behind `evaluate`.

Lives in the web process and never imports onnxruntime. It starts a zygote (`sandbox.zygote`),
asks it to fork one worker per model in use (more for a busy model, up to
`workers_per_model_max`), keeps those workers warm in an LRU bounded by `workers_max` and
`memory_budget_bytes`, and talks to each over two pipes and a shared-memory slot.

Time limits: `queue_timeout_s` for admission, `load_timeout_s` for a cold start, the per-call
deadline (`deadline_s`, default `eval_timeout_s`) for the run. At the deadline the worker is
asked to terminate (RunOptions.terminate, checked between nodes); if it has not answered after
`kill_grace_s` it is SIGKILLed and replaced lazily.

The pool is cut along its seams: `sandbox.admission` (how many run and wait),
`sandbox.quarantine` (who pays for a bad call), `sandbox.cache` (the warm workers and their
eviction), `sandbox.channel` (one worker's process, pipes and slot, and one call over them); the
pool keeps the zygote, the models' signatures and load refusals, and the orchestration.

Who pays for a bad call: every call names its `version` (the catalog entry it runs) and its
`caller`. A call that runs to its deadline, or whose worker crashes, throttles that caller on
that version for `throttle_s` (`caller_throttled`): one buyer's hostile inputs slow down only
that buyer. A version is quarantined for everyone (`model_quarantined`, for `quarantine_s`)
only when calls from `quarantine_callers` distinct callers crashed its worker within
`quarantine_window_s`: then the model itself is at fault, not one caller's inputs. Quarantine
is never keyed by content, so a rival who uploads the same bytes cannot get someone else's
version quarantined. Failures a worker survives (bad input, refused allocation) count for
neither.

A worker is confined (see `sandbox.confine`) before it reads the model bytes; it must report
every protection in `required_protections` or the pool refuses to use it.

Outputs above `output_bytes_max` are `resource_exhausted` (the model asked for more than the
sandbox grants), inputs that break the signature or the caps are `input_invalid`. Inputs and
outputs are numeric or boolean tensors of rank <= 8 (see `sandbox.protocol`); a model with
string, sequence or map inputs or outputs is `model_invalid` here.

`model_key` must identify the model's bytes (the marketplace uses their sha256): warm workers,
cached signatures and load refusals are keyed by it, so identical bytes share warm workers.
"""

from __future__ import annotations

import collections
import contextlib
import json
import mmap
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from sandbox import protocol as p
from sandbox.admission import Admission
from sandbox.cache import WorkerCache
from sandbox.channel import Worker, Zygote, error_from, memfd
from sandbox.confine import GiB, MiB, Protections
from sandbox.errors import (
    DeadlineExceeded,
    InputInvalid,
    ModelInvalid,
    ResourceExhausted,
    SandboxError,
    SandboxUnavailable,
    WorkerCrashed,
)
from sandbox.quarantine import Quarantine

_PROTECTION_NAMES = frozenset(f.name for f in fields(Protections))


def missing_protections(required: Iterable[str], reported: Mapping[str, Any]) -> list[str]:
    """The required protections a worker did not report as in force."""
    return [name for name in required if reported.get(name) is not True]


@dataclass(frozen=True)
class PoolConfig:
    """Every limit of the pool, units last."""

    workers_max: int = 4
    workers_per_model_max: int = 2
    # Concurrent runs; None means one per core, but never more than workers_max.
    workers_busy_max: int | None = None
    queue_max: int = 32
    queue_timeout_s: float = 10.0
    memory_budget_bytes: int = 8 * GiB
    # Address space a worker may map beyond what it inherits from the zygote (RLIMIT_AS).
    worker_memory_bytes_max: int = 2 * GiB
    worker_cpu_s_max: int = 3600
    eval_timeout_s: float = 10.0
    kill_grace_s: float = 0.25
    load_timeout_s: float = 30.0
    zygote_start_timeout_s: float = 30.0
    model_bytes_max: int = 512 * MiB
    input_bytes_max: int = 64 * MiB
    input_elements_max: int = 16 * MiB
    output_bytes_max: int = 64 * MiB
    nodes_max: int = 100_000
    constant_folding_bytes_max: int = 16 * MiB
    allowed_domains: tuple[str, ...] = p.DEFAULT_DOMAINS
    # Distinct callers whose calls crashed a version's worker before it is quarantined.
    quarantine_callers: int = 3
    quarantine_window_s: float = 300.0
    quarantine_s: float = 600.0
    # How long a caller whose call hit the deadline or crashed its worker waits (0: never).
    throttle_s: float = 30.0
    # A worker missing any of these refuses to serve (sandbox_unavailable); the others
    # degrade and are reported by health(). Names are fields of sandbox.confine.Protections.
    required_protections: tuple[str, ...] = (
        "rlimits",
        "fds_closed",
        "empty_cwd",
        "no_new_privs",
        "seccomp",
    )
    # Test hook: a worker whose model has an input of this name segfaults on every call.
    crash_on_input_name: str | None = None

    def __post_init__(self) -> None:
        if self.workers_busy_max is None:
            busy = min(os.cpu_count() or 1, self.workers_max)
            object.__setattr__(self, "workers_busy_max", busy)
        if self.busy_max < 1 or self.workers_max < self.busy_max:
            raise ValueError("need 1 <= workers_busy_max <= workers_max")
        if self.workers_per_model_max < 1 or self.queue_max < 0:
            raise ValueError("workers_per_model_max must be >= 1 and queue_max >= 0")
        if self.eval_timeout_s <= 0 or self.kill_grace_s < 0 or self.load_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if min(self.input_bytes_max, self.output_bytes_max, self.input_elements_max) < 1:
            raise ValueError("size caps must be positive")
        if self.quarantine_callers < 1 or self.throttle_s < 0:
            raise ValueError("need quarantine_callers >= 1 and throttle_s >= 0")
        unknown = set(self.required_protections) - _PROTECTION_NAMES
        if unknown:
            raise ValueError(f"unknown protections: {sorted(unknown)}")

    @property
    def busy_max(self) -> int:
        """The effective `workers_busy_max`."""
        return self.workers_busy_max or 1


@dataclass(frozen=True)
class EvalResult:
    """Outputs by name, and where the time went."""

    outputs: dict[str, np.ndarray]
    queue_ms: float
    load_ms: float
    run_ms: float
    cold: bool


_LOAD_REFUSAL_S = 60.0


# --- the pool -------------------------------------------------------------------------------


class SandboxPool:
    """Confined, warm onnxruntime workers; `evaluate` is safe to call from many threads."""

    def __init__(self, config: PoolConfig | None = None) -> None:
        self.config = config or PoolConfig()
        self._cond = threading.Condition()
        self._admission = Admission(
            self._cond,
            busy_max=self.config.busy_max,
            queue_max=self.config.queue_max,
            queue_timeout_s=self.config.queue_timeout_s,
        )
        self._quarantine = Quarantine(
            throttle_s=self.config.throttle_s,
            quarantine_s=self.config.quarantine_s,
            quarantine_window_s=self.config.quarantine_window_s,
            quarantine_callers=self.config.quarantine_callers,
        )
        self._cache = WorkerCache(
            self._cond,
            workers_max=self.config.workers_max,
            workers_per_model_max=self.config.workers_per_model_max,
            memory_budget_bytes=self.config.memory_budget_bytes,
            worker_cpu_s_max=self.config.worker_cpu_s_max,
        )
        self._signatures: collections.OrderedDict[str, p.Signature] = collections.OrderedDict()
        # Models whose bytes a worker refused to load: refused again without a new worker.
        self._load_refusals: dict[str, tuple[float, str]] = {}
        self._protections: dict[str, Any] | None = None
        self._zygote_lock = threading.Lock()
        self._zygote: Zygote | None = Zygote(self.config.zygote_start_timeout_s)

    # -- public API

    def evaluate(
        self,
        model_key: str,
        load_bytes: Callable[[], bytes],
        inputs: Mapping[str, np.ndarray],
        *,
        version: str | None = None,
        caller: str = "",
        deadline_s: float | None = None,
        output_bytes_max: int | None = None,
    ) -> EvalResult:
        """Run the model `model_key` (its bytes) on `inputs` in a confined worker.

        `version` names what the caller asked to run (quarantine is per version; default: the
        model key) and `caller` who asks (throttling is per caller and version; callers that
        give none share one). `load_bytes` is called only when no warm worker holds the model.
        `output_bytes_max` lowers the output cap for this call (`OutputTooLarge`, checked
        before any output is copied out of the worker's slot). Raises a `SandboxError`
        subclass on every failure.
        """
        deadline_s = self.config.eval_timeout_s if deadline_s is None else deadline_s
        if deadline_s <= 0:
            raise ValueError("deadline_s must be positive")
        version = model_key if version is None else version
        self._quarantine.check(version, caller)
        with self._cond:
            refused = self._load_refusals.get(model_key)
            if refused is not None and refused[0] > time.monotonic():
                raise ModelInvalid(refused[1])
            signature = self._signatures.get(model_key)
        ordered = self._validate(signature, inputs) if signature is not None else None
        entered = time.monotonic()
        self._admission.enter()
        try:
            queue_ms = (time.monotonic() - entered) * 1000.0
            worker, load_ms = self._acquire(model_key, load_bytes)
            try:
                if ordered is None or worker.signature is not signature:
                    ordered = self._validate(worker.signature, inputs)
                outputs, run_ms = worker.run(
                    ordered,
                    deadline_s,
                    output_bytes_max=output_bytes_max,
                    output_bytes_cap=self.config.output_bytes_max,
                    kill_grace_s=self.config.kill_grace_s,
                    others_busy=self._admission.busy,
                )
            except SandboxError as exc:
                if isinstance(exc, DeadlineExceeded):
                    self._quarantine.throttle(version, caller)
                elif worker.dead:
                    self._quarantine.record_crash(version, caller)
                raise
            finally:
                self._cache.give_back(worker)
        finally:
            self._admission.leave()
        return EvalResult(outputs, queue_ms, load_ms, run_ms, cold=load_ms > 0)

    def health(self) -> dict[str, Any]:
        """Protections in force in workers, worker counts, queue depth, quarantined models."""
        protections = self._protections
        if protections is None and not self._admission.closed:
            # A probe that finds a required protection missing still records what it found.
            with contextlib.suppress(SandboxError):
                self._probe()
            protections = self._protections
        quarantined = self._quarantine.quarantined()
        with self._cond:
            zygote = self._zygote
            return {
                "available": zygote is not None and zygote.alive and not self._admission.closed,
                "protections": protections,
                "workers": len(self._cache.workers()),
                "workers_busy": self._admission.busy,
                "workers_max": self.config.workers_max,
                "workers_busy_max": self.config.busy_max,
                "queue_depth": self._admission.waiting,
                "queue_max": self.config.queue_max,
                "memory_bytes": self._cache.memory_bytes,
                "memory_budget_bytes": self.config.memory_budget_bytes,
                "quarantined": quarantined,
            }

    def close(self) -> None:
        """Kill every worker and the zygote."""
        with self._cond:
            self._admission.closed = True
        self._cache.close()
        with self._zygote_lock:
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- workers

    def _acquire(self, key: str, load_bytes: Callable[[], bytes]) -> tuple[Worker, float]:
        """A ready worker for `key` (marked busy) and the load time paid (0 when warm)."""
        worker, warm = self._cache.take(key)
        if warm:
            return worker, 0.0
        started = time.monotonic()
        try:
            self._start_worker(worker, load_bytes)
        except ModelInvalid as exc:
            with self._cond:
                if len(self._load_refusals) >= 4096:
                    self._load_refusals.clear()
                self._load_refusals[key] = (time.monotonic() + _LOAD_REFUSAL_S, exc.detail)
            self._cache.discard(worker)
            raise
        except BaseException:
            self._cache.discard(worker)
            raise
        return worker, (time.monotonic() - started) * 1000.0

    def _zygote_for_spawn(self) -> Zygote:
        with self._zygote_lock:
            if self._admission.closed:
                raise SandboxUnavailable(log_detail="pool closed")
            if self._zygote is None or not self._zygote.alive:
                if self._zygote is not None:
                    self._zygote.close()
                self._zygote = Zygote(self.config.zygote_start_timeout_s)
            return self._zygote

    def _worker_params(self, model_bytes: int) -> dict[str, Any]:
        c = self.config
        return {
            "slot_input_bytes": p.align(c.input_bytes_max + p.ALIGN_BYTES * p.TENSORS_MAX),
            "slot_output_bytes": p.align(c.output_bytes_max + p.ALIGN_BYTES * p.TENSORS_MAX),
            "output_bytes_max": c.output_bytes_max,
            "model_bytes": model_bytes,
            "memory_bytes_max": c.worker_memory_bytes_max,
            "cpu_s_max": c.worker_cpu_s_max,
            "nodes_max": c.nodes_max,
            "constant_folding_bytes_max": c.constant_folding_bytes_max,
            "allowed_domains": list(c.allowed_domains),
            "crash_on_input_name": c.crash_on_input_name,
        }

    def _spawn(self, worker: Worker, model: bytes | None) -> dict[str, Any]:
        """Fork a worker for `model` (None: a probe); returns its READY message."""
        zygote = self._zygote_for_spawn()
        params = self._worker_params(len(model) if model is not None else 0)
        slot_bytes = params["slot_input_bytes"] + params["slot_output_bytes"]
        mine: list[int] = []
        theirs: list[int] = []
        try:
            request_r, request_w = os.pipe2(os.O_CLOEXEC)
            theirs.append(request_r)
            mine.append(request_w)
            response_r, response_w = os.pipe2(os.O_CLOEXEC)
            mine.append(response_r)
            theirs.append(response_w)
            cancel_r, cancel_w = os.pipe2(os.O_CLOEXEC)
            theirs.append(cancel_r)
            mine.append(cancel_w)
            slot_fd = memfd("jishi-slot", slot_bytes)
            theirs.append(slot_fd)
            model_fd = memfd("jishi-model", max(len(model or b""), 1))
            theirs.append(model_fd)
            if model:
                with mmap.mmap(model_fd, len(model)) as target:
                    target[:] = model
            worker.output_region = (params["slot_input_bytes"], slot_bytes)
            worker.slot = mmap.mmap(slot_fd, slot_bytes)
            worker.buffer = np.frombuffer(worker.slot, dtype=np.uint8)
            worker.zygote = zygote
            worker.pidfd = zygote.spawn(
                worker.wid, params, theirs, timeout_s=self.config.zygote_start_timeout_s
            )
        except OSError as exc:
            for fd in mine:
                os.close(fd)
            raise SandboxUnavailable(log_detail=f"cannot create worker resources: {exc}") from None
        finally:
            for fd in theirs:
                os.close(fd)
        worker.request, worker.response, worker.cancel = mine
        worker.poller.register(worker.response, select.POLLIN)
        return self._read_ready(worker)

    def _read_ready(self, worker: Worker) -> dict[str, Any]:
        deadline = time.monotonic() + self.config.load_timeout_s
        if not p.wait_readable(worker.response, max(deadline - time.monotonic(), 0.0)):
            worker.kill()
            raise DeadlineExceeded("Loading the model did not finish in time.")
        kind, body, maxrss_kb = worker.read_message()
        worker.memory_bytes = maxrss_kb * 1024
        if kind != p.KIND_READY:
            raise error_from(body)
        try:
            ready = json.loads(body)
            if not isinstance(ready, dict) or not isinstance(ready.get("protections"), dict):
                raise ValueError("malformed ready message")
        except ValueError:
            worker.kill()
            raise WorkerCrashed(log_detail="malformed ready message") from None
        protections = {k: v for k, v in ready["protections"].items() if k in _PROTECTION_NAMES}
        self._protections = protections
        missing = missing_protections(self.config.required_protections, protections)
        if missing:
            worker.kill()
            raise SandboxUnavailable(
                "The sandbox cannot confine workers on this host.",
                log_detail=f"required protections not in force: {', '.join(missing)}",
            )
        return ready

    def _start_worker(self, worker: Worker, load_bytes: Callable[[], bytes]) -> None:
        model = load_bytes()
        if not isinstance(model, bytes | bytearray | memoryview):
            raise TypeError("load_bytes must return bytes")
        if len(model) > self.config.model_bytes_max:
            raise ResourceExhausted("The model is larger than the sandbox accepts.")
        if len(model) == 0:
            raise ModelInvalid("The model is empty.")
        ready = self._spawn(worker, bytes(model))
        try:
            signature = p.Signature.from_json(ready.get("signature"))
        except (ValueError, TypeError):
            worker.kill()
            raise WorkerCrashed(log_detail="malformed signature from worker") from None
        worker.signature = signature
        with self._cond:
            worker.ready = True
            self._signatures[worker.key] = signature
            self._signatures.move_to_end(worker.key)
            while len(self._signatures) > 4096:
                self._signatures.popitem(last=False)

    def _probe(self) -> None:
        """Fork a worker without a model; its READY message records the protections."""
        worker = self._cache.new_worker("")
        try:
            self._spawn(worker, None)
        finally:
            worker.close()

    # -- one call

    def _validate(
        self, signature: p.Signature, inputs: Mapping[str, np.ndarray]
    ) -> list[tuple[int, np.ndarray]]:
        """Check inputs against the signature and caps, before anything is copied."""
        expected = {spec.name for spec in signature.inputs}
        unknown = sorted(set(inputs) - expected)
        missing = sorted(expected - set(inputs))
        if unknown:
            raise InputInvalid(f"Unknown input {unknown[0][:100]!r}.")
        if missing:
            raise InputInvalid(f"Missing input {missing[0][:100]!r}.")
        ordered = []
        total_bytes = 0
        for index, spec in enumerate(signature.inputs):
            value = inputs[spec.name]
            name = spec.name[:100]
            if not isinstance(value, np.ndarray):
                raise InputInvalid(f"Input {name!r} is not an array.")
            if value.dtype != np.dtype(spec.dtype) or not value.dtype.isnative:
                raise InputInvalid(f"Input {name!r} must have dtype {spec.dtype}.")
            if value.ndim != len(spec.shape):
                raise InputInvalid(f"Input {name!r} must have rank {len(spec.shape)}.")
            for axis, (got, want) in enumerate(zip(value.shape, spec.shape, strict=True)):
                if want is not None and got != want:
                    raise InputInvalid(f"Input {name!r} must have size {want} on axis {axis}.")
            if value.size == 0:
                # An evaluation over nothing is refused before it runs, and so never counted.
                raise InputInvalid(
                    f"Input {name!r} holds no values (shape {list(value.shape)}); "
                    "send at least one."
                )
            if value.size > self.config.input_elements_max:
                raise InputInvalid(f"Input {name!r} has too many elements.")
            total_bytes += p.align(value.nbytes)
            if total_bytes > self.config.input_bytes_max:
                raise InputInvalid("The inputs exceed the input size limit.")
            ordered.append((index, value))
        return ordered
