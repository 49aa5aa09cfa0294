"""A node-wide cap on evaluations in flight, shared by every server process of the node.

Each evaluation holds one of ``slots`` lock files (``flock``) in a directory of the node's
instance folder from the moment its body is read until its response has been sent, so the
memory the web processes spend on tensors is bounded by the cap whatever the number of
gunicorn processes and threads. A process that dies releases its locks with it. Beyond the
cap a call is refused at once (the caller gets 503 with ``Retry-After``), not queued: waiting
requests would hold their bodies in memory too.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import threading
from pathlib import Path


class NodeBusy(Exception):
    """Every slot of the node is taken."""


class Slot:
    """One held slot; :meth:`release` is idempotent, so it may be called from several paths."""

    def __init__(self, admission: NodeAdmission, index: int) -> None:
        self._admission = admission
        self._index: int | None = index

    def release(self) -> None:
        index, self._index = self._index, None
        if index is not None:
            self._admission._release(index)


class NodeAdmission:
    """At most ``slots`` concurrent holders across all processes that share ``directory``."""

    def __init__(self, directory: Path, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.directory = directory
        self.slots = slots
        self._lock = threading.Lock()
        self._pid = -1
        self._fds: list[int] = []
        self._held: set[int] = set()
        self._next = itertools.count()

    def _open(self) -> None:
        # Locks belong to open file descriptions: a forked process must open its own files,
        # or parent and child would share (and silently double-hold) every slot.
        for fd in self._fds:
            os.close(fd)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fds = [
            os.open(self.directory / f"slot-{i}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            for i in range(self.slots)
        ]
        self._held = set()
        self._pid = os.getpid()

    def acquire(self) -> Slot:
        """A free slot, or :class:`NodeBusy` at once."""
        with self._lock:
            if self._pid != os.getpid():
                self._open()
            start = next(self._next)
            for step in range(self.slots):
                index = (start + step) % self.slots
                if index in self._held:
                    continue
                try:
                    fcntl.flock(self._fds[index], fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                self._held.add(index)
                return Slot(self, index)
        raise NodeBusy()

    def _release(self, index: int) -> None:
        with self._lock:
            if index in self._held and self._pid == os.getpid():
                fcntl.flock(self._fds[index], fcntl.LOCK_UN)
                self._held.discard(index)

    @property
    def in_use(self) -> int:
        """Slots this process holds (for health and tests)."""
        with self._lock:
            return len(self._held)
