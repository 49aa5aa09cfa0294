"""Periodic work a node does beside serving requests (settlement, checkpoints, reconciliation).

Each domain registers its tasks from its ``init_app`` with :func:`register`; the server command
starts one :class:`Runner` per node. A task must be safe to run on several nodes at once and to
be interrupted at any point: every task here is an idempotent unit of work over the shared
database, so a second node or a restart only repeats what is harmless to repeat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask

log = logging.getLogger(__name__)

EXTENSION_KEY = "periodic_tasks"
SINGLETONS_KEY = "node_singletons"


@dataclass(frozen=True)
class PeriodicTask:
    name: str
    interval_s: float
    run: Callable[[Flask], object]


def register(app: Flask, name: str, interval_s: float, run: Callable[[Flask], object]) -> None:
    """Run ``run(app)`` every ``interval_s`` seconds on each node; 0 switches the task off."""
    if interval_s < 0:
        raise ValueError(f"the interval of {name} must not be negative")
    tasks: dict[str, PeriodicTask] = app.extensions.setdefault(EXTENSION_KEY, {})
    if interval_s > 0:
        tasks[name] = PeriodicTask(name, interval_s, run)
    else:
        tasks.pop(name, None)


def registered(app: Flask) -> list[PeriodicTask]:
    """The tasks registered on ``app``, in registration order."""
    return list(app.extensions.get(EXTENSION_KEY, {}).values())


def register_singleton(app: Flask, name: str, start: Callable[[Flask], Callable[[], None]]) -> None:
    """Run ``start(app)`` in the one process of a node that runs its periodic tasks, beside
    them (the embedded job worker); ``start`` returns what stops it."""
    app.extensions.setdefault(SINGLETONS_KEY, {})[name] = start


def singletons(app: Flask) -> list[Callable[[Flask], Callable[[], None]]]:
    """The singletons registered on ``app``, in registration order."""
    return list(app.extensions.get(SINGLETONS_KEY, {}).values())


class Runner:
    """One daemon thread running every registered task (or those ``names`` lists) when it falls
    due, each in an app context.

    A failing task is logged and tried again at its next interval; it never stops the others.
    """

    def __init__(self, app: Flask, tick_s: float = 0.5, names: set[str] | None = None) -> None:
        self._app = app
        self._names = names
        self._tick_s = tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs: dict[str, int] = {}

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="periodic", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Let the running task finish (up to ``timeout_s``), then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        tasks = [t for t in registered(self._app) if self._names is None or t.name in self._names]
        due = {task.name: time.monotonic() + task.interval_s for task in tasks}
        while not self._stop.is_set():
            now = time.monotonic()
            for task in tasks:
                if self._stop.is_set():
                    return
                if now < due[task.name]:
                    continue
                self._run(task)
                due[task.name] = time.monotonic() + task.interval_s
            self._stop.wait(self._tick_s)

    def _run(self, task: PeriodicTask) -> None:
        try:
            with self._app.app_context():
                task.run(self._app)
        except Exception:
            log.exception(
                "periodic task %s failed; it runs again in %ss", task.name, task.interval_s
            )
        finally:
            self.runs[task.name] = self.runs.get(task.name, 0) + 1
