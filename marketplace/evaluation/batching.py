"""Group commit of usage records: concurrent calls share one database commit.

Every successful trial or licensed call must be durably recorded before its response is sent,
and a commit (an fsync on the database server) costs far more than the rows it writes. So
calls that finish at about the same time are counted in one transaction:

* A call that finishes hands its entitlement to :meth:`GroupCommitter.record` and waits.
* If no commit is in progress it becomes the **leader**: it waits for other calls still
  running on this process (never when it is alone), at most ``window_s`` and at most what a
  commit has recently cost, takes every record that has arrived, counts them all in one
  transaction (``record_successful_calls``) and commits. Waiting longer than a commit costs
  cannot pay: the call waited for could have had a commit of its own in that time (on SQLite a
  commit takes about 0.1 ms, against a 1 ms window).
* Calls that arrive while a commit is in progress wait for it to end; the first of them leads
  the next batch. Each caller gets its own result: its ``usage`` or the 403/402 that refused it.

Nothing is acknowledged before the commit that holds it has returned, so a crash (even
``kill -9``) loses only calls whose clients never got a 200. Trial counters and wallet
reservations stay exact because each record is still a conditional ``UPDATE`` in that commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session

from marketplace.db import Database
from marketplace.errors import DomainError
from marketplace.ledger import services as ledger
from marketplace.licensing import entitlements
from marketplace.licensing.entitlements import Entitlement
from marketplace.metering import services as metering


@dataclass
class _Pending:
    entitlement: Entitlement
    result: dict[str, Any] | DomainError | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    """What the committer has done (for health and tests)."""

    batches: int = 0
    records: int = 0
    largest: int = 0
    # Batches that every licence's reservation covered, counted on the fast path.
    reserved_batches: int = 0


class GroupCommitter:
    """Collects the records of calls finishing together and commits them as one transaction."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        window_s: float,
        reserve_calls: int,
        writer_lock: Callable[[], AbstractContextManager[object]] | None = None,
        count_reserved: Callable[[list[Entitlement]], Sequence[dict[str, Any]] | None]
        | None = None,
    ) -> None:
        if not 0 <= window_s <= 0.002:
            raise ValueError("the group-commit window must be between 0 and 2 ms")
        self._session_factory = session_factory
        self._writer_lock = writer_lock or contextlib.nullcontext
        # The fast path for batches that every reservation covers (None: always the full one).
        self._count_reserved = count_reserved
        self.window_s = window_s
        # What a commit has recently cost (moving average); a leader waits no longer.
        self._commit_s = window_s
        self.reserve_calls = reserve_calls
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._committing = False
        self._running = 0
        self.stats = BatchStats()

    @classmethod
    def for_database(
        cls,
        database: Database,
        *,
        window_s: float,
        reserve_calls: int,
        writer_lock: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> GroupCommitter:
        """A committer whose batches of covered metered calls take the driver fast path."""
        counter = metering.ReservedCallCounter(database.engine.dialect)
        return cls(
            database.session,
            window_s=window_s,
            reserve_calls=reserve_calls,
            writer_lock=writer_lock,
            count_reserved=lambda ents: entitlements.record_reserved_calls(
                database.driver_transaction, counter, ents
            ),
        )

    @property
    def wait_s(self) -> float:
        """How long a leader now waits for calls still running: the window, or what a commit
        has recently cost when that is less."""
        return min(self.window_s, self._commit_s)

    def running(self) -> _Running:
        """Mark a call as running, so a leader may wait a moment for its record."""
        return _Running(self)

    def record(self, entitlement: Entitlement, running: _Running | None = None) -> dict[str, Any]:
        """Durably count one successful call; its ``usage``, or the 403/402 that refuses it.

        ``running`` is the call's mark from :meth:`running`: it is cleared in the same step
        that queues the record, so a waiting leader never misses it.
        """
        item = _Pending(entitlement)
        with self._cond:
            self._pending.append(item)
            if running is not None:
                running.finish_locked()
            self._cond.notify_all()
            while not item.done:
                if self._committing:
                    self._cond.wait()
                    continue
                self._lead()
        if item.error is not None:
            raise item.error
        if isinstance(item.result, DomainError):
            raise item.result
        assert item.result is not None
        return item.result

    def _lead(self) -> None:
        """Commit the pending records as one batch; called and returns with the lock held."""
        self._committing = True
        try:
            deadline = time.monotonic() + self.wait_s
            while self._running > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._cond.release()
            try:
                # Waiting for the node's writer lock (SQLite) lets more records join the batch.
                with self._writer_lock():
                    with self._cond:
                        batch, self._pending = self._pending, []
                    started = time.monotonic()
                    self._commit(batch)
                    took = time.monotonic() - started
            finally:
                self._cond.acquire()
            self._commit_s = 0.8 * self._commit_s + 0.2 * took
            self.stats.batches += 1
            self.stats.records += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
        finally:
            self._committing = False
            self._cond.notify_all()

    def _commit(self, batch: list[_Pending]) -> None:
        ents = [item.entitlement for item in batch]
        try:
            results = self._count(ents)
        except BaseException as exc:
            # The whole transaction failed: no call of the batch was counted, none may succeed.
            for item in batch:
                item.error, item.done = exc, True
            return
        for item, result in zip(batch, results, strict=True):
            item.result, item.done = result, True

    def _count(self, ents: list[Entitlement]) -> Sequence[dict[str, Any] | DomainError]:
        if self._count_reserved is not None:
            counted = self._count_reserved(ents)
            if counted is not None:
                self.stats.reserved_batches += 1
                return counted
        session = self._session_factory()
        try:
            return ledger.run_in_transaction(
                session,
                lambda s: entitlements.record_successful_calls(
                    s, ents, reserve_calls=self.reserve_calls
                ),
            )
        finally:
            session.close()


class _Running:
    def __init__(self, committer: GroupCommitter) -> None:
        self._committer = committer
        self._active = False

    def __enter__(self) -> _Running:
        with self._committer._cond:
            self._committer._running += 1
        self._active = True
        return self

    def finish(self) -> None:
        """The call's run is over (whether or not it will be recorded)."""
        with self._committer._cond:
            self.finish_locked()
            self._committer._cond.notify_all()

    def finish_locked(self) -> None:
        """As :meth:`finish`, with the committer's lock already held."""
        if self._active:
            self._active = False
            self._committer._running -= 1

    def __exit__(self, *_: object) -> None:
        self.finish()


class NodeWriterLock:
    """One writer at a time across the node's processes, for SQLite.

    SQLite lets one transaction write at a time and makes the others poll with growing sleeps
    (its busy handler), which costs milliseconds per commit when server processes contend. A
    blocking ``flock`` hands the turn over at once instead. PostgreSQL needs none of this.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._made = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self._made:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._made = True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
