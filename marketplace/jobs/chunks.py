"""A chunk's life on the worker's side: claimed, its lease renewed, given back, completed;
and the sweeper's look for chunks whose lease ran out.

:func:`complete_chunk` is the one transaction that makes usage exactly once per sample: the
chunk's row turns ``done`` by a conditional ``UPDATE`` that only one worker can win, and in the
same transaction its samples are counted and charged against what the job took up front, the
hold for the rest is renewed, and when it was the version's last chunk what was taken and not
used is given back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from marketplace.catalog.models import LISTING_ACTIVE, Listing, ModelVersion
from marketplace.db import begin_write, utcnow
from marketplace.jobs.models import (
    CHUNK_DONE,
    CHUNK_OPEN,
    CHUNK_QUEUED,
    CHUNK_RUNNING,
    JOB_ACTIVE,
    JOB_FINISHED,
    JOB_QUEUED,
    JOB_RUNNING,
    OWNER,
    Dataset,
    EvaluationJob,
    JobChunk,
    JobVersion,
)
from marketplace.ledger import services as ledger
from marketplace.licensing import entitlements
from marketplace.licensing.models import PER_INFERENCE
from marketplace.metering.services import HeldCalls, hold_bound
from marketplace.rows import attributes

_chunks_t = JobChunk.__table__  # type: ignore[attr-defined]
_jobs_t = EvaluationJob.__table__  # type: ignore[attr-defined]

# A chunk claimed this many times without finishing (its worker died each time, or the sandbox
# stayed unavailable) fails its samples instead of being tried for ever.
CHUNK_ATTEMPTS_MAX = 5


def release_version(s: Session, jv: JobVersion, now: dt.datetime) -> None:
    """Give back what the version took up front and did not use (once)."""
    if jv.released_at is not None:
        return
    if jv.kind != OWNER and jv.license_id is not None:
        entitlements.release_batch(
            s,
            kind=jv.kind,
            license_id=jv.license_id,
            hold_id=jv.hold_id,
            unused_calls=max(0, jv.calls_reserved - jv.calls_charged),
        )
    jv.hold_id, jv.hold_minor, jv.released_at = None, 0, now
    s.add(jv)


def open_chunks(s: Session, *, job_id: int | None = None, job_version_id: int | None = None) -> int:
    query = (
        sa.select(sa.func.count()).select_from(_chunks_t).where(_chunks_t.c.state.in_(CHUNK_OPEN))
    )
    if job_id is not None:
        query = query.where(_chunks_t.c.job_id == job_id)
    if job_version_id is not None:
        query = query.where(_chunks_t.c.job_version_id == job_version_id)
    return int(s.execute(query).scalar_one())


@dataclass(frozen=True)
class ClaimedChunk:
    """A chunk a worker may run now, with everything the run needs."""

    chunk_id: int
    job_id: int
    job_version_id: int
    chunk_index: int
    start: int
    stop: int
    attempts: int
    organization_id: int
    batch_size: int
    metric: str | None
    output_name: str | None
    top_k: int
    version: ModelVersion
    dataset: Dataset
    # Why nothing more may run: the version was revoked or its listing suspended meanwhile.
    refused: str | None


def claim_chunk(
    session: Session, *, chunk_id: int, worker: str, lease_s: float, redelivered: bool
) -> ClaimedChunk | None:
    """Take a chunk to run: one that is queued, or running under a lease that ran out (or that
    the broker says it delivered before, to a consumer that is gone). None when it is done,
    cancelled or another worker holds it."""
    now = utcnow()
    taken = _chunks_t.c.state == CHUNK_QUEUED
    stale = sa.and_(
        _chunks_t.c.state == CHUNK_RUNNING,
        sa.or_(_chunks_t.c.lease_until < now, sa.true() if redelivered else sa.false()),
    )

    def work(s: Session) -> ClaimedChunk | None:
        row = s.execute(
            sa.update(_chunks_t)
            .where(_chunks_t.c.id == chunk_id, sa.or_(taken, stale))
            .values(
                state=CHUNK_RUNNING,
                lease_until=now + dt.timedelta(seconds=lease_s),
                attempts=_chunks_t.c.attempts + 1,
                worker=worker[:200],
            )
            .returning(_chunks_t.c.job_id)
        ).first()
        if row is None:
            return None
        chunk = s.get(JobChunk, chunk_id, populate_existing=True)
        job = s.get(EvaluationJob, row[0])
        assert chunk is not None and job is not None
        if job.state == JOB_QUEUED:
            s.execute(
                sa.update(_jobs_t)
                .where(_jobs_t.c.id == job.id, _jobs_t.c.state == JOB_QUEUED)
                .values(state=JOB_RUNNING)
            )
        jv = s.get(JobVersion, chunk.job_version_id)
        assert jv is not None
        version = s.get(ModelVersion, jv.version_id)
        listing = s.get(Listing, jv.listing_id)
        dataset = s.get(Dataset, job.dataset_id)
        assert version is not None and listing is not None and dataset is not None
        refused = None
        if version.revoked_at is not None:
            refused = "version_revoked"
        elif listing.status != LISTING_ACTIVE:
            refused = "listing_suspended"
        return ClaimedChunk(
            chunk_id=chunk_id,
            **attributes(chunk, "job_id job_version_id chunk_index start stop attempts"),
            **attributes(job, "organization_id batch_size metric output_name top_k"),
            version=version,
            dataset=dataset,
            refused=refused,
        )

    return ledger.run_in_transaction(session, work)


def renew_lease(session: Session, *, chunk_id: int, worker: str, lease_s: float) -> bool:
    """Extend a running chunk's lease; False when it is no longer this worker's."""
    try:
        begin_write(session)
        result = session.execute(
            sa.update(_chunks_t)
            .where(
                _chunks_t.c.id == chunk_id,
                _chunks_t.c.state == CHUNK_RUNNING,
                _chunks_t.c.worker == worker[:200],
            )
            .values(lease_until=utcnow() + dt.timedelta(seconds=lease_s))
        )
        session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]
    except Exception:
        session.rollback()
        raise


def give_back(session: Session, *, chunk_id: int, worker: str, retry_in_s: float) -> None:
    """Put a chunk this worker could not run now (the sandbox is unavailable) back in the
    queue; the sweeper publishes it again after ``retry_in_s``."""

    def work(s: Session) -> None:
        s.execute(
            sa.update(_chunks_t)
            .where(
                _chunks_t.c.id == chunk_id,
                _chunks_t.c.state == CHUNK_RUNNING,
                _chunks_t.c.worker == worker[:200],
            )
            .values(state=CHUNK_QUEUED, lease_until=utcnow() + dt.timedelta(seconds=retry_in_s))
        )

    ledger.run_in_transaction(session, work)


@dataclass
class ChunkResult:
    """What running a chunk gave, for :func:`complete_chunk`."""

    samples_done: int
    samples_failed: int
    samples_charged: int
    failures: dict[str, int]
    latencies_ms: list[float]
    score_sum: float | None
    score_count: int
    output_key: str | None


def complete_chunk(session: Session, *, claimed: ClaimedChunk, result: ChunkResult) -> bool:
    """Record a chunk's outcome and its usage in one transaction; False when another worker
    recorded it first or the job was cancelled (then nothing is counted)."""

    def work(s: Session) -> bool:
        now = utcnow()
        updated = s.execute(
            sa.update(_chunks_t)
            .where(_chunks_t.c.id == claimed.chunk_id, _chunks_t.c.state.in_(CHUNK_OPEN))
            # ChunkResult's fields are the chunk's columns of the same names.
            .values(state=CHUNK_DONE, finished_at=now, **dataclasses.asdict(result))
        ).rowcount  # type: ignore[attr-defined]
        if not updated:
            return False
        jv = s.exec(
            select(JobVersion)
            .where(JobVersion.id == claimed.job_version_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        open_sizes = [
            int(stop - start)
            for start, stop in s.execute(
                sa.select(_chunks_t.c.start, _chunks_t.c.stop).where(
                    _chunks_t.c.job_version_id == jv.id, _chunks_t.c.state.in_(CHUNK_OPEN)
                )
            ).all()
        ]
        if jv.kind != OWNER and jv.license_id is not None:
            rehold = (
                hold_bound(jv.royalty_per_1k_minor, open_sizes) if jv.kind == PER_INFERENCE else 0
            )
            part = HeldCalls(
                license_id=jv.license_id,
                version_id=jv.version_id,
                calls=result.samples_charged,
                hold_id=jv.hold_id,
                rehold_minor=rehold,
                rehold_key=f"job:{jv.job_id}:{jv.position}:hold-after-{claimed.chunk_index}",
            )
            charged, hold_id = entitlements.count_batch_calls(s, jv.kind, part)
            jv.hold_id, jv.hold_minor = hold_id, rehold if hold_id is not None else 0
            jv.calls_charged += result.samples_charged
            jv.charged_minor += charged
            s.execute(
                sa.update(_chunks_t)
                .where(_chunks_t.c.id == claimed.chunk_id)
                .values(charged_minor=charged)
            )
        s.add(jv)
        if not open_sizes:
            release_version(s, jv, now)
        if open_chunks(s, job_id=claimed.job_id) == 0:
            s.execute(
                sa.update(_jobs_t)
                .where(_jobs_t.c.id == claimed.job_id, _jobs_t.c.state.in_(JOB_ACTIVE))
                .values(state=JOB_FINISHED, finished_at=now)
            )
        return True

    return ledger.run_in_transaction(session, work)


# --- the sweeper's side -------------------------------------------------------------------


def expired_chunks(session: Session, *, requeue_s: float, batch_max: int) -> list[int]:
    """Open chunks whose lease ran out, put back in the queue with a new lease (each by one
    node only); their ids, for publishing again."""
    now = utcnow()
    candidates = session.execute(
        sa.select(_chunks_t.c.id, _chunks_t.c.lease_until)
        .where(_chunks_t.c.state.in_(CHUNK_OPEN), _chunks_t.c.lease_until < now)
        .order_by(_chunks_t.c.lease_until)
        .limit(batch_max)
    ).all()
    session.rollback()
    taken: list[int] = []
    for chunk_id, lease_until in candidates:

        def work(s: Session, chunk_id: int = chunk_id, lease_until: Any = lease_until) -> bool:
            result = s.execute(
                sa.update(_chunks_t)
                .where(
                    _chunks_t.c.id == chunk_id,
                    _chunks_t.c.state.in_(CHUNK_OPEN),
                    _chunks_t.c.lease_until == lease_until,
                )
                .values(state=CHUNK_QUEUED, lease_until=now + dt.timedelta(seconds=requeue_s))
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

        if ledger.run_in_transaction(session, work):
            taken.append(chunk_id)
    return taken
