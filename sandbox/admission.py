"""Admission to the sandbox: how many calls run at once, how many wait, and for how long."""

from __future__ import annotations

import threading
import time

from sandbox.errors import SandboxBusy, SandboxUnavailable


class Admission:
    """At most ``busy_max`` calls run; up to ``queue_max`` more wait ``queue_timeout_s`` at most.

    It shares the pool's condition, so that a call leaving wakes both the waiting calls and
    the pool's waits for a worker.
    """

    def __init__(
        self,
        cond: threading.Condition,
        *,
        busy_max: int,
        queue_max: int,
        queue_timeout_s: float,
    ) -> None:
        self._cond = cond
        self.busy_max = busy_max
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        self.busy = 0
        self.waiting = 0
        self.closed = False

    def enter(self) -> None:
        """Take a running slot, waiting in the queue when all are taken; refuse when full."""
        with self._cond:
            if self.closed:
                raise SandboxUnavailable(log_detail="pool closed")
            if self.busy < self.busy_max:
                self.busy += 1
                return
            if self.waiting >= self.queue_max:
                raise SandboxBusy(retry_after_s=1.0)
            self.waiting += 1
            deadline = time.monotonic() + self.queue_timeout_s
            try:
                while self.busy >= self.busy_max and not self.closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise SandboxBusy(retry_after_s=1.0)
                    self._cond.wait(remaining)
                if self.closed:
                    raise SandboxUnavailable(log_detail="pool closed")
                self.busy += 1
            finally:
                self.waiting -= 1

    def leave(self) -> None:
        """Give the running slot back."""
        with self._cond:
            self.busy -= 1
            self._cond.notify_all()
