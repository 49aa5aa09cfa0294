"""The zygote: a fresh interpreter that has imported numpy and onnxruntime and forks workers.

The supervisor starts it with `python -I` and a clean environment, so no secret of the web
process (keys, database credentials, its memory) reaches a worker. It is single-threaded, which
makes fork safe, and it never touches model bytes itself.

Messages on the SOCK_SEQPACKET control socket are JSON, with descriptors as SCM_RIGHTS:
  supervisor -> zygote  {"op": "spawn", "wid": N, "params": {...}}  + 5 fds (see WorkerFds)
  zygote -> supervisor  {"op": "ready"}                               once, after warm-up
                        {"op": "spawned", "wid": N, "pid": P}         + the worker's pidfd
                        {"op": "spawn_failed", "wid": N}
                        {"op": "exited", "wid": N, "status": S}      the raw wait status
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
from typing import Any

import numpy as np
import onnx.helper as oh
import onnxruntime as ort
from onnx import TensorProto

from sandbox.runtime import check_model, session_options
from sandbox.worker import WorkerFds, WorkerParams, serve

MESSAGE_BYTES_MAX = 1 << 16


def _warm_up() -> None:
    """Check, load and run a tiny model the ways workers do, so that whatever onnx and
    onnxruntime load lazily is loaded here, before any worker is confined."""
    graph = oh.make_graph(
        [oh.make_node("Identity", ["x"], ["y"])],
        "warm_up",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString()
    check_model(model, nodes_max=1)
    session = ort.InferenceSession(
        model,
        session_options(constant_folding_bytes_max=1 << 20),
        providers=["CPUExecutionProvider"],
    )
    x, y = np.zeros(1, np.float32), np.zeros(1, np.float32)
    session.run(None, {"x": x}, ort.RunOptions())
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(y))
    session.run_with_iobinding(binding)
    del binding, session


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    try:
        socket.send_fds(sock, [json.dumps(message).encode()], fds or [])
    except OSError:
        sys.exit(0)  # The supervisor is gone; the workers die with us (PDEATHSIG).


def _spawn(
    sock: socket.socket, wake_fds: tuple[int, int], message: dict[str, Any], fds: list[int]
) -> tuple[int, int] | None:
    wid = int(message["wid"])
    try:
        if len(fds) != 5:
            raise ValueError("a worker needs five descriptors")
        params = WorkerParams.from_json(message["params"])
        pid = os.fork()
    except (OSError, TypeError, KeyError, ValueError):
        for fd in fds:
            os.close(fd)
        _send(sock, {"op": "spawn_failed", "wid": wid})
        return None
    if pid == 0:
        status = 0
        try:
            sock.close()
            for fd in wake_fds:
                os.close(fd)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            serve(WorkerFds(*fds), params)
        except BaseException:
            status = 70
        finally:
            os._exit(status)
    for fd in fds:
        os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        _send(sock, {"op": "spawn_failed", "wid": wid})
        return wid, pid
    try:
        _send(sock, {"op": "spawned", "wid": wid, "pid": pid}, [pidfd])
    finally:
        os.close(pidfd)
    return wid, pid


def main(control_fd: int) -> None:
    """Serve spawn requests until the supervisor closes the control socket."""
    sock = socket.socket(fileno=control_fd)
    _warm_up()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, int] = {}
    _send(sock, {"op": "ready"})
    while True:
        try:
            ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 4096):
                        break
                except BlockingIOError:
                    break
            _reap(sock, children)
        if sock.fileno() in ready:
            try:
                data, fds, _, _ = socket.recv_fds(sock, MESSAGE_BYTES_MAX, 8)
            except OSError:
                data, fds = b"", []
            if not data:
                return  # The supervisor is gone; the workers die with us (PDEATHSIG).
            message = json.loads(data)
            if message.get("op") == "spawn":
                spawned = _spawn(sock, (wake_r, wake_w), message, fds)
                if spawned is not None:
                    children[spawned[1]] = spawned[0]
            else:
                for fd in fds:
                    os.close(fd)


def _reap(sock: socket.socket, children: dict[int, int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        wid = children.pop(pid, None)
        if wid is not None:
            _send(sock, {"op": "exited", "wid": wid, "status": status})


if __name__ == "__main__":
    main(int(sys.argv[1]))
