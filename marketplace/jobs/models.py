"""Tables of evaluation jobs: a buyer's datasets, its jobs, each job's versions and chunks.

A job runs one task per (version, chunk). The chunk rows are created with the job, so that
the sweeper can tell which ones no worker finished; a chunk's row becomes ``done`` in the same
database transaction that records its usage, by a conditional ``UPDATE`` that only one worker
can win. That is what makes usage exactly once per sample whatever the retries.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from marketplace.db import UTCDateTime, utcnow

# Job states: queued until a chunk starts, running until every chunk is done or the buyer
# cancels it.
JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_FINISHED = "finished"
JOB_CANCELLED = "cancelled"
JOB_ACTIVE = (JOB_QUEUED, JOB_RUNNING)

# Chunk states.
CHUNK_QUEUED = "queued"
CHUNK_RUNNING = "running"
CHUNK_DONE = "done"
CHUNK_CANCELLED = "cancelled"
CHUNK_OPEN = (CHUNK_QUEUED, CHUNK_RUNNING)

# What pays for a version's samples: the licence's kind, or the vendor's own model.
OWNER = "owner"


def _now_field() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Dataset(SQLModel, table=True):
    """A buyer's test set: one npz in the blob store, never shown to vendors."""

    __tablename__ = "datasets"

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    name: str = Field(max_length=200)
    sha256: str = Field(max_length=64)
    size_bytes: int = Field(sa_type=sa.BigInteger)
    blob_key: str = Field(max_length=200)
    samples: int
    # [{name, dtype, shape, offset}]: each array's header as read at upload, with where its
    # data starts in the file, so that a worker reads a chunk's rows without parsing the zip.
    arrays: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON)
    created_at: dt.datetime = _now_field()
    # Deleted datasets keep their row (finished jobs and reports name them); the blob goes.
    deleted_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class EvaluationJob(SQLModel, table=True):
    """A dataset against one or more model versions, scored with one metric."""

    __tablename__ = "evaluation_jobs"

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    dataset_id: int = Field(foreign_key="datasets.id", index=True)
    state: str = Field(default=JOB_QUEUED, max_length=16, index=True)
    samples: int
    batch_size: int
    chunk_samples: int
    metric: str | None = Field(default=None, max_length=32)
    output_name: str | None = Field(default=None, max_length=256)
    top_k: int = 5
    created_at: dt.datetime = _now_field()
    finished_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    cancelled_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    # The buyer's consent that the vendors of the job's versions publish its figures.
    report_consent_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    # The signed report, made once when first asked for after the job finished.
    # SQL NULL, not JSON null, until the report is made: it is set by "WHERE report IS NULL".
    report: dict[str, Any] | None = Field(
        default=None, sa_type=sa.JSON(none_as_null=True), nullable=True
    )


class JobVersion(SQLModel, table=True):
    """One version of a job, with what pays for its samples and what was taken up front."""

    __tablename__ = "evaluation_job_versions"
    __table_args__ = (sa.UniqueConstraint("job_id", "version_id"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="evaluation_jobs.id", index=True)
    position: int  # the order the buyer named the versions in
    version_id: int = Field(foreign_key="model_versions.id", index=True)
    listing_id: int = Field(foreign_key="listings.id", index=True)
    kind: str = Field(max_length=16)  # owner, or the licence's kind
    license_id: int | None = Field(default=None, foreign_key="licenses.id")
    currency: str | None = Field(default=None, max_length=3)
    royalty_per_1k_minor: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    # Taken when the job was created: trial calls, or the wallet hold (per-inference).
    calls_reserved: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    hold_id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.BigInteger, sa.ForeignKey("ledger_transactions.id"), nullable=True),
    )
    hold_minor: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    # Counted so far, and charged (per-inference royalties of those calls).
    calls_charged: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    charged_minor: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    # When what was taken and not used went back (every chunk done or cancelled).
    released_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class JobChunk(SQLModel, table=True):
    """Samples ``start:stop`` of a job's dataset on one of its versions: one task."""

    __tablename__ = "evaluation_chunks"
    __table_args__ = (
        sa.UniqueConstraint("job_version_id", "chunk_index"),
        sa.Index("ix_evaluation_chunks_state_lease", "state", "lease_until"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="evaluation_jobs.id", index=True)
    job_version_id: int = Field(foreign_key="evaluation_job_versions.id")
    chunk_index: int
    start: int
    stop: int
    state: str = Field(default=CHUNK_QUEUED, max_length=16)
    # Published (queued) or started (running) chunks whose lease ran out are published again.
    lease_until: dt.datetime = _now_field()
    attempts: int = 0
    worker: str = Field(default="", max_length=200)  # node and process that ran it last
    samples_done: int = 0
    samples_failed: int = 0
    samples_charged: int = 0
    charged_minor: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    score_sum: float | None = None
    score_count: int = 0
    # Milliseconds of each sandbox call (a batch, or one sample after a batch failed).
    latencies_ms: list[float] = Field(default_factory=list, sa_type=sa.JSON)
    # {code: samples} of the failures.
    failures: dict[str, int] = Field(default_factory=dict, sa_type=sa.JSON)
    output_key: str | None = Field(default=None, max_length=200)
    finished_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
