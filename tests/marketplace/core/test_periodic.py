"""The periodic runner: tasks run when due, in an app context, and a failure stops nothing."""

from __future__ import annotations

import threading
import time

import pytest
from flask import Flask, current_app

from marketplace import periodic


def _wait_for(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_tasks_run_repeatedly_in_an_app_context_and_failures_do_not_stop_others() -> None:
    app = Flask(__name__)
    seen: list[str] = []
    lock = threading.Lock()

    def ok(running_app: Flask) -> None:
        assert current_app._get_current_object() is running_app  # type: ignore[attr-defined]
        with lock:
            seen.append("ok")

    def broken(_app: Flask) -> None:
        raise RuntimeError("boom")

    periodic.register(app, "broken", 0.02, broken)
    periodic.register(app, "ok", 0.02, ok)
    runner = periodic.Runner(app, tick_s=0.01)
    runner.start()
    try:
        _wait_for(lambda: seen.count("ok") >= 3 and runner.runs.get("broken", 0) >= 3)
    finally:
        runner.stop()
    count = len(seen)
    time.sleep(0.1)
    assert len(seen) == count, "a stopped runner runs nothing more"


def test_zero_interval_switches_a_task_off_and_negative_is_refused() -> None:
    app = Flask(__name__)
    periodic.register(app, "settle", 5, lambda _app: None)
    periodic.register(app, "settle", 0, lambda _app: None)
    assert periodic.registered(app) == []
    with pytest.raises(ValueError):
        periodic.register(app, "settle", -1, lambda _app: None)


def test_the_holder_of_the_node_lock_runs_the_singletons_and_stops_them(tmp_path) -> None:
    from marketplace.serving import PeriodicHolder

    app = Flask(__name__)
    events: list[str] = []

    def start(running_app: Flask):  # type: ignore[no-untyped-def]
        events.append("started")
        return lambda: events.append("stopped")

    periodic.register_singleton(app, "worker", start)
    first = PeriodicHolder(app, tmp_path / "periodic.lock", takeover_s=0.05)
    second = PeriodicHolder(app, tmp_path / "periodic.lock", takeover_s=0.05)
    first.start()
    _wait_for(lambda: events == ["started"])
    second.start()
    time.sleep(0.2)
    assert events == ["started"], "only the lock's holder runs a singleton"
    first.stop()
    _wait_for(lambda: events == ["started", "stopped", "started"])
    second.stop()
    assert events[-1] == "stopped"
