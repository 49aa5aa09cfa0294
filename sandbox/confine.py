"""Process confinement for code that touches untrusted model bytes.

`apply_confinement` locks down the *current* process (meant for a freshly forked child):
resource limits, an empty and deleted working directory, no inherited descriptors,
empty capability sets, `no_new_privs`, Landlock (when the kernel offers it) and a
seccomp filter. It returns a `Protections` record saying which of these are actually in force, so
the operator can see what degraded.

`run_confined` forks a child, confines it, runs a trusted callable on untrusted bytes there and
returns the callable's JSON result. The result crosses as JSON, never pickle: a child whose
memory a hostile model corrupted must not be able to run code in the parent.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from typing import Any

from sandbox.errors import (
    DeadlineExceeded,
    ModelInvalid,
    ResourceExhausted,
    SandboxError,
    SandboxUnavailable,
    WorkerCrashed,
    error_for_code,
)
from sandbox.protocol import wait_readable

# Imported here, not at confinement time: loading libseccomp looks up the library through
# ld.so.cache, which Landlock has hidden by then.
try:
    import pyseccomp
except (ImportError, OSError):  # pragma: no cover - depends on the host's libseccomp.
    pyseccomp = None

JsonValue = Any  # A value `json.dumps` accepts; results cross the process boundary as JSON.

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Resource ceilings for one confined process.

    `memory_added_bytes_max` bounds the address space the process may map beyond what it holds
    when it is confined (RLIMIT_AS is set to the sum). A forked child inherits its parent's whole
    address space, which depends on the parent's history (threads, libraries, sessions); an
    absolute limit would leave a child of a large parent no room at all, so the limit is
    measured from what the child actually inherited. `cpu_s_max` is a CPU-time backstop
    (RLIMIT_CPU); the wall-clock deadline `wall_s_max` is enforced by the parent with SIGKILL.
    """

    memory_added_bytes_max: int = 2 * GiB
    cpu_s_max: int = 60
    wall_s_max: float = 30.0
    open_files_max: int = 64
    result_bytes_max: int = 16 * MiB
    drop_privileges: bool = True

    def __post_init__(self) -> None:
        if self.memory_added_bytes_max < 64 * MiB:
            raise ValueError("memory_added_bytes_max must be at least 64 MiB")
        if self.cpu_s_max < 1:
            raise ValueError("cpu_s_max must be at least 1 s")
        if self.wall_s_max <= 0:
            raise ValueError("wall_s_max must be positive")
        if not 8 <= self.open_files_max <= 4096:
            raise ValueError("open_files_max must be between 8 and 4096")
        if self.result_bytes_max < 1:
            raise ValueError("result_bytes_max must be positive")


@dataclass(frozen=True)
class Protections:
    """Which confinement measures are in force in a confined process."""

    rlimits: bool = False
    empty_cwd: bool = False
    fds_closed: bool = False
    capabilities_dropped: bool = False
    no_new_privs: bool = False
    landlock: bool = False
    landlock_abi: int = 0
    seccomp: bool = False

    def as_dict(self) -> dict[str, bool | int]:
        """The record as a plain dict (for health endpoints and logs)."""
        return asdict(self)


# --- prctl and Landlock through libc -------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_M_ARENA_MAX = -8

# x86_64 and aarch64 share the generic numbers for the Landlock syscalls.
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

_LL_EXECUTE = 1 << 0
_LL_WRITE_FILE = 1 << 1
_LL_READ_FILE = 1 << 2
_LL_READ_DIR = 1 << 3
# Filesystem rights known to each Landlock ABI version (index = ABI).
_LL_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_LL_FS_LATEST = (1 << 16) - 1  # ABI 5 added IOCTL_DEV; later ABIs added no filesystem rights.
_LL_NET_TCP = (1 << 0) | (1 << 1)  # BIND_TCP | CONNECT_TCP, ABI >= 4.
_LL_SCOPE = (1 << 0) | (1 << 1)  # ABSTRACT_UNIX_SOCKET | SIGNAL, ABI >= 6.


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is absent or disabled."""
    version = _libc.syscall(
        _SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), _LANDLOCK_CREATE_RULESET_VERSION
    )
    return int(version) if version > 0 else 0


def _read_only_roots() -> dict[str, bool]:
    """Paths a confined process may still read (path -> is a directory).

    The interpreter, the system libraries and the code already imported; everything else
    (instance data, keys, blobs, /etc, /home) becomes unreadable. Imported packages contribute
    their top-level package directory and top-level modules only their own file, so a
    repository root that also holds instance data is not opened up.
    """
    roots: dict[str, bool] = {
        p: True for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr/lib", "/lib"}
    }
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or name == "__main__":
            continue
        path = os.path.abspath(path)
        is_package = os.path.basename(path).startswith("__init__.")
        levels = name.count(".") + (1 if is_package else 0)
        if levels == 0:
            roots[path] = False
            continue
        directory = path
        for _ in range(levels):
            directory = os.path.dirname(directory)
        roots[directory] = True
    covered = sorted(p for p, is_dir in roots.items() if is_dir)

    def inside_another(path: str) -> bool:
        return any(path != root and path.startswith(root.rstrip("/") + "/") for root in covered)

    return {p: is_dir for p, is_dir in roots.items() if os.path.exists(p) and not inside_another(p)}


def _apply_landlock(abi: int) -> bool:
    handled_fs = _LL_FS_BY_ABI.get(abi, _LL_FS_LATEST)
    attr = _RulesetAttr(handled_fs, _LL_NET_TCP if abi >= 4 else 0, _LL_SCOPE if abi >= 6 else 0)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    ruleset_fd = int(_libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0))
    if ruleset_fd < 0:
        return False
    try:
        for root, is_dir in _read_only_roots().items():
            try:
                fd = os.open(root, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                access = _LL_EXECUTE | _LL_READ_FILE | (_LL_READ_DIR if is_dir else 0)
                rule = _PathBeneathAttr(access, fd)
                _libc.syscall(
                    _SYS_LANDLOCK_ADD_RULE,
                    ruleset_fd,
                    _LANDLOCK_RULE_PATH_BENEATH,
                    ctypes.byref(rule),
                    0,
                )
            finally:
                os.close(fd)
        return int(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0)) == 0
    finally:
        os.close(ruleset_fd)


# --- seccomp -------------------------------------------------------------------------------

# Denied with EPERM. Sockets, exec, debugging, kernel and namespace administration, and
# everything that would let a compromised worker raise its own limits or spawn processes.
_DENIED_SYSCALLS = (
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "execve", "execveat", "fork", "vfork",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "pidfd_open",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount",
    "fsconfig", "fspick", "mount_setattr", "unshare", "setns",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "reboot", "swapon", "swapoff", "acct", "syslog", "quotactl",
    "keyctl", "add_key", "request_key", "setrlimit", "open_by_handle_at", "name_to_handle_at",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    "iopl", "ioperm", "mknod", "mknodat", "fanotify_init", "uselib", "vhangup", "personality",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capset",
)  # fmt: skip
_CLONE_THREAD = 0x00010000
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C


def _apply_seccomp() -> bool:
    if pyseccomp is None:
        return False
    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    deny = pyseccomp.ERRNO(errno.EPERM)
    for name in _DENIED_SYSCALLS:
        try:
            flt.add_rule(deny, name)
        except (OSError, ValueError):
            continue  # Not a syscall on this architecture.
    # Threads are allowed, new processes are not: clone without CLONE_THREAD is denied, and
    # clone3 (whose flags live in memory a filter cannot read) answers ENOSYS so libc falls
    # back to clone.
    flt.add_rule(deny, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, _CLONE_THREAD, 0))
    flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    # prlimit64 may read limits (new_limit == NULL) but never set them.
    flt.add_rule(deny, "prlimit64", pyseccomp.Arg(2, pyseccomp.NE, 0))
    # Signals only to itself: not to the supervisor, the web process or sibling workers
    # (Landlock's signal scope says the same on kernels that have it).
    me = os.getpid()
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        flt.add_rule(deny, name, pyseccomp.Arg(0, pyseccomp.NE, me))
    flt.add_rule(deny, "tkill")
    flt.add_rule(deny, "pidfd_send_signal")
    # No pushing keystrokes into a terminal that stderr might still be attached to. Only the
    # low 32 bits of the request count, so compare under that mask.
    for request in (_TIOCSTI, _TIOCLINUX):
        flt.add_rule(deny, "ioctl", pyseccomp.Arg(1, pyseccomp.MASKED_EQ, 0xFFFFFFFF, request))
    try:
        flt.load()
    except OSError:
        return False
    return True


# --- the rest ------------------------------------------------------------------------------


def _set_rlimits(limits: Limits) -> bool:
    try:
        address_space = address_space_bytes() + limits.memory_added_bytes_max
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        # The hard CPU limit is one second above the soft one: SIGXCPU first, then SIGKILL.
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s_max, limits.cpu_s_max + 1))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files_max, limits.open_files_max))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError):
        return False
    return True


def _enter_empty_cwd() -> bool:
    # A directory that is created, entered and removed: relative paths resolve nowhere and
    # nothing can be created in it.
    try:
        path = tempfile.mkdtemp(prefix="jishi-sandbox-")
        os.chdir(path)
        os.rmdir(path)
    except OSError:
        return False
    return True


def _close_fds(keep: Collection[int]) -> bool:
    try:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        # stderr stays so that the runtime's own fatal messages reach the server log.
        kept = sorted({0, 1, 2, *keep})
        for low, high in zip(kept, [*kept[1:], 1 << 20], strict=True):
            if high > low + 1:
                os.closerange(low + 1, high)
    except OSError:
        return False
    return True


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_LAST_MAX = 63
# NOROOT, NO_SETUID_FIXUP, KEEP_CAPS_LOCKED... each with its lock bit: uid 0 never regains
# capabilities, not even through a setuid transition.
_SECUREBITS_LOCKED_NOROOT = 0x2F


def _drop_capabilities() -> bool:
    """Empty every capability set; the process may stay uid 0 but holds no privilege.

    Changing to an unprivileged uid would be stronger still, but the interpreter and its
    libraries commonly live under root-only directories, and later lazy imports would fail.
    """
    _libc.prctl(_PR_SET_SECUREBITS, _SECUREBITS_LOCKED_NOROOT, 0, 0, 0)
    for cap in range(_CAP_LAST_MAX + 1):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # Past the kernel's last capability.
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        return False
    check = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), check) != 0:
        return False
    return all(d.effective == d.permitted == d.inheritable == 0 for d in check)


_active = Protections()


def apply_confinement(limits: Limits, *, keep_fds: Collection[int] = ()) -> Protections:
    """Confine the current process for good; call it in a fresh child before untrusted input."""
    # One malloc arena: per-thread arenas reserve 64 MiB of address space each, which would eat
    # the RLIMIT_AS budget without storing anything.
    _libc.mallopt(_M_ARENA_MAX, 1)
    empty_cwd = _enter_empty_cwd()
    fds_closed = _close_fds(keep_fds)
    # Not dumpable: no core, no ptrace, /proc/<pid> owned by root. The parent-death signal is
    # set after the credential change because such a change clears it.
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # Limits first: with capabilities gone, a hard limit can no longer be raised.
    rlimits = _set_rlimits(limits)
    capabilities_dropped = limits.drop_privileges and _drop_capabilities()
    no_new_privs = _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    abi = landlock_abi()
    landlock = no_new_privs and abi > 0 and _apply_landlock(abi)
    seccomp = no_new_privs and _apply_seccomp()
    global _active
    _active = Protections(
        rlimits=rlimits,
        empty_cwd=empty_cwd,
        fds_closed=fds_closed,
        capabilities_dropped=capabilities_dropped,
        no_new_privs=no_new_privs,
        landlock=landlock,
        landlock_abi=abi if landlock else 0,
        seccomp=seccomp,
    )
    return _active


def current_protections() -> Protections:
    """The protections `apply_confinement` put in force in this process (none if not called)."""
    return _active


def address_space_bytes() -> int:
    """This process's virtual address space now; a forked child starts with all of it."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def probe(limits: Limits | None = None) -> Protections:
    """Confine a throw-away child and report which protections took effect on this host."""
    record = run_confined(lambda _: current_protections().as_dict(), b"", limits=limits)
    return Protections(**record)


# --- run_confined --------------------------------------------------------------------------

_GRACE_S = 0.5
_RESOURCE_SIGNALS = {signal.SIGXCPU, signal.SIGXFSZ}


def _child_main(
    target: Callable[[bytes], JsonValue], payload: bytes, limits: Limits, write_fd: int
) -> None:
    """Runs in the forked child; never returns."""
    status = 0
    try:
        apply_confinement(limits, keep_fds=(write_fd,))
        try:
            message: dict[str, JsonValue] = {"ok": True, "result": target(payload)}
        except SandboxError as exc:
            message = {"ok": False, "code": exc.code, "detail": exc.detail, "log": exc.log_detail}
        except MemoryError:
            message = {"ok": False, "code": ResourceExhausted.code, "detail": None, "log": None}
        except RecursionError as exc:
            message = {"ok": False, "code": ModelInvalid.code, "detail": None, "log": repr(exc)}
        except Exception as exc:
            # Any other failure of the trusted target on untrusted bytes means the bytes are bad.
            try:
                log: str | None = "".join(traceback.format_exception_only(exc))[-4000:]
            except MemoryError:
                # Out of address space while describing the failure: still the model's fault,
                # not a crash of the child.
                log = None
            message = {"ok": False, "code": ModelInvalid.code, "detail": None, "log": log}
        try:
            data = json.dumps(message).encode()
        except (TypeError, ValueError, MemoryError) as exc:
            data = json.dumps(
                {"ok": False, "code": WorkerCrashed.code, "detail": None, "log": repr(exc)}
            ).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
    except BaseException:
        status = 70
    finally:
        os._exit(status)


def _read_all(read_fd: int, deadline: float, cap: int) -> tuple[bytes, bool]:
    """Read until EOF or the deadline; returns (data, finished_before_deadline)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), False
        if not wait_readable(read_fd, remaining):
            return b"".join(chunks), False
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            return b"".join(chunks), True
        size += len(chunk)
        if size > cap:
            raise ResourceExhausted("The confined task's result is too large.")
        chunks.append(chunk)


def _wait_exit(pid: int, pidfd: int, deadline: float) -> int | None:
    """Wait status of `pid`, or None if it is still running at `deadline`."""
    if not wait_readable(pidfd, deadline - time.monotonic()):
        return None
    _, status = os.waitpid(pid, 0)
    return status


def status_error(status: int, *, killed_by_us: bool = False) -> SandboxError:
    """Map a child's wait status (without a result message) to an error."""
    if killed_by_us:
        return DeadlineExceeded()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig in _RESOURCE_SIGNALS:
            return ResourceExhausted(log_detail=f"child killed by {name}")
        if sig == signal.SIGKILL:
            # Not ours: the hard CPU limit or the kernel's OOM killer.
            return ResourceExhausted(log_detail="child killed by SIGKILL")
        return WorkerCrashed(log_detail=f"child killed by {name}")
    return WorkerCrashed(log_detail=f"child exited with status {os.WEXITSTATUS(status)}")


def run_confined(
    target: Callable[[bytes], JsonValue], payload: bytes, *, limits: Limits | None = None
) -> JsonValue:
    """Run trusted `target(payload)` in a forked, confined child; return its JSON result.

    The child's memory limit counts from the address space it inherits at fork (see `Limits`),
    so the caller's own size never eats the child's budget.

    The payload reaches the child through fork's copy-on-write memory, not a pipe. `target`
    signals a domain failure by raising a `SandboxError`; any other exception becomes
    `model_invalid`, MemoryError `resource_exhausted`. Deaths by signal, exceeding the wall
    deadline and undecodable results map to the taxonomy in `sandbox.errors`.
    """
    limits = limits or Limits()
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise SandboxUnavailable(log_detail=f"fork failed: {exc}") from None
    if pid == 0:  # pragma: no cover - the child never returns to the caller.
        os.close(read_fd)
        _child_main(target, payload, limits, write_fd)
    os.close(write_fd)
    pidfd = os.pidfd_open(pid)
    deadline = time.monotonic() + limits.wall_s_max
    killed = False
    status: int | None = None
    try:
        data, finished = _read_all(read_fd, deadline, limits.result_bytes_max)
        if finished:
            status = _wait_exit(pid, pidfd, time.monotonic() + _GRACE_S)
        if status is None:
            killed = True
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    except BaseException:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    finally:
        os.close(read_fd)
        os.close(pidfd)
    if killed:
        raise DeadlineExceeded()
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        raise status_error(status)
    try:
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError("not an object")
    except ValueError:
        raise WorkerCrashed(log_detail="undecodable result from confined child") from None
    if message.get("ok") is True:
        return message.get("result")
    code, detail, log = message.get("code"), message.get("detail"), message.get("log")
    raise error_for_code(
        code if isinstance(code, str) else "",
        detail[:1000] if isinstance(detail, str) else None,
        log_detail=log[:4000] if isinstance(log, str) else None,
    )
