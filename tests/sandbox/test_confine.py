"""The confinement primitive: limits hold, dangerous syscalls fail, failures map to codes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import resource
import signal
import socket
import time

import pytest

from sandbox.confine import Limits, address_space_bytes, probe, run_confined
from sandbox.errors import InputInvalid, SandboxError

SMALL = Limits(memory_added_bytes_max=1 << 30, cpu_s_max=10, wall_s_max=5.0)


HOST = probe()


def _errno_of(call: object) -> int | None:
    try:
        call()  # type: ignore[operator]
    except OSError as exc:
        return exc.errno
    return None


def test_probe_reports_the_core_protections() -> None:
    assert HOST.rlimits
    assert HOST.no_new_privs
    assert HOST.seccomp
    assert HOST.fds_closed
    assert HOST.empty_cwd


def test_payload_reaches_the_child_and_the_result_comes_back() -> None:
    payload = os.urandom(3 << 20)
    result = run_confined(
        lambda b: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()}, payload, limits=SMALL
    )
    assert result == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_rlimits_hold_in_the_child() -> None:
    def limits(_: bytes) -> dict[str, list[int]]:
        names = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CORE")
        return {n: list(resource.getrlimit(getattr(resource, n))) for n in names}

    got = run_confined(limits, b"", limits=SMALL)
    soft, hard = got.pop("RLIMIT_AS")
    assert soft == hard
    assert got == {
        "RLIMIT_CPU": [10, 11],
        "RLIMIT_NOFILE": [64, 64],
        "RLIMIT_FSIZE": [0, 0],
        "RLIMIT_CORE": [0, 0],
    }


def test_the_address_space_limit_counts_from_what_the_child_inherits() -> None:
    # The parent's size is the child's starting point: a large parent (this test process, after
    # many tests) must not leave its confined child without room. Grow the parent by 2 GiB of
    # reserved address space first; the child still gets its full 1 GiB on top.
    reserve = mmap.mmap(-1, 2 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        inherited = address_space_bytes()

        def report(_: bytes) -> dict[str, int]:
            room = len(bytearray(SMALL.memory_added_bytes_max - (128 << 20)))
            return {"limit": resource.getrlimit(resource.RLIMIT_AS)[0], "room": room}

        got = run_confined(report, b"", limits=SMALL)
    finally:
        reserve.close()
    assert inherited <= got["limit"] - SMALL.memory_added_bytes_max < inherited + (64 << 20)
    assert got["room"] == SMALL.memory_added_bytes_max - (128 << 20)


def test_limits_cannot_be_raised_again() -> None:
    def raise_limit(_: bytes) -> list[int]:
        before = list(resource.getrlimit(resource.RLIMIT_AS))
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_AS, (2 * before[0],) * 2)
        return [*before, *resource.getrlimit(resource.RLIMIT_AS)]

    soft, hard, soft_after, hard_after = run_confined(raise_limit, b"", limits=SMALL)
    assert (soft_after, hard_after) == (soft, hard)


def test_sockets_exec_and_fork_are_denied() -> None:
    def attempts(_: bytes) -> dict[str, int | None]:
        return {
            "socket": _errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
            "unix": _errno_of(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)),
            "socketpair": _errno_of(socket.socketpair),
            "execv": _errno_of(lambda: os.execv("/bin/true", ["true"])),
            "fork": _errno_of(os.fork),
        }

    got = run_confined(attempts, b"", limits=SMALL)
    assert got == {"socket": 1, "unix": 1, "socketpair": 1, "execv": 1, "fork": 1}


def test_signals_reach_only_the_child_itself() -> None:
    parent = os.getpid()

    def attempts(_: bytes) -> dict[str, int | None]:
        return {
            "parent": _errno_of(lambda: os.kill(parent, 0)),
            "init": _errno_of(lambda: os.kill(1, 0)),
            "self": _errno_of(lambda: os.kill(os.getpid(), 0)),
        }

    got = run_confined(attempts, b"", limits=SMALL)
    assert got == {"parent": errno.EPERM, "init": errno.EPERM, "self": None}


def test_terminal_injection_is_denied() -> None:
    def tiocsti(_: bytes) -> int | None:
        import fcntl
        import termios

        return _errno_of(lambda: fcntl.ioctl(0, termios.TIOCSTI, b"x"))

    # Without the filter this is ENOTTY (stdin is /dev/null); the filter answers first.
    assert run_confined(tiocsti, b"", limits=SMALL) == errno.EPERM


def test_threads_still_work() -> None:
    def spawn(_: bytes) -> int:
        import threading

        box: list[int] = []
        thread = threading.Thread(target=lambda: box.append(7))
        thread.start()
        thread.join()
        return box[0]

    assert run_confined(spawn, b"", limits=SMALL) == 7


def test_files_cannot_be_created_and_cwd_is_empty() -> None:
    def attempts(_: bytes) -> dict[str, object]:
        try:
            entries: object = os.listdir(".")
        except OSError as exc:
            entries = exc.errno
        return {
            "cwd_entries": entries,
            "create_here": _errno_of(lambda: open("x", "w")),
            "create_tmp": _errno_of(lambda: open("/tmp/jishi-sandbox-probe", "w")),
        }

    got = run_confined(attempts, b"", limits=SMALL)
    assert got["cwd_entries"] in ([], errno.EACCES)
    assert got["create_here"] is not None
    assert got["create_tmp"] is not None
    assert not os.path.exists("/tmp/jishi-sandbox-probe")


@pytest.mark.skipif(not HOST.landlock, reason="Landlock is not available on this kernel")
def test_landlock_hides_files_outside_the_interpreter() -> None:
    def read_passwd(_: bytes) -> int | None:
        return _errno_of(lambda: open("/etc/passwd").read())

    assert run_confined(read_passwd, b"", limits=SMALL) == errno.EACCES


def test_inherited_descriptors_are_closed() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(fd, True)
    try:
        assert run_confined(lambda _: _errno_of(lambda: os.fstat(fd)), b"", limits=SMALL) == (
            errno.EBADF
        )
    finally:
        os.close(fd)


def test_memory_bomb_is_resource_exhausted() -> None:
    with pytest.raises(SandboxError) as exc:
        run_confined(lambda _: len(bytearray(2 * SMALL.memory_added_bytes_max)), b"", limits=SMALL)
    assert exc.value.code == "resource_exhausted", exc.value.log_detail


def _spin(_: bytes) -> None:
    while True:
        pass


def test_infinite_loop_is_deadline_exceeded_within_grace() -> None:
    started = time.monotonic()
    with pytest.raises(SandboxError) as exc:
        run_confined(_spin, b"", limits=Limits(wall_s_max=1.0))
    assert exc.value.code == "deadline_exceeded", exc.value.log_detail
    assert time.monotonic() - started < 1.0 + 0.5


def test_cpu_limit_kills_a_spinning_child() -> None:
    with pytest.raises(SandboxError) as exc:
        run_confined(_spin, b"", limits=Limits(cpu_s_max=1, wall_s_max=10.0))
    assert exc.value.code == "resource_exhausted", exc.value.log_detail


def test_segfault_is_worker_crashed() -> None:
    with pytest.raises(SandboxError) as exc:
        run_confined(lambda _: os.kill(os.getpid(), signal.SIGSEGV), b"", limits=SMALL)
    assert exc.value.code == "worker_crashed", exc.value.log_detail


def _fail(_: bytes) -> None:
    raise ValueError("parse error at /secret/host/path")


def test_target_failure_is_model_invalid_without_leaking_the_message() -> None:
    with pytest.raises(SandboxError) as exc:
        run_confined(_fail, b"", limits=SMALL)
    assert exc.value.code == "model_invalid", exc.value.log_detail
    assert "/secret" not in exc.value.detail
    assert exc.value.log_detail is not None and "/secret/host/path" in exc.value.log_detail


def test_target_failure_is_model_invalid_whatever_the_parent_holds() -> None:
    # The flaky case: a test process that had grown by the time it forked left its child no
    # room to report the failure, which came back as worker_crashed.
    reserve = mmap.mmap(-1, 4 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        with pytest.raises(SandboxError) as exc:
            run_confined(_fail, b"", limits=SMALL)
    finally:
        reserve.close()
    assert exc.value.code == "model_invalid", exc.value.log_detail


def test_sandbox_errors_raised_by_the_target_keep_their_code() -> None:
    def refuse(_: bytes) -> None:
        raise InputInvalid("too many elements")

    with pytest.raises(SandboxError) as exc:
        run_confined(refuse, b"", limits=SMALL)
    assert exc.value.code == "input_invalid", exc.value.log_detail
    assert exc.value.detail == "too many elements"


def test_oversized_result_is_resource_exhausted() -> None:
    limits = Limits(result_bytes_max=1 << 16)
    with pytest.raises(SandboxError) as exc:
        run_confined(lambda _: "x" * (1 << 20), b"", limits=limits)
    assert exc.value.code == "resource_exhausted", exc.value.log_detail


def test_parent_is_unaffected() -> None:
    before = (os.getcwd(), resource.getrlimit(resource.RLIMIT_AS))
    with pytest.raises(SandboxError):
        run_confined(lambda _: os.kill(os.getpid(), signal.SIGSEGV), b"", limits=SMALL)
    run_confined(lambda _: None, b"", limits=SMALL)
    assert (os.getcwd(), resource.getrlimit(resource.RLIMIT_AS)) == before
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.fileno() >= 0


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        Limits(memory_added_bytes_max=1)
    with pytest.raises(ValueError):
        Limits(wall_s_max=0)
