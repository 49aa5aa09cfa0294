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
    """One held slot: an open, locked file; :meth:`release` is idempotent."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # closing the only descriptor of the lock releases it


class NodeAdmission:
    """At most ``slots`` concurrent holders across all processes that share ``directory``.

    A slot's file is opened when it is tried and closed when it is released, so no descriptor
    outlives its call: nothing is inherited across a fork, and an idle process holds none.
    """

    def __init__(self, directory: Path, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.directory = directory
        self.slots = slots
        self._paths = [os.fspath(directory / f"slot-{i}") for i in range(slots)]
        self._next = itertools.count()
        self._made = False

    def acquire(self) -> Slot:
        """A free slot, or :class:`NodeBusy` at once."""
        if not self._made:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._made = True
        start = next(self._next)
        for step in range(self.slots):
            path = self._paths[(start + step) % self.slots]
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return Slot(fd)
        raise NodeBusy()
