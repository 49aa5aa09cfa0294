"""Running one chunk in a worker: claim it, read its rows, run them in the sandbox, store the
outputs, record the outcome.

The rows are read in place from the dataset's file (the node's blob cache holds it by content
hash, verified; a filesystem store is read directly), a batch at a time. A batch that fails is
run again sample by sample, so a sample that hits its deadline, crashes the worker or has
inputs the model refuses fails alone. A model that cannot be loaded fails every sample at once.
A sandbox that is unavailable, busy or has the model in quarantine is no fault of the samples:
the chunk goes back to the queue untouched (and after ``CHUNK_ATTEMPTS_MAX`` claims its samples
fail, so that a job always ends).

A chunk keeps the outputs of its samples in memory until they are stored: each sample's are
bounded (``job_sample_outputs_bytes_max``; past it the sample fails alone), so a chunk holds at
most its samples times that. They must also have one shape for the whole chunk, the first
sample's, or they could not be one array; a sample whose outputs differ fails alone. Neither
failure costs anything: the samples gave nothing the buyer can use.

While the chunk runs, a thread renews its lease, so the sweeper publishes it again only when
this worker has stopped (killed, or cut off from the database). Its outcome (outputs to the
blob store, counts and charges to the database) is stored by the process's recorder thread
while the worker thread goes on to the next chunk: that work no longer adds to every chunk's
time. Nothing is lost if the process dies before it is stored: the chunk is still ``running``,
its lease runs out and the sweeper publishes it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from marketplace.db import Database
from marketplace.evaluation.services import LazyPool, model_loader
from marketplace.evaluation.tensors import read_rows
from marketplace.jobs import chunks as jobs
from marketplace.jobs import metrics
from marketplace.jobs.datasets import members_of
from marketplace.jobs.queue import worker_name
from marketplace.jobs.results import OK_ARRAY, open_npy_member
from marketplace.jobs.schemas import EXPECTED_PREFIX
from model_registry.blobcache import BlobCache
from model_registry.blobstore import BlobStore
from model_registry.errors import BlobStoreError
from model_registry.inspection import RESERVED_NAME_PREFIX
from sandbox.errors import (
    CallerThrottled,
    DeadlineExceeded,
    ModelInvalid,
    ModelQuarantined,
    SandboxBusy,
    SandboxError,
    SandboxUnavailable,
)

log = logging.getLogger(__name__)

# Outcomes of a task, as the worker's log shows them.
DONE = "done"
SKIPPED = "skipped"
REQUEUED = "requeued"
RECORDING = "recording"

# Outcomes waiting for the recorder thread at most; a worker thread with another one to hand
# over waits for room. Each holds a chunk's outputs in memory (at most its samples times
# ``job_sample_outputs_bytes_max``), so a worker process holds at most its threads plus this
# many chunks' outputs.
RECORDS_BEHIND_MAX = 2

# Failures of the sandbox, not of the samples: the chunk is tried again later.
_NOT_THE_SAMPLES = (SandboxUnavailable, SandboxBusy, ModelQuarantined, CallerThrottled)
RETRY_IN_S = 5.0
ATTEMPTS_EXHAUSTED = "attempts_exhausted"
# Failures of samples that ran, for what they gave: nothing is kept of them, nor charged.
OUTPUTS_TOO_LARGE = "sample_outputs_too_large"
OUTPUT_SHAPE_VARIES = "output_shape_varies"
OUTPUT_NOT_PER_SAMPLE = "output_not_per_sample"
# A version published before output names under the reserved prefix were refused at upload
# (inspection's code): its outputs would replace the results' own arrays, so none of it runs.
OUTPUT_NAME_RESERVED = "tensor_name_reserved"


class _TryLater(Exception):
    """The sandbox or the store cannot run the chunk now."""


# Each output's shape without its first (sample) axis, and its dtype.
_Layout = dict[str, tuple[tuple[int, ...], np.dtype[Any]]]


@dataclass
class _Outcome:
    """Samples of one chunk as they run: outputs of those that succeeded, failures by code.

    The outputs kept are at most ``size * sample_outputs_bytes_max`` bytes: the samples of a
    batch that gives more per sample fail, as do those of a batch whose outputs are shaped
    unlike the first batch kept."""

    size: int
    sample_outputs_bytes_max: int
    ok: np.ndarray = field(init=False)
    charged: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    # Each run batch that succeeded: its first sample's place in the chunk, and its outputs.
    parts: list[tuple[int, dict[str, np.ndarray]]] = field(default_factory=list)
    layout: _Layout | None = None

    def __post_init__(self) -> None:
        self.ok = np.zeros(self.size, dtype=np.bool_)

    def succeeded(self, at: int, outputs: dict[str, np.ndarray], run_ms: float) -> None:
        """Keep the outputs of ``count`` samples from ``at`` (one row each), unless they are
        too large or shaped unlike the chunk's others: then those samples fail."""
        count = next(iter(outputs.values())).shape[0] if outputs else 0
        self.latencies_ms.append(round(run_ms, 3))
        if not count:
            return
        # Every output holds one equal row per sample, so each sample gives the same bytes.
        if sum(array.nbytes for array in outputs.values()) > count * self.sample_outputs_bytes_max:
            self.failed(at, count, OUTPUTS_TOO_LARGE, charged=False)
            return
        layout = {name: (array.shape[1:], array.dtype) for name, array in outputs.items()}
        if self.layout is None:
            self.layout = layout
        elif layout != self.layout:
            self.failed(at, count, OUTPUT_SHAPE_VARIES, charged=False)
            return
        self.ok[at : at + count] = True
        self.charged += count
        self.parts.append((at, outputs))

    def failed(self, at: int, count: int, code: str, *, charged: bool) -> None:
        self.failures[code] = self.failures.get(code, 0) + count
        if charged:
            self.charged += count

    def score(self, metric: str, name: str, expected: np.ndarray, k: int) -> tuple[float, int]:
        """``(sum, count)`` of ``metric`` over output ``name`` of the samples that ran, a
        batch at a time (the metric is a sum over samples, so nothing is concatenated)."""
        if self.layout is None or name not in self.layout:
            raise metrics.MetricInputError("the model gave no such output")
        total, count = 0.0, 0
        for at, outputs in self.parts:
            scored = outputs[name]
            part_sum, part_count = metrics.partial_score(
                metric, scored, expected[at : at + len(scored)], k=k
            )
            total, count = total + part_sum, count + part_count
        return total, count

    def write_npz(self, out: IO[bytes]) -> None:
        """The outputs kept, one array per output with a row per sample that ran, and
        ``jishi.ok``, as an npz archive written straight from the arrays (no copy of them)."""
        done = int(self.ok.sum())
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, (row_shape, dtype) in (self.layout or {}).items():
                with open_npy_member(archive, name, (done, *row_shape), dtype) as stream:
                    for _at, outputs in self.parts:
                        stream.write(np.ascontiguousarray(outputs[name]).data)
            with open_npy_member(archive, OK_ARRAY, (self.size,), self.ok.dtype) as stream:
                stream.write(self.ok.data)


def _batched(outputs: dict[str, np.ndarray], count: int) -> bool:
    """Every output carries one row per sample of the batch (else it cannot be split)."""
    return all(a.ndim >= 1 and a.shape[0] == count for a in outputs.values())


@dataclass
class _ChunkRun:
    """One chunk's calls into the sandbox, and what they gave."""

    pool: Any
    loader: Any
    claimed: jobs.ClaimedChunk
    outcome: _Outcome
    sample_timeout_s: float

    def _evaluate(self, inputs: dict[str, np.ndarray], deadline_s: float) -> Any:
        return self.pool.evaluate(
            self.claimed.version.sha256,
            self.loader,
            inputs,
            version=f"version:{self.claimed.version.id}",
            caller=f"org:{self.claimed.organization_id}",
            deadline_s=deadline_s,
        )

    def batch(self, batch: dict[str, np.ndarray], at: int, count: int) -> bool:
        """Run one batch (sample by sample if it fails); False when nothing more can run."""
        outcome = self.outcome
        try:
            result = self._evaluate(batch, self.sample_timeout_s * count)
        except _NOT_THE_SAMPLES as exc:
            raise _TryLater(exc.code) from None
        except ModelInvalid as exc:
            outcome.failed(at, outcome.size - at, exc.code, charged=False)
            return False
        except SandboxError:
            self.one_by_one(batch, at, count)
            return True
        if _batched(result.outputs, count):
            outcome.succeeded(at, result.outputs, result.run_ms)
        else:
            self.one_by_one(batch, at, count)
        return True

    def one_by_one(self, batch: dict[str, np.ndarray], at: int, count: int) -> None:
        """Run a failed batch one sample at a time, so that only the bad samples fail."""
        outcome = self.outcome
        for i in range(count):
            sample = {name: array[i : i + 1] for name, array in batch.items()}
            try:
                result = self._evaluate(sample, self.sample_timeout_s)
            except _NOT_THE_SAMPLES as exc:
                raise _TryLater(exc.code) from None
            except DeadlineExceeded as exc:
                # It used the compute a successful sample would have, as on the HTTP path.
                outcome.failed(at + i, 1, exc.code, charged=exc.ran_to_deadline)
                continue
            except SandboxError as exc:
                outcome.failed(at + i, 1, exc.code, charged=False)
                continue
            if _batched(result.outputs, 1):
                outcome.succeeded(at + i, result.outputs, result.run_ms)
            else:
                outcome.failed(at + i, 1, OUTPUT_NOT_PER_SAMPLE, charged=False)


class ChunkRunner:
    """Runs chunks for one worker process: its sandbox pool, its database, its blob cache."""

    def __init__(
        self,
        *,
        database: Database,
        blob_store: BlobStore,
        blob_cache: BlobCache | None,
        pool: LazyPool,
        worker_kind: str,
        lease_s: float,
        sample_timeout_s: float,
        sample_outputs_bytes_max: int,
    ) -> None:
        self.database = database
        self.blob_store = blob_store
        self.blob_cache = blob_cache
        self.pool = pool
        self.worker_kind = worker_kind
        self.lease_s = lease_s
        self.sample_timeout_s = sample_timeout_s
        self.sample_outputs_bytes_max = sample_outputs_bytes_max
        self._behind = threading.BoundedSemaphore(RECORDS_BEHIND_MAX)
        self._recorder_lock = threading.Lock()
        self._recorder_of: tuple[int, ThreadPoolExecutor] | None = None

    def _recorder(self) -> ThreadPoolExecutor:
        """This process's recorder thread (started on first use: a server process forks after
        the app is made, and threads do not survive a fork)."""
        with self._recorder_lock:
            if self._recorder_of is None or self._recorder_of[0] != os.getpid():
                executor = ThreadPoolExecutor(1, thread_name_prefix="chunk-recorder")
                self._recorder_of = (os.getpid(), executor)
            return self._recorder_of[1]

    def drain(self) -> None:
        """Store every outcome still waiting (before the process stops)."""
        with self._recorder_lock:
            found, self._recorder_of = self._recorder_of, None
        if found is not None and found[0] == os.getpid():
            found[1].shutdown(wait=True)

    @property
    def worker(self) -> str:
        """This process's name in the chunks it runs (a server process forks after the app)."""
        return worker_name(self.worker_kind)

    def run(self, chunk_id: int, redelivered: bool = False) -> str:
        """Run chunk ``chunk_id`` if it is still to be run; what became of it."""
        session = self.database.session()
        try:
            claimed = jobs.claim_chunk(
                session,
                chunk_id=chunk_id,
                worker=self.worker,
                lease_s=self.lease_s,
                redelivered=redelivered,
            )
        finally:
            session.close()
        if claimed is None:
            return SKIPPED
        if claimed.attempts > jobs.CHUNK_ATTEMPTS_MAX:
            log.warning("chunk %d failed %d times; its samples fail", chunk_id, claimed.attempts)
            outcome = self._outcome(claimed)
            outcome.failed(0, outcome.size, ATTEMPTS_EXHAUSTED, charged=False)
            return self._record(claimed, outcome, None)
        with self._lease(claimed):
            try:
                outcome, expected = self._execute(claimed)
            except _TryLater as exc:
                log.info("chunk %d goes back to the queue: %s", chunk_id, exc)
                return self._give_back(chunk_id)
        return self._record_behind(claimed, outcome, expected)

    def _record_behind(
        self, claimed: jobs.ClaimedChunk, outcome: _Outcome, expected: np.ndarray | None
    ) -> str:
        """Hand the outcome to the recorder thread; record it here if the process is stopping."""
        self._behind.acquire()
        try:
            future = self._recorder().submit(self._record, claimed, outcome, expected)
        except RuntimeError:  # the recorder was shut down: the process is stopping
            self._behind.release()
            return self._record(claimed, outcome, expected)
        future.add_done_callback(lambda done: self._recorded(claimed.chunk_id, done))
        return RECORDING

    def _recorded(self, chunk_id: int, done: Future[str]) -> None:
        self._behind.release()
        error = done.exception()
        if error is not None:
            # The chunk stays `running` until its lease runs out; then it runs again.
            log.error("chunk %d ran but was not recorded: %r", chunk_id, error)

    def _give_back(self, chunk_id: int) -> str:
        session = self.database.session()
        try:
            jobs.give_back(session, chunk_id=chunk_id, worker=self.worker, retry_in_s=RETRY_IN_S)
        finally:
            session.close()
        return REQUEUED

    @contextlib.contextmanager
    def _lease(self, claimed: jobs.ClaimedChunk) -> Iterator[None]:
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_s / 3):
                session = self.database.session()
                try:
                    jobs.renew_lease(
                        session,
                        chunk_id=claimed.chunk_id,
                        worker=self.worker,
                        lease_s=self.lease_s,
                    )
                except Exception:
                    log.exception("could not renew the lease of chunk %d", claimed.chunk_id)
                finally:
                    session.close()

        thread = threading.Thread(target=renew, name=f"lease-{claimed.chunk_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _open_dataset(self, claimed: jobs.ClaimedChunk) -> IO[bytes]:
        dataset = claimed.dataset
        try:
            if self.blob_cache is None:
                return self.blob_store.open(dataset.blob_key)
            return self.blob_cache.open(
                dataset.sha256,
                dataset.size_bytes,
                lambda: self.blob_store.open(dataset.blob_key),
            )
        except BlobStoreError as exc:
            raise _TryLater(f"dataset {dataset.id}: {exc.code}") from None
        except OSError as exc:
            # The cache's disk (full, read-only): the chunk goes back for a worker that can.
            raise _TryLater(f"dataset {dataset.id}: blob cache unusable: {exc}") from None

    def _outcome(self, claimed: jobs.ClaimedChunk) -> _Outcome:
        return _Outcome(claimed.stop - claimed.start, self.sample_outputs_bytes_max)

    def _execute(self, claimed: jobs.ClaimedChunk) -> tuple[_Outcome, np.ndarray | None]:
        members = members_of(claimed.dataset)
        names = [spec["name"] for spec in claimed.version.inputs]
        outcome = self._outcome(claimed)
        refused = claimed.refused
        if any(spec["name"].startswith(RESERVED_NAME_PREFIX) for spec in claimed.version.outputs):
            refused = OUTPUT_NAME_RESERVED
        if refused is not None:
            # Revoked or suspended since the job was accepted, or its outputs cannot be kept:
            # nothing more runs, nor costs.
            outcome.failed(0, outcome.size, refused, charged=False)
            return outcome, None
        with self._open_dataset(claimed) as file:
            expected = None
            if claimed.metric is not None and claimed.output_name is not None:
                expected = read_rows(
                    file,
                    members[EXPECTED_PREFIX + claimed.output_name],
                    claimed.start,
                    claimed.stop,
                )
            run = _ChunkRun(
                pool=self.pool.get(),
                loader=model_loader(self.blob_store, self.blob_cache, claimed.version),
                claimed=claimed,
                outcome=outcome,
                sample_timeout_s=self.sample_timeout_s,
            )
            step = claimed.batch_size
            for at in range(0, outcome.size, step):
                count = min(step, outcome.size - at)
                # Read a batch at a time: memory holds one batch's inputs, whatever the chunk.
                first = claimed.start + at
                batch = {
                    name: read_rows(file, members[name], first, first + count) for name in names
                }
                if not run.batch(batch, at, count):
                    break
        return outcome, expected

    def _record(
        self, claimed: jobs.ClaimedChunk, outcome: _Outcome, expected: np.ndarray | None
    ) -> str:
        done = int(outcome.ok.sum())
        score_sum, score_count = None, 0
        if expected is not None and claimed.metric is not None and done:
            try:
                score_sum, score_count = outcome.score(
                    claimed.metric, claimed.output_name or "", expected, claimed.top_k
                )
            except metrics.MetricInputError as exc:
                log.info("chunk %d cannot be scored: %s", claimed.chunk_id, exc)
                outcome.failures["not_scored"] = done
        output_key = None
        if done:
            output_key = f"jobs/{claimed.job_id}/{claimed.job_version_id}/{claimed.chunk_index}.npz"
            # Through a file: the archive is never a second copy of the outputs in memory.
            with tempfile.TemporaryFile() as body:
                outcome.write_npz(body)
                size = body.tell()
                body.seek(0)
                try:
                    self.blob_store.put_stream(output_key, body, size_max=size, size=size)
                except BlobStoreError as exc:
                    log.warning("chunk %d outputs not stored: %s", claimed.chunk_id, exc.code)
                    return self._give_back(claimed.chunk_id)
        result = jobs.ChunkResult(
            samples_done=done,
            samples_failed=outcome.size - done,
            samples_charged=outcome.charged,
            failures=outcome.failures,
            latencies_ms=outcome.latencies_ms,
            score_sum=score_sum,
            score_count=score_count,
            output_key=output_key,
        )
        session = self.database.session()
        try:
            recorded = jobs.complete_chunk(session, claimed=claimed, result=result)
        finally:
            session.close()
        return DONE if recorded else SKIPPED
