"""Runs :func:`inspect_model` on an uploaded file in a confined process, never in the caller.

The caller (the web process, which has threads and holds database connections) starts a fresh
interpreter, ``python -m model_registry.confined``, with the file as its standard input. That
process maps the file read-only and hands the inspection to ``sandbox.confine.run_confined``,
which forks a child, confines it (rlimits, no descriptors, seccomp, Landlock...) and runs the
inspection there. Only JSON comes back. Forking happens in the small single-threaded helper,
not in the web process, and the model's bytes never enter the web process's memory.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from model_registry.inspection import InspectionPolicy, Report, inspect_model
from sandbox.errors import DeadlineExceeded, SandboxError, SandboxUnavailable, error_for_code

GiB = 1 << 30
# Extra wall time the helper gets on top of the confined child's deadline (interpreter start).
_HELPER_GRACE_S = 20.0
_RESULT_BYTES_MAX = 4 * 1024 * 1024


def memory_budget(size: int, *, base_bytes: int = GiB, per_model_byte: int = 4) -> int:
    """Address space for inspecting a model of ``size`` bytes: the mapped file, the parsed
    message, the checker's own parse, and the interpreter that inherited the mapping."""
    return base_bytes + per_model_byte * size


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
    size = Path(path).stat().st_size
    request = {
        "policy": policy.to_dict(),
        "memory_bytes_max": memory_bytes_max or memory_budget(size),
        "wall_s_max": wall_s_max,
    }
    with open(path, "rb") as model_file:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "model_registry.confined", json.dumps(request)],
                stdin=model_file,
                capture_output=True,
                timeout=wall_s_max + _HELPER_GRACE_S,
                check=False,
                env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": _import_path()},
            )
        except subprocess.TimeoutExpired:
            raise DeadlineExceeded() from None
        except OSError as exc:
            raise SandboxUnavailable(log_detail=f"cannot start the inspector: {exc}") from None
    try:
        message = json.loads(done.stdout[:_RESULT_BYTES_MAX])
    except ValueError:
        raise SandboxUnavailable(
            log_detail=f"inspector exited {done.returncode}: {done.stderr[-2000:]!r}"
        ) from None
    if message.get("ok"):
        return Report.from_dict(message["result"])
    raise error_for_code(str(message.get("code", "")), log_detail=message.get("log"))


def _import_path() -> str:
    # The helper must import this package and sandbox from wherever the caller did.
    root = str(Path(__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + rest if rest else "")


def _main() -> int:
    from sandbox.confine import Limits, run_confined

    request = json.loads(sys.argv[1])
    policy = InspectionPolicy.from_dict(request["policy"])
    limits = Limits(
        memory_bytes_max=int(request["memory_bytes_max"]),
        wall_s_max=float(request["wall_s_max"]),
        cpu_s_max=max(1, int(request["wall_s_max"])),
        result_bytes_max=_RESULT_BYTES_MAX,
    )
    size = os.fstat(0).st_size
    # A read-only private mapping: pages come from the page cache as the parser touches them.
    view: Any = mmap.mmap(0, size, prot=mmap.PROT_READ) if size else b""

    def target(_payload: bytes) -> dict[str, Any]:
        data = memoryview(view) if size else b""
        return inspect_model(data, policy).to_dict()

    out: dict[str, Any]
    try:
        out = {"ok": True, "result": run_confined(target, b"", limits=limits)}
    except SandboxError as exc:
        out = {"ok": False, "code": exc.code, "log": exc.log_detail}
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
