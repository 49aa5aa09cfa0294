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
from sandbox.errors import DeadlineExceeded, SandboxUnavailable, error_for_code

GiB = 1 << 30
# Extra wall time a helper gets on top of the confined child's own deadline.
_HELPER_GRACE_S = 20.0
_RESULT_BYTES_MAX = 4 * 1024 * 1024
_IDLE_HELPERS_MAX = 2


def memory_budget(size: int, *, base_bytes: int = GiB, per_model_byte: int = 4) -> int:
    """Address space for inspecting a model of ``size`` bytes: the mapped file, the parsed
    message, the checker's own parse, and the interpreter that inherited the mapping."""
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


def inspect_file(
    path: str | os.PathLike[str],
    policy: InspectionPolicy | None = None,
    *,
    wall_s_max: float = 120.0,
    memory_bytes_max: int | None = None,
) -> Report:
    """Inspect the model in ``path`` in a confined process; raise a ``SandboxError`` when the
    inspection itself failed (deadline, memory, crash) rather than judged the model."""
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
