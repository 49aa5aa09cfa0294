"""The supervisor: a pool of confined, warm onnxruntime workers behind `evaluate`.

Lives in the web process and never imports onnxruntime. It starts a zygote (`sandbox.zygote`),
asks it to fork one worker per model in use (more for a busy model, up to
`workers_per_model_max`), keeps those workers warm in an LRU bounded by `workers_max` and
`memory_budget_bytes`, and talks to each over two pipes and a shared-memory slot.

Time limits: `queue_timeout_s` for admission, `load_timeout_s` for a cold start, the per-call
deadline (`deadline_s`, default `eval_timeout_s`) for the run. At the deadline the worker is
asked to terminate (RunOptions.terminate, checked between nodes); if it has not answered after
`kill_grace_s` it is SIGKILLed and replaced lazily.

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
import math
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from sandbox import protocol as p
from sandbox.confine import GiB, MiB, Protections, status_error
from sandbox.errors import (
    CallerThrottled,
    DeadlineExceeded,
    InputInvalid,
    ModelInvalid,
    ModelQuarantined,
    OutputTooLarge,
    ResourceExhausted,
    SandboxBusy,
    SandboxError,
    SandboxUnavailable,
    WorkerCrashed,
    error_for_code,
)

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
_FAILING_MODELS_MAX = 4096
_NO_BUFFER = np.empty(0, dtype=np.uint8)
_NO_SIGNATURE = p.Signature(inputs=(), outputs=())
_CPUS = os.cpu_count() or 1
_SPIN_RUN_MAX_S = 0.0003
_SPIN_S = 0.0002


_load_seen = (-1.0, 0.0)  # (when, 1-minute load average)


def _host_is_quiet() -> bool:
    """Whether the load average is below the core count, read at most once a second."""
    global _load_seen
    now = time.monotonic()
    when, load = _load_seen
    if now - when > 1.0:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = float("inf")
        _load_seen = (now, load)
    return load < _CPUS


# --- the zygote, seen from the supervisor ---------------------------------------------------


class _Zygote:
    def __init__(self, start_timeout_s: float) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Isolated mode (-I) ignores the environment; the import path is handed over instead,
        # with this package's root first.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = json.dumps([package_root, *(entry for entry in sys.path if entry)])
        code = (
            "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
            "import sandbox.zygote as z; z.main(int(sys.argv[2]))"
        )
        env = {"OMP_NUM_THREADS": "1", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-c", code, path, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            ours.close()
            raise SandboxUnavailable(log_detail=f"zygote failed to start: {exc}") from None
        finally:
            theirs.close()
        self._sock = ours
        self._cond = threading.Condition()
        self._ready = False
        self.alive = True
        self._spawned: dict[int, tuple[int, int] | None] = {}
        self._abandoned: set[int] = set()
        self._exits: dict[int, tuple[int, float]] = {}
        self._send_lock = threading.Lock()
        self._start_deadline = time.monotonic() + start_timeout_s
        threading.Thread(target=self._read_loop, name="sandbox-zygote", daemon=True).start()

    def _read_loop(self) -> None:
        try:
            while True:
                data, fds, _, _ = socket.recv_fds(self._sock, 1 << 16, 4)
                if not data:
                    break
                message = json.loads(data)
                with self._cond:
                    self._handle(message, fds)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        with self._cond:
            self.alive = False
            self._cond.notify_all()

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        if op == "ready":
            self._ready = True
        elif op == "spawned" and len(fds) == 1:
            wid = int(message["wid"])
            if wid in self._abandoned:
                # Its requester gave up waiting and closed the pipes: the worker exits on EOF.
                self._abandoned.discard(wid)
            else:
                self._spawned[wid] = (int(message["pid"]), fds[0])
                return
        elif op == "spawn_failed":
            wid = int(message["wid"])
            if wid in self._abandoned:
                self._abandoned.discard(wid)
            else:
                self._spawned[wid] = None
        elif op == "exited":
            now = time.monotonic()
            self._exits[int(message["wid"])] = (int(message["status"]), now)
            for wid in [w for w, (_, at) in self._exits.items() if now - at > 60.0]:
                del self._exits[wid]
        for fd in fds:
            os.close(fd)

    def wait_ready(self) -> None:
        with self._cond:
            while not self._ready and self.alive:
                remaining = self._start_deadline - time.monotonic()
                if remaining <= 0:
                    raise SandboxUnavailable(log_detail="zygote did not become ready")
                self._cond.wait(remaining)
            if not self.alive:
                raise SandboxUnavailable(log_detail="zygote exited")

    def spawn(self, wid: int, params: dict[str, Any], fds: list[int], timeout_s: float) -> int:
        """Ask for a worker; returns its pidfd."""
        self.wait_ready()
        message = json.dumps({"op": "spawn", "wid": wid, "params": params}).encode()
        try:
            with self._send_lock:
                socket.send_fds(self._sock, [message], fds)
        except OSError as exc:
            raise SandboxUnavailable(log_detail=f"zygote unreachable: {exc}") from None
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while wid not in self._spawned and self.alive:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._abandoned.add(wid)
                    raise SandboxUnavailable(log_detail="zygote did not spawn in time")
                self._cond.wait(remaining)
            spawned = self._spawned.pop(wid, None)
        if spawned is None:
            raise SandboxUnavailable(log_detail="zygote could not spawn a worker")
        return spawned[1]

    def exit_status(self, wid: int, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while wid not in self._exits and self.alive:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            entry = self._exits.pop(wid, None)
        return entry[0] if entry else None

    def forget(self, wid: int) -> None:
        with self._cond:
            self._exits.pop(wid, None)

    def close(self) -> None:
        self._sock.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- one worker, seen from the supervisor ---------------------------------------------------


class _Worker:
    def __init__(self, wid: int, key: str) -> None:
        self.wid = wid
        self.key = key
        self.busy = True
        self.ready = False
        self.dead = False
        self.last_used = time.monotonic()
        self.memory_bytes = 0
        self.seq = 0
        self.pidfd = -1
        self.request = -1
        self.response = -1
        self.cancel = -1
        self.slot: mmap.mmap | None = None
        self.buffer: np.ndarray = _NO_BUFFER
        self.signature = _NO_SIGNATURE
        self.zygote: _Zygote | None = None  # The one that forked it and reports its exit.
        self.cpu_s = 0.0
        self.output_region = (0, 0)
        self.poller = select.poll()
        self.run_ewma_s = 0.0
        # Slot views and packed headers, cached per input shapes and per output headers.
        self.input_plans: dict[tuple[Any, ...], tuple[list[np.ndarray], bytes]] = {}
        self.output_plans: dict[bytes, list[tuple[str, np.ndarray]]] = {}

    def kill(self) -> None:
        if self.pidfd >= 0 and not self.dead:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        self.dead = True

    def close(self) -> None:
        self.kill()
        for name in ("pidfd", "request", "response", "cancel"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        self.buffer = _NO_BUFFER
        self.input_plans.clear()
        self.output_plans.clear()
        if self.slot is not None:
            # A view still held elsewhere keeps the mapping until its last reference goes.
            with contextlib.suppress(BufferError):
                self.slot.close()
            self.slot = None


def _memfd(name: str, size: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


# --- the pool -------------------------------------------------------------------------------


class SandboxPool:
    """Confined, warm onnxruntime workers; `evaluate` is safe to call from many threads."""

    def __init__(self, config: PoolConfig | None = None) -> None:
        self.config = config or PoolConfig()
        self._cond = threading.Condition()
        self._workers: dict[int, _Worker] = {}
        self._next_wid = 1
        self._busy = 0
        self._waiting = 0
        self._closed = False
        self._signatures: collections.OrderedDict[str, p.Signature] = collections.OrderedDict()
        # Per version: when each caller last crashed its worker.
        self._crashes: dict[str, dict[str, float]] = {}
        self._quarantined_until: dict[str, float] = {}
        self._throttled_until: dict[tuple[str, str], float] = {}
        # Models whose bytes a worker refused to load: refused again without a new worker.
        self._load_refusals: dict[str, tuple[float, str]] = {}
        self._protections: dict[str, Any] | None = None
        self._zygote_lock = threading.Lock()
        self._zygote: _Zygote | None = _Zygote(self.config.zygote_start_timeout_s)

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
        self._check_admission(version, caller)
        with self._cond:
            refused = self._load_refusals.get(model_key)
            if refused is not None and refused[0] > time.monotonic():
                raise ModelInvalid(refused[1])
            signature = self._signatures.get(model_key)
        ordered = self._validate(signature, inputs) if signature is not None else None
        entered = time.monotonic()
        self._admit()
        try:
            queue_ms = (time.monotonic() - entered) * 1000.0
            worker, load_ms = self._acquire(model_key, load_bytes)
            try:
                if ordered is None or worker.signature is not signature:
                    ordered = self._validate(worker.signature, inputs)
                outputs, run_ms = self._run(worker, ordered, deadline_s, output_bytes_max)
            except SandboxError as exc:
                if isinstance(exc, DeadlineExceeded):
                    self._throttle(version, caller)
                elif worker.dead:
                    self._record_crash(version, caller)
                raise
            finally:
                self._release(worker)
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()
        return EvalResult(outputs, queue_ms, load_ms, run_ms, cold=load_ms > 0)

    def health(self) -> dict[str, Any]:
        """Protections in force in workers, worker counts, queue depth, quarantined models."""
        protections = self._protections
        if protections is None and not self._closed:
            # A probe that finds a required protection missing still records what it found.
            with contextlib.suppress(SandboxError):
                self._probe()
            protections = self._protections
        now = time.monotonic()
        with self._cond:
            zygote = self._zygote
            return {
                "available": zygote is not None and zygote.alive and not self._closed,
                "protections": protections,
                "workers": len(self._workers),
                "workers_busy": self._busy,
                "workers_max": self.config.workers_max,
                "workers_busy_max": self.config.busy_max,
                "queue_depth": self._waiting,
                "queue_max": self.config.queue_max,
                "memory_bytes": sum(w.memory_bytes for w in self._workers.values()),
                "memory_budget_bytes": self.config.memory_budget_bytes,
                "quarantined": {
                    key: round(until - now, 1)
                    for key, until in self._quarantined_until.items()
                    if until > now
                },
            }

    def close(self) -> None:
        """Kill every worker and the zygote."""
        with self._cond:
            self._closed = True
            workers = list(self._workers.values())
            self._workers.clear()
            self._cond.notify_all()
        for worker in workers:
            worker.close()
        with self._zygote_lock:
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- admission and quarantine

    def _check_admission(self, version: str, caller: str) -> None:
        """Refuse a quarantined version, and a throttled caller of it."""
        now = time.monotonic()
        with self._cond:
            until = self._quarantined_until.get(version)
            if until is not None and until <= now:
                del self._quarantined_until[version]
                self._crashes.pop(version, None)
                until = None
            throttled = self._throttled_until.get((version, caller))
            if throttled is not None and throttled <= now:
                del self._throttled_until[(version, caller)]
                throttled = None
        if until is not None:
            raise ModelQuarantined(retry_after_s=until - now)
        if throttled is not None:
            raise CallerThrottled(retry_after_s=throttled - now)

    def _throttle(self, version: str, caller: str) -> None:
        """Make `caller` wait before running `version` again (its call cost a full deadline)."""
        if self.config.throttle_s <= 0:
            return
        now = time.monotonic()
        with self._cond:
            if len(self._throttled_until) >= _FAILING_MODELS_MAX:
                # Bounded memory: forget expired entries, and everything if that is not enough.
                live = {k: t for k, t in self._throttled_until.items() if t > now}
                self._throttled_until = live if len(live) < _FAILING_MODELS_MAX else {}
            self._throttled_until[(version, caller)] = now + self.config.throttle_s

    def _record_crash(self, version: str, caller: str) -> None:
        """Count a call that cost its worker its life; quarantine after enough distinct callers.

        Failures the worker survives (terminate honoured, allocation refused, bad input) do
        not count: a buyer's bad inputs alone should not get a vendor's model quarantined. Nor
        do many crashes from one caller: that caller is throttled instead.
        """
        self._throttle(version, caller)
        now = time.monotonic()
        with self._cond:
            if version not in self._crashes and len(self._crashes) >= _FAILING_MODELS_MAX:
                self._crashes.clear()
            callers = self._crashes.setdefault(version, {})
            callers[caller] = now
            for who in [
                w for w, at in callers.items() if now - at > self.config.quarantine_window_s
            ]:
                del callers[who]
            if len(callers) >= self.config.quarantine_callers:
                self._quarantined_until[version] = now + self.config.quarantine_s

    def _admit(self) -> None:
        with self._cond:
            if self._closed:
                raise SandboxUnavailable(log_detail="pool closed")
            if self._busy < self.config.busy_max:
                self._busy += 1
                return
            if self._waiting >= self.config.queue_max:
                raise SandboxBusy(retry_after_s=1.0)
            self._waiting += 1
            deadline = time.monotonic() + self.config.queue_timeout_s
            try:
                while self._busy >= self.config.busy_max and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise SandboxBusy(retry_after_s=1.0)
                    self._cond.wait(remaining)
                if self._closed:
                    raise SandboxUnavailable(log_detail="pool closed")
                self._busy += 1
            finally:
                self._waiting -= 1

    # -- workers

    def _acquire(self, key: str, load_bytes: Callable[[], bytes]) -> tuple[_Worker, float]:
        """A ready worker for `key` (marked busy) and the load time paid (0 when warm)."""
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxUnavailable(log_detail="pool closed")
                mine = [w for w in self._workers.values() if w.key == key and not w.dead]
                idle = [w for w in mine if not w.busy and w.ready]
                while idle:
                    worker = max(idle, key=lambda w: w.last_used)
                    idle.remove(worker)
                    if p.wait_readable(worker.response, 0.0):
                        # An idle worker has nothing to say: readable means it died (EOF).
                        self._workers.pop(worker.wid, None)
                        mine.remove(worker)
                        worker.close()
                        continue
                    worker.busy = True
                    return worker, 0.0
                if len(mine) < self.config.workers_per_model_max and self._make_room():
                    worker = _Worker(self._next_wid, key)
                    self._next_wid += 1
                    self._workers[worker.wid] = worker
                    break
                self._cond.wait(0.05)
        started = time.monotonic()
        try:
            self._start_worker(worker, load_bytes)
        except ModelInvalid as exc:
            with self._cond:
                self._workers.pop(worker.wid, None)
                if len(self._load_refusals) >= 4096:
                    self._load_refusals.clear()
                self._load_refusals[key] = (time.monotonic() + _LOAD_REFUSAL_S, exc.detail)
                self._cond.notify_all()
            worker.close()
            raise
        except BaseException:
            with self._cond:
                self._workers.pop(worker.wid, None)
                self._cond.notify_all()
            worker.close()
            raise
        return worker, (time.monotonic() - started) * 1000.0

    def _make_room(self) -> bool:
        """Evict idle workers (least recently used first) until one more fits; under the lock."""
        live = [w for w in self._workers.values() if not w.dead]
        idle = sorted((w for w in live if not w.busy), key=lambda w: w.last_used)
        memory = sum(w.memory_bytes for w in live)
        while idle and (
            len(live) >= self.config.workers_max or memory > self.config.memory_budget_bytes
        ):
            victim = idle.pop(0)
            live.remove(victim)
            memory -= victim.memory_bytes
            self._workers.pop(victim.wid, None)
            victim.close()
        return len(live) < self.config.workers_max

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            worker.busy = False
            worker.last_used = time.monotonic()
            if worker.dead or worker.cpu_s > self.config.worker_cpu_s_max / 2:
                # Dead, or close to its lifetime CPU limit: replace it on the next call.
                self._workers.pop(worker.wid, None)
                worker.close()
                if worker.zygote is not None:
                    worker.zygote.forget(worker.wid)
            self._cond.notify_all()

    def _zygote_for_spawn(self) -> _Zygote:
        with self._zygote_lock:
            if self._closed:
                raise SandboxUnavailable(log_detail="pool closed")
            if self._zygote is None or not self._zygote.alive:
                if self._zygote is not None:
                    self._zygote.close()
                self._zygote = _Zygote(self.config.zygote_start_timeout_s)
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

    def _spawn(self, worker: _Worker, model: bytes | None) -> dict[str, Any]:
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
            slot_fd = _memfd("jishi-slot", slot_bytes)
            theirs.append(slot_fd)
            model_fd = _memfd("jishi-model", max(len(model or b""), 1))
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

    def _read_ready(self, worker: _Worker) -> dict[str, Any]:
        deadline = time.monotonic() + self.config.load_timeout_s
        if not p.wait_readable(worker.response, max(deadline - time.monotonic(), 0.0)):
            worker.kill()
            raise DeadlineExceeded("Loading the model did not finish in time.")
        kind, body, maxrss_kb = self._read_message(worker)
        worker.memory_bytes = maxrss_kb * 1024
        if kind != p.KIND_READY:
            raise self._error_from(body)
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

    def _read_message(self, worker: _Worker) -> tuple[int, bytes, int]:
        """(kind, JSON body, peak RSS KiB) of a JSON message; a dead worker raises its cause."""
        header = p.read_exact(worker.response, p.RESPONSE.size)
        if not header:
            raise self._death(worker)
        kind, length, _, _, maxrss_kb = p.RESPONSE.unpack(header)
        if kind == p.KIND_OK or length > p.JSON_BYTES_MAX:
            worker.kill()
            raise WorkerCrashed(log_detail="unexpected message from worker")
        body = p.read_exact(worker.response, length) if length else b""
        if length and not body:
            raise self._death(worker)
        return kind, body, maxrss_kb

    def _death(self, worker: _Worker) -> SandboxError:
        worker.dead = True
        zygote = worker.zygote
        status = zygote.exit_status(worker.wid, timeout_s=1.0) if zygote is not None else None
        if status is None:
            return WorkerCrashed(log_detail="worker vanished")
        return status_error(status)

    @staticmethod
    def _error_from(body: bytes) -> SandboxError:
        try:
            message = json.loads(body)
            code, detail, log = message["code"], message.get("detail"), message.get("log")
        except (ValueError, KeyError, TypeError):
            return WorkerCrashed(log_detail="malformed error message from worker")
        return error_for_code(
            code if isinstance(code, str) else "",
            detail[:500] if isinstance(detail, str) else None,
            log_detail=log[:2000] if isinstance(log, str) else None,
        )

    def _start_worker(self, worker: _Worker, load_bytes: Callable[[], bytes]) -> None:
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
        with self._cond:
            worker = _Worker(self._next_wid, "")
            self._next_wid += 1
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
            if value.size > self.config.input_elements_max:
                raise InputInvalid(f"Input {name!r} has too many elements.")
            total_bytes += p.align(value.nbytes)
            if total_bytes > self.config.input_bytes_max:
                raise InputInvalid("The inputs exceed the input size limit.")
            ordered.append((index, value))
        return ordered

    def _run(
        self,
        worker: _Worker,
        ordered: list[tuple[int, np.ndarray]],
        deadline_s: float,
        output_bytes_max: int | None = None,
    ) -> tuple[dict[str, np.ndarray], float]:
        key = tuple((value.dtype, value.shape) for _, value in ordered)
        plan = worker.input_plans.get(key)
        if plan is None:
            plan = p.remember(worker.input_plans, key, self._input_plan(worker, ordered))
        targets, request_body = plan
        for target, (_, value) in zip(targets, ordered, strict=True):
            np.copyto(target, value, casting="no")
        worker.seq += 1
        seq = worker.seq
        try:
            os.write(worker.request, p.REQUEST.pack(p.OP_RUN, len(targets), seq) + request_body)
        except OSError:  # EPIPE: the worker died between calls.
            raise self._death(worker) from None
        if not self._wait_response(worker, deadline_s):
            self._cancel(worker, seq)
        response = worker.response
        outputs_count = len(worker.signature.outputs)
        data = os.read(response, p.RESPONSE.size + outputs_count * p.TENSOR.size)
        if len(data) < p.RESPONSE.size:
            data += p.read_exact(response, p.RESPONSE.size - len(data)) if data else b""
            if len(data) < p.RESPONSE.size:
                raise self._death(worker)
        kind, count, got_seq, run_ns, maxrss_kb = p.RESPONSE.unpack_from(data)
        worker.memory_bytes = maxrss_kb * 1024
        if got_seq != seq:
            worker.kill()
            raise WorkerCrashed(log_detail="response out of sequence")
        if kind == p.KIND_ERROR:
            body = data[p.RESPONSE.size :]
            if count > p.JSON_BYTES_MAX:
                body = b""
            elif len(body) < count:
                body += p.read_exact(response, count - len(body))
            raise self._error_from(body)
        if kind != p.KIND_OK or count != outputs_count:
            worker.kill()
            raise WorkerCrashed(log_detail="unexpected response from worker")
        need = p.RESPONSE.size + count * p.TENSOR.size
        if len(data) < need:
            data += p.read_exact(response, need - len(data))
        body = data[p.RESPONSE.size : need]
        views = worker.output_plans.get(body)
        if views is None:
            views = p.remember(worker.output_plans, body, self._output_plan(worker, body))
        worker.run_ewma_s = 0.8 * worker.run_ewma_s + 0.2 * run_ns / 1e9
        # Runs are single-threaded, so run time approximates the CPU the worker has spent
        # against its lifetime RLIMIT_CPU; _release retires it at half of that.
        worker.cpu_s += run_ns / 1e9
        if output_bytes_max is not None and sum(v.nbytes for _, v in views) > output_bytes_max:
            # Refused from the headers alone: the outputs are never copied into this process.
            raise OutputTooLarge(f"The outputs exceed {output_bytes_max} bytes.")
        return {name: view.copy() for name, view in views}, run_ns / 1e6

    @staticmethod
    def _input_plan(
        worker: _Worker, ordered: list[tuple[int, np.ndarray]]
    ) -> tuple[list[np.ndarray], bytes]:
        """Slot views and the packed headers for one combination of input dtypes and shapes."""
        targets = []
        headers = []
        offset = 0
        for index, value in ordered:
            targets.append(
                np.ndarray(value.shape, value.dtype, buffer=worker.buffer, offset=offset)
            )
            headers.append(p.pack_tensor(index, value.dtype, value.shape, offset))
            offset = p.align(offset + value.nbytes)
        return targets, b"".join(headers)

    def _output_plan(self, worker: _Worker, body: bytes) -> list[tuple[str, np.ndarray]]:
        """Validated slot views for one set of output headers (the worker may be hostile)."""
        views = []
        total = 0
        for i, spec in enumerate(worker.signature.outputs):
            t = p.unpack_tensor(body, i * p.TENSOR.size, worker.output_region)
            total += t.nbytes
            if t.index != i or total > self.config.output_bytes_max:
                # An honest worker refuses outputs over the cap itself.
                worker.kill()
                raise WorkerCrashed(log_detail="output headers out of order or over the cap")
            views.append(
                (spec.name, np.ndarray(t.shape, t.dtype, buffer=worker.buffer, offset=t.offset))
            )
        return views

    def _wait_response(self, worker: _Worker, deadline_s: float) -> bool:
        """Wait for the worker's answer until the deadline; whether it came.

        Waking a process that blocked costs tens of microseconds on virtual machines, which
        dominates a tiny model's call. So when the model's runs are short and a core is free
        (no other busy worker, a load average below the core count), the supervisor first
        polls without blocking for a few run lengths. Longer runs, or a loaded host, block at
        once: spinning then takes the core the worker needs.
        """
        poller = worker.poller
        started = time.monotonic()
        expected = worker.run_ewma_s
        if expected < _SPIN_RUN_MAX_S and self._busy < _CPUS and _host_is_quiet():
            spin_until = started + min(_SPIN_S + 2 * expected, deadline_s)
            while time.monotonic() < spin_until:
                if poller.poll(0):
                    return True
        remaining_ms = math.ceil((deadline_s - (time.monotonic() - started)) * 1000)
        return bool(poller.poll(max(remaining_ms, 0)))

    def _cancel(self, worker: _Worker, seq: int) -> None:
        """The deadline passed: ask for terminate, then kill; always raises."""
        with contextlib.suppress(OSError):
            os.write(worker.cancel, p.CANCEL.pack(seq))
        if p.wait_readable(worker.response, self.config.kill_grace_s):
            header = p.read_exact(worker.response, p.RESPONSE.size)
            if header:
                kind, count, got_seq, _, _ = p.RESPONSE.unpack(header)
                if got_seq == seq and count <= p.JSON_BYTES_MAX:
                    # Drain the answer (a terminate error or a late result) to keep the pipe
                    # in step; the worker stays warm.
                    size = count if kind != p.KIND_OK else count * p.TENSOR.size
                    if size == 0 or p.read_exact(worker.response, size):
                        raise DeadlineExceeded(ran_to_deadline=True)
        worker.kill()
        raise DeadlineExceeded(ran_to_deadline=True)
