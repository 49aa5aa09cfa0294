"""Runs :func:`inspect_model` on an uploaded file in a confined process, never in the caller.

The caller (the web process, which has threads and holds database connections) never forks
itself. It keeps a few *inspector helpers*: fresh interpreters (``python -m
model_registry.confined``) that have imported onnx once and are single-threaded, so forking
them is safe. For each file, a helper maps it read-only and hands the inspection to
``sandbox.confine.run_confined``, which forks a child, confines it (rlimits, no descriptors,
seccomp, Landlock...) and runs the inspection there. Only a line of JSON comes back. The
model's bytes never enter the web process's memory, and no untrusted byte is parsed in a
process that is not confined.

A helper that does not answer in time, or dies, is killed and replaced.

An :class:`Inspector` bounds what inspections may cost a node: at most ``concurrency_max`` run
at once (more are refused with ``sandbox_busy``), and each confined child may map
``memory_base_bytes + memory_per_model_byte * size`` bytes beyond what it inherits (the
helper's interpreter and the read-only mapping of the file). So a node never spends more than
``concurrency_max * (memory_base_bytes + memory_per_model_byte * largest upload)`` of address
space on inspections.
"""

from __future__ import annotations

import atexit
import json
import mmap
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from model_registry.inspection import InspectionPolicy, Report, inspect_model
from sandbox.errors import DeadlineExceeded, SandboxBusy, SandboxUnavailable, error_for_code

MiB = 1 << 20
# Extra wall time a helper gets on top of the confined child's own deadline.
_HELPER_GRACE_S = 20.0
_RESULT_BYTES_MAX = 4 * 1024 * 1024
_IDLE_HELPERS_MAX = 2


# How long a refused upload is told to wait before it tries again.
BUSY_RETRY_AFTER_S = 5.0


def memory_budget(size: int, *, base_bytes: int = 512 * MiB, per_model_byte: int = 3) -> int:
    """Address space the confined child may add to inspect a model of ``size`` bytes: the
    parsed message (about the size of the file when it has to be parsed whole; bulk weights
    are otherwise measured in place, see ``scan_initializers``), the checker's and shape inference's copies of
    what is left once bulk weights are set aside, and the interpreter's own working memory.
    The file's mapping itself is inherited and does not count."""
    return base_bytes + per_model_byte * size


class _Helper:
    """One inspector helper process and its request/answer pipes."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "model_registry.confined"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": _import_path()},
            close_fds=True,
        )

    def ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(request).encode() + b"\n")
        stdin.flush()
        line = _read_line(stdout, time.monotonic() + timeout_s)
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise ValueError("not an object")
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


def _read_line(stream: IO[bytes], deadline: float) -> bytes:
    fd = stream.fileno()
    data = bytearray()
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            raise EOFError
        data += chunk
        if len(data) > _RESULT_BYTES_MAX:
            raise ValueError("answer too large")
    return bytes(data)


class _Helpers:
    """Idle helpers, shared by every app in the process; one request per helper at a time."""

    def __init__(self) -> None:
        self._idle: list[_Helper] = []
        self._lock = threading.Lock()
        atexit.register(self.close)

    def take(self) -> _Helper:
        with self._lock:
            while self._idle:
                helper = self._idle.pop()
                if helper.process.poll() is None:
                    return helper
                helper.close()
        return _Helper()

    def give_back(self, helper: _Helper) -> None:
        with self._lock:
            if len(self._idle) < _IDLE_HELPERS_MAX:
                self._idle.append(helper)
                return
        helper.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for helper in idle:
            helper.close()


_helpers = _Helpers()


class Inspector:
    """Inspects uploaded files in confined children, at most ``concurrency_max`` at a time."""

    def __init__(
        self,
        policy: InspectionPolicy | None = None,
        *,
        wall_s_max: float = 120.0,
        concurrency_max: int = 2,
        memory_base_bytes: int = 512 * MiB,
        memory_per_model_byte: int = 3,
    ) -> None:
        if concurrency_max < 1:
            raise ValueError("concurrency_max must be at least 1")
        self.policy = policy or InspectionPolicy()
        self.wall_s_max = wall_s_max
        self.concurrency_max = concurrency_max
        self.memory_base_bytes = memory_base_bytes
        self.memory_per_model_byte = memory_per_model_byte
        self._running = 0
        self._lock = threading.Lock()

    @property
    def saturated(self) -> bool:
        """Whether every inspection slot is taken (a new upload would be refused)."""
        with self._lock:
            return self._running >= self.concurrency_max

    def __call__(self, path: Path) -> Report:
        """Inspect ``path``; ``SandboxBusy`` when ``concurrency_max`` inspections are running."""
        with self._lock:
            if self._running >= self.concurrency_max:
                raise SandboxBusy(
                    "Too many models are being inspected; retry later.",
                    retry_after_s=BUSY_RETRY_AFTER_S,
                )
            self._running += 1
        try:
            budget = memory_budget(
                Path(path).stat().st_size,
                base_bytes=self.memory_base_bytes,
                per_model_byte=self.memory_per_model_byte,
            )
            return inspect_file(
                path, self.policy, wall_s_max=self.wall_s_max, memory_bytes_max=budget
            )
        finally:
            with self._lock:
                self._running -= 1


def inspect_file(
    path: str | os.PathLike[str],
    policy: InspectionPolicy | None = None,
    *,
    wall_s_max: float = 120.0,
    memory_bytes_max: int | None = None,
) -> Report:
    """Inspect the model in ``path`` in a confined process; raise a ``SandboxError`` when the
    inspection itself failed (deadline, memory, crash) rather than judged the model.

    ``memory_bytes_max`` is the address space the confined child may add to what it inherits
    (default: :func:`memory_budget` of the file's size)."""
    policy = policy or InspectionPolicy()
    path = Path(path).resolve()
    request = {
        "path": str(path),
        "policy": policy.to_dict(),
        "memory_bytes_max": memory_bytes_max or memory_budget(path.stat().st_size),
        "wall_s_max": wall_s_max,
    }
    try:
        helper = _helpers.take()
    except OSError as exc:
        raise SandboxUnavailable(log_detail=f"cannot start an inspector: {exc}") from None
    try:
        answer = helper.ask(request, wall_s_max + _HELPER_GRACE_S)
    except TimeoutError:
        helper.close()
        raise DeadlineExceeded() from None
    except (OSError, EOFError, ValueError) as exc:
        helper.close()
        raise SandboxUnavailable(log_detail=f"inspector failed: {exc!r}") from None
    _helpers.give_back(helper)
    if answer.get("ok"):
        return Report.from_dict(answer["result"])
    raise error_for_code(str(answer.get("code", "")), log_detail=answer.get("log"))


def _import_path() -> str:
    # The helper must import this package and sandbox from wherever the caller did.
    root = str(Path(__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + rest if rest else "")


def _inspect_one(request: dict[str, Any]) -> dict[str, Any]:
    """Map the file and inspect it in a confined child (runs in the helper)."""
    from sandbox.confine import Limits, run_confined
    from sandbox.errors import SandboxError

    policy = InspectionPolicy.from_dict(request["policy"])
    limits = Limits(
        memory_added_bytes_max=int(request["memory_bytes_max"]),
        wall_s_max=float(request["wall_s_max"]),
        cpu_s_max=max(1, int(request["wall_s_max"])),
        result_bytes_max=_RESULT_BYTES_MAX,
    )
    try:
        fd = os.open(request["path"], os.O_RDONLY)
    except OSError as exc:
        return {"ok": False, "code": "sandbox_unavailable", "log": f"open: {exc}"}
    view: Any = b""
    try:
        size = os.fstat(fd).st_size
        # A read-only mapping: pages come from the page cache as the parser touches them, and
        # the confined child inherits it without any open descriptor.
        if size:
            view = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)

    def target(_payload: bytes) -> dict[str, Any]:
        return inspect_model(memoryview(view) if size else b"", policy).to_dict()

    try:
        return {"ok": True, "result": run_confined(target, b"", limits=limits)}
    except SandboxError as exc:
        return {"ok": False, "code": exc.code, "log": exc.log_detail}
    finally:
        if size:
            view.close()


def _serve() -> int:
    """Answer one JSON request per line on stdin with one JSON line on stdout, until EOF."""
    for line in sys.stdin.buffer:
        try:
            answer = _inspect_one(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "code": "sandbox_unavailable", "log": f"bad request: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(_serve())
