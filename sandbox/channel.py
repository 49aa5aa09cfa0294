"""The channel to one worker: its process handle, pipes and shared slot, and one call over them.

The supervisor (`sandbox.pool`) owns the workers; this module speaks to one of them: it forks
it through the zygote, writes a call's inputs into the shared slot, waits for the answer
within the deadline (asking the worker to terminate, then killing it, when it passes) and reads
the outputs back as validated views of the slot.
"""

from __future__ import annotations

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
from typing import Any

import numpy as np

from sandbox import protocol as p
from sandbox.confine import status_error
from sandbox.errors import (
    DeadlineExceeded,
    OutputTooLarge,
    SandboxError,
    SandboxUnavailable,
    WorkerCrashed,
    error_for_code,
)

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


class Zygote:
    """The zygote process that forks workers, and the thread that reads its messages."""

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


class Worker:
    """One worker as the supervisor sees it: its process, pipes, shared slot and cached plans."""

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
        self.zygote: Zygote | None = None  # The one that forked it and reports its exit.
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

    # -- one call over the channel

    def read_message(self) -> tuple[int, bytes, int]:
        """(kind, JSON body, peak RSS KiB) of a JSON message; a dead worker raises its cause."""
        header = p.read_exact(self.response, p.RESPONSE.size)
        if not header:
            raise self.death()
        kind, length, _, _, maxrss_kb = p.RESPONSE.unpack(header)
        if kind == p.KIND_OK or length > p.JSON_BYTES_MAX:
            self.kill()
            raise WorkerCrashed(log_detail="unexpected message from worker")
        body = p.read_exact(self.response, length) if length else b""
        if length and not body:
            raise self.death()
        return kind, body, maxrss_kb

    def death(self) -> SandboxError:
        self.dead = True
        zygote = self.zygote
        status = zygote.exit_status(self.wid, timeout_s=1.0) if zygote is not None else None
        if status is None:
            return WorkerCrashed(log_detail="worker vanished")
        return status_error(status)

    def run(
        self,
        ordered: list[tuple[int, np.ndarray]],
        deadline_s: float,
        *,
        output_bytes_max: int | None,
        output_bytes_cap: int,
        kill_grace_s: float,
        others_busy: int,
    ) -> tuple[dict[str, np.ndarray], float]:
        """Run one call on validated, ordered inputs; outputs by name and the run time (ms).

        ``output_bytes_max`` is this call's output limit, ``output_bytes_cap`` the pool's;
        ``others_busy`` (calls running) decides whether waiting may spin.
        """
        key = tuple((value.dtype, value.shape) for _, value in ordered)
        plan = self.input_plans.get(key)
        if plan is None:
            plan = p.remember(self.input_plans, key, self._input_plan(ordered))
        targets, request_body = plan
        for target, (_, value) in zip(targets, ordered, strict=True):
            np.copyto(target, value, casting="no")
        self.seq += 1
        seq = self.seq
        try:
            os.write(self.request, p.REQUEST.pack(p.OP_RUN, len(targets), seq) + request_body)
        except OSError:  # EPIPE: the worker died between calls.
            raise self.death() from None
        if not self._wait_response(deadline_s, others_busy):
            self._cancel(seq, kill_grace_s)
        response = self.response
        outputs_count = len(self.signature.outputs)
        data = os.read(response, p.RESPONSE.size + outputs_count * p.TENSOR.size)
        if len(data) < p.RESPONSE.size:
            data += p.read_exact(response, p.RESPONSE.size - len(data)) if data else b""
            if len(data) < p.RESPONSE.size:
                raise self.death()
        kind, count, got_seq, run_ns, maxrss_kb = p.RESPONSE.unpack_from(data)
        self.memory_bytes = maxrss_kb * 1024
        if got_seq != seq:
            self.kill()
            raise WorkerCrashed(log_detail="response out of sequence")
        if kind == p.KIND_ERROR:
            body = data[p.RESPONSE.size :]
            if count > p.JSON_BYTES_MAX:
                body = b""
            elif len(body) < count:
                body += p.read_exact(response, count - len(body))
            raise error_from(body)
        if kind != p.KIND_OK or count != outputs_count:
            self.kill()
            raise WorkerCrashed(log_detail="unexpected response from worker")
        need = p.RESPONSE.size + count * p.TENSOR.size
        if len(data) < need:
            data += p.read_exact(response, need - len(data))
        body = data[p.RESPONSE.size : need]
        views = self.output_plans.get(body)
        if views is None:
            views = p.remember(self.output_plans, body, self._output_plan(body, output_bytes_cap))
        self.run_ewma_s = 0.8 * self.run_ewma_s + 0.2 * run_ns / 1e9
        # Runs are single-threaded, so run time approximates the CPU the worker has spent
        # against its lifetime RLIMIT_CPU; _release retires it at half of that.
        self.cpu_s += run_ns / 1e9
        if output_bytes_max is not None and sum(v.nbytes for _, v in views) > output_bytes_max:
            # Refused from the headers alone: the outputs are never copied into this process.
            raise OutputTooLarge(f"The outputs exceed {output_bytes_max} bytes.")
        return {name: view.copy() for name, view in views}, run_ns / 1e6

    def _input_plan(self, ordered: list[tuple[int, np.ndarray]]) -> tuple[list[np.ndarray], bytes]:
        """Slot views and the packed headers for one combination of input dtypes and shapes."""
        targets = []
        headers = []
        offset = 0
        for index, value in ordered:
            targets.append(np.ndarray(value.shape, value.dtype, buffer=self.buffer, offset=offset))
            headers.append(p.pack_tensor(index, value.dtype, value.shape, offset))
            offset = p.align(offset + value.nbytes)
        return targets, b"".join(headers)

    def _output_plan(self, body: bytes, output_bytes_cap: int) -> list[tuple[str, np.ndarray]]:
        """Validated slot views for one set of output headers (the worker may be hostile)."""
        views = []
        total = 0
        for i, spec in enumerate(self.signature.outputs):
            t = p.unpack_tensor(body, i * p.TENSOR.size, self.output_region)
            total += t.nbytes
            if t.index != i or total > output_bytes_cap:
                # An honest worker refuses outputs over the cap itself.
                self.kill()
                raise WorkerCrashed(log_detail="output headers out of order or over the cap")
            views.append(
                (spec.name, np.ndarray(t.shape, t.dtype, buffer=self.buffer, offset=t.offset))
            )
        return views

    def _wait_response(self, deadline_s: float, others_busy: int) -> bool:
        """Wait for the worker's answer until the deadline; whether it came.

        Waking a process that blocked costs tens of microseconds on virtual machines, which
        dominates a tiny model's call. So when the model's runs are short and a core is free
        (no other busy worker, a load average below the core count), the supervisor first
        polls without blocking for a few run lengths. Longer runs, or a loaded host, block at
        once: spinning then takes the core the worker needs.
        """
        poller = self.poller
        started = time.monotonic()
        expected = self.run_ewma_s
        if expected < _SPIN_RUN_MAX_S and others_busy < _CPUS and _host_is_quiet():
            spin_until = started + min(_SPIN_S + 2 * expected, deadline_s)
            while time.monotonic() < spin_until:
                if poller.poll(0):
                    return True
        remaining_ms = math.ceil((deadline_s - (time.monotonic() - started)) * 1000)
        return bool(poller.poll(max(remaining_ms, 0)))

    def _cancel(self, seq: int, kill_grace_s: float) -> None:
        """The deadline passed: ask for terminate, then kill; always raises."""
        with contextlib.suppress(OSError):
            os.write(self.cancel, p.CANCEL.pack(seq))
        if p.wait_readable(self.response, kill_grace_s):
            header = p.read_exact(self.response, p.RESPONSE.size)
            if header:
                kind, count, got_seq, _, _ = p.RESPONSE.unpack(header)
                if got_seq == seq and count <= p.JSON_BYTES_MAX:
                    # Drain the answer (a terminate error or a late result) to keep the pipe
                    # in step; the worker stays warm.
                    size = count if kind != p.KIND_OK else count * p.TENSOR.size
                    if size == 0 or p.read_exact(self.response, size):
                        raise DeadlineExceeded(ran_to_deadline=True)
        self.kill()
        raise DeadlineExceeded(ran_to_deadline=True)


def memfd(name: str, size: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


def error_from(body: bytes) -> SandboxError:
    """The error a worker's JSON error message describes (a crash when it is malformed)."""
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
