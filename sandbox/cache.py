"""The pool's warm workers: up to ``workers_per_model_max`` per model in use, least recently used
evicted first.

At most ``workers_max`` workers live at once, and idle ones are evicted while the peak resident
memory of all of them is above ``memory_budget_bytes``. A worker given back dead, or past half
its lifetime CPU limit (``worker_cpu_s_max``), is dropped and replaced on a later call.
"""

from __future__ import annotations

import threading
import time

from sandbox import protocol as p
from sandbox.channel import Worker
from sandbox.errors import SandboxUnavailable


class WorkerCache:
    """Warm workers by model key; safe to use from many threads.

    It shares the pool's condition, like admission, so that a worker given back wakes the calls
    waiting for one.
    """

    def __init__(
        self,
        cond: threading.Condition,
        *,
        workers_max: int,
        workers_per_model_max: int,
        memory_budget_bytes: int,
        worker_cpu_s_max: int,
    ) -> None:
        self._cond = cond
        self.workers_max = workers_max
        self.workers_per_model_max = workers_per_model_max
        self.memory_budget_bytes = memory_budget_bytes
        self.worker_cpu_s_max = worker_cpu_s_max
        self.closed = False
        self._workers: dict[int, Worker] = {}
        self._next_wid = 1

    def take(self, key: str) -> tuple[Worker, bool]:
        """A worker for ``key``, marked busy, and whether it is warm.

        A cold worker is only a place in the cache: the caller starts it, then sets ``ready``,
        or gives it up with :meth:`discard`. Waits while every place is taken by busy workers.
        """
        with self._cond:
            while True:
                if self.closed:
                    raise SandboxUnavailable(log_detail="pool closed")
                mine = [w for w in self._workers.values() if w.key == key and not w.dead]
                idle = [w for w in mine if not w.busy and w.ready]
                while idle:
                    worker = max(idle, key=lambda w: w.last_used)
                    idle.remove(worker)
                    if p.wait_readable(worker.response, 0.0):
                        # An idle worker has nothing to say: readable means it died (EOF).
                        self._workers.pop(worker.wid, None)
                        mine.remove(worker)
                        worker.close()
                        continue
                    worker.busy = True
                    return worker, True
                if len(mine) < self.workers_per_model_max and self._make_room():
                    worker = self.new_worker(key)
                    self._workers[worker.wid] = worker
                    return worker, False
                self._cond.wait(0.05)

    def new_worker(self, key: str) -> Worker:
        """A worker with a fresh id that the cache does not hold (a probe's)."""
        with self._cond:
            worker = Worker(self._next_wid, key)
            self._next_wid += 1
            return worker

    def give_back(self, worker: Worker) -> None:
        """The call is over: keep the worker warm, or drop it when it should not run again."""
        with self._cond:
            worker.busy = False
            worker.last_used = time.monotonic()
            if worker.dead or worker.cpu_s > self.worker_cpu_s_max / 2:
                # Dead, or close to its lifetime CPU limit: replace it on the next call.
                self._workers.pop(worker.wid, None)
                worker.close()
                if worker.zygote is not None:
                    worker.zygote.forget(worker.wid)
            self._cond.notify_all()

    def discard(self, worker: Worker) -> None:
        """Drop a worker that could not be started."""
        with self._cond:
            self._workers.pop(worker.wid, None)
            self._cond.notify_all()
        worker.close()

    def workers(self) -> list[Worker]:
        """The workers held now."""
        with self._cond:
            return list(self._workers.values())

    @property
    def memory_bytes(self) -> int:
        """The peak resident memory of the workers held, as each last reported it."""
        with self._cond:
            return sum(w.memory_bytes for w in self._workers.values())

    def close(self) -> None:
        """Kill every worker; later calls are refused."""
        with self._cond:
            self.closed = True
            workers = list(self._workers.values())
            self._workers.clear()
            self._cond.notify_all()
        for worker in workers:
            worker.close()

    def _make_room(self) -> bool:
        """Evict idle workers (least recently used first) until one more fits; under the lock."""
        live = [w for w in self._workers.values() if not w.dead]
        idle = sorted((w for w in live if not w.busy), key=lambda w: w.last_used)
        memory = sum(w.memory_bytes for w in live)
        while idle and (len(live) >= self.workers_max or memory > self.memory_budget_bytes):
            victim = idle.pop(0)
            live.remove(victim)
            memory -= victim.memory_bytes
            self._workers.pop(victim.wid, None)
            victim.close()
        return len(live) < self.workers_max
