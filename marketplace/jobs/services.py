"""Evaluation jobs: create, follow, cancel, score side by side, report.

Creating a job, in one transaction and before anything runs: the dataset and every version are
checked (inputs by name, dtype and shape; the metric against the output it scores: 422), the
entitlement of each version found, and what its samples need taken up front
(:func:`marketplace.licensing.entitlements.reserve_batch`: trial calls, or a wallet hold worth
the most the samples can cost: 403/402 with the missing amount). Then one chunk row per
(version, chunk) is written and a task published for each.

A worker finishes a chunk with :func:`marketplace.jobs.chunks.complete_chunk`, which counts its
samples exactly once. A sample is charged when it ran to the end or to its deadline (as an HTTP
call that reaches its deadline is); other failures cost nothing. Cancelling marks every open
chunk cancelled and gives back the rest at once: what ran is charged, nothing more.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, col, select

from marketplace.catalog.models import Listing, ModelVersion, PublishedReport
from marketplace.catalog.schemas import PublishedReportPublic
from marketplace.catalog.services import get_version_for_evaluation
from marketplace.db import utcnow
from marketplace.errors import ValidationFailed
from marketplace.jobs import chunks, metrics
from marketplace.jobs import reports as signed_reports
from marketplace.jobs.datasets import get_dataset
from marketplace.jobs.errors import (
    DatasetMismatch,
    DatasetNotFound,
    JobFinished,
    JobNotFinished,
    JobNotFound,
    MetricNotApplicable,
    NoPublishConsent,
    ReportPublished,
    TooManyJobs,
)
from marketplace.jobs.models import (
    CHUNK_CANCELLED,
    CHUNK_DONE,
    CHUNK_OPEN,
    JOB_ACTIVE,
    JOB_CANCELLED,
    JOB_FINISHED,
    OWNER,
    Dataset,
    EvaluationJob,
    JobChunk,
    JobVersion,
)
from marketplace.jobs.schemas import (
    EXPECTED_PREFIX,
    ComparisonRow,
    JobCreate,
    JobPublic,
    JobVersionProgress,
)
from marketplace.ledger import services as ledger
from marketplace.licensing import entitlements
from marketplace.licensing.models import PER_INFERENCE
from marketplace.metering.services import hold_bound
from marketplace.rows import attributes

log = logging.getLogger(__name__)

_chunks_t = JobChunk.__table__  # type: ignore[attr-defined]
_jobs_t = EvaluationJob.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class JobLimits:
    versions_max: int
    batch_samples_max: int
    chunk_samples: int
    active_per_organization_max: int
    sample_timeout_s: float
    requeue_s: float
    lease_s: float


def _chunk_size(batch_size: int, chunk_samples: int) -> int:
    """Samples per chunk: whole batches, at least one."""
    return max(batch_size, chunk_samples // batch_size * batch_size)


# --- checking a job before it is accepted ----------------------------------------------------


def _fixed(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 else None


def _check_inputs(version: ModelVersion, label: str, dataset: Dataset, batch_size: int) -> None:
    """The dataset feeds every input of ``version``: names, dtypes, ranks and fixed sizes."""
    arrays = {a["name"]: a for a in dataset.arrays}
    problems: list[dict[str, str]] = []
    for spec in version.inputs:
        name = spec["name"]
        array = arrays.get(name)
        if array is None or name.startswith(EXPECTED_PREFIX):
            problems.append({"field": name[:100], "message": f"{label} needs input {name!r}"})
            continue
        if array["dtype"] != spec.get("dtype"):
            problems.append(
                {
                    "field": name[:100],
                    "message": f"{label} takes {spec.get('dtype')}, the dataset has "
                    f"{array['dtype']}",
                }
            )
            continue
        shape = spec.get("shape")
        if shape is None:
            continue
        if len(shape) != len(array["shape"]):
            problems.append(
                {
                    "field": name[:100],
                    "message": f"{label} takes rank {len(shape)} (the first axis the samples), "
                    f"the dataset has rank {len(array['shape'])}",
                }
            )
            continue
        first = _fixed(shape[0])
        if first is not None and first != batch_size:
            problems.append(
                {
                    "field": name[:100],
                    "message": f"{label} takes batches of exactly {first}; ask for batch_size "
                    f"{first}",
                }
            )
        for axis, (want, got) in enumerate(zip(shape[1:], array["shape"][1:], strict=True), 1):
            if _fixed(want) is not None and want != got:
                problems.append(
                    {
                        "field": name[:100],
                        "message": f"{label} takes size {want} on axis {axis}, the dataset "
                        f"has {got}",
                    }
                )
    if problems:
        raise DatasetMismatch(
            f"The dataset does not fit {label}: {problems[0]['message']}.", errors=problems
        )


def _scored_output(request: JobCreate, dataset: Dataset) -> str | None:
    """The output the metric scores (None without a metric); 422 when it cannot be chosen."""
    if request.metric is None:
        return None
    expected = [
        a["name"][len(EXPECTED_PREFIX) :]
        for a in dataset.arrays
        if a["name"].startswith(EXPECTED_PREFIX)
    ]
    if not expected:
        raise MetricNotApplicable(
            "The dataset has no expected outputs to score against "
            "(arrays named 'expected:<output name>')."
        )
    if request.output is not None:
        if request.output not in expected:
            raise MetricNotApplicable(f"The dataset has no expected values for {request.output!r}.")
        return request.output
    if len(expected) > 1:
        raise MetricNotApplicable(
            "The dataset has expected values for several outputs; name the one to score "
            "in 'output'."
        )
    return expected[0]


def _check_metric(
    version: ModelVersion, label: str, dataset: Dataset, metric: str, output: str, k: int
) -> None:
    spec = next((o for o in version.outputs if o["name"] == output), None)
    if spec is None:
        raise MetricNotApplicable(f"{label} has no output {output!r}.")
    expected = next(a for a in dataset.arrays if a["name"] == EXPECTED_PREFIX + output)
    try:
        metrics.check_metric_applies(
            metric, spec.get("shape"), spec["dtype"], expected["shape"], expected["dtype"], k=k
        )
    except metrics.MetricInputError as exc:
        raise MetricNotApplicable(f"{label}: {exc}.") from None


@dataclass
class _Planned:
    version: ModelVersion
    listing: Listing
    label: str
    entitlement: entitlements.Entitlement | None


def _plan_versions(
    session: Session, request: JobCreate, organization_id: int, dataset: Dataset
) -> list[_Planned]:
    planned: list[_Planned] = []
    seen: set[int] = set()
    for ref in request.versions:
        row, listing = get_version_for_evaluation(session, ref.model_id, ref.version)
        assert row.id is not None and listing.id is not None
        if row.id in seen:
            raise ValidationFailed(f"Version {listing.slug} {row.version} is named twice.")
        seen.add(row.id)
        label = f"{listing.slug} {row.version}"
        _check_inputs(row, label, dataset, request.batch_size)
        planned.append(_Planned(row, listing, label, None))
    return planned


def create_job(
    *,
    session: Session,
    organization_id: int,
    request: JobCreate,
    limits: JobLimits,
    publish: Callable[[list[int]], bool],
) -> JobPublic:
    """Check, reserve and queue a job; nothing is taken or queued when any part is refused."""
    if len(request.versions) > limits.versions_max:
        raise ValidationFailed(f"A job compares at most {limits.versions_max} versions.")
    if request.batch_size > limits.batch_samples_max:
        raise ValidationFailed(f"batch_size is limited to {limits.batch_samples_max} samples.")
    dataset = get_dataset(session, dataset_id=request.dataset_id, organization_id=organization_id)
    output = _scored_output(request, dataset)
    planned = _plan_versions(session, request, organization_id, dataset)
    if request.metric is not None and output is not None:
        for item in planned:
            _check_metric(item.version, item.label, dataset, request.metric, output, request.k)
    # The entitlements are read before the write transaction, as the evaluate path reads them.
    for item in planned:
        if item.listing.organization_id != organization_id:
            assert item.listing.id is not None and item.version.id is not None
            item.entitlement = entitlements.check_entitlement(
                session=session,
                organization_id=organization_id,
                listing_id=item.listing.id,
                version_id=item.version.id,
            )
    chunk = _chunk_size(request.batch_size, limits.chunk_samples)
    bounds = [(s, min(s + chunk, dataset.samples)) for s in range(0, dataset.samples, chunk)]
    now = utcnow()

    def work(s: Session) -> tuple[int, list[int]]:
        active = s.execute(
            sa.select(sa.func.count())
            .select_from(EvaluationJob)
            .where(
                col(EvaluationJob.organization_id) == organization_id,
                col(EvaluationJob.state).in_(JOB_ACTIVE),
            )
        ).scalar_one()
        if active >= limits.active_per_organization_max:
            raise TooManyJobs(
                f"An organisation runs at most {limits.active_per_organization_max} jobs at "
                "once; wait for one to end or cancel it.",
                headers={"Retry-After": "60"},
            )
        # The dataset cannot be deleted while the job is being created (its row is locked).
        locked = s.exec(select(Dataset).where(Dataset.id == dataset.id).with_for_update()).one()
        if locked.deleted_at is not None:
            raise DatasetNotFound("No such dataset.")
        job = EvaluationJob(
            organization_id=organization_id,
            dataset_id=dataset.id or 0,
            samples=dataset.samples,
            batch_size=request.batch_size,
            chunk_samples=chunk,
            metric=request.metric,
            output_name=output,
            top_k=request.k,
            created_at=now,
        )
        s.add(job)
        s.flush()
        chunk_ids: list[int] = []
        for position, item in enumerate(planned):
            assert item.version.id is not None and item.listing.id is not None
            row = JobVersion(
                job_id=job.id or 0,
                position=position,
                version_id=item.version.id,
                listing_id=item.listing.id,
                kind=OWNER,
                calls_reserved=dataset.samples,
            )
            ent = item.entitlement
            if ent is not None:
                hold = (
                    hold_bound(ent.royalty_per_1k_minor, [b - a for a, b in bounds])
                    if ent.kind == PER_INFERENCE
                    else 0
                )
                cover = entitlements.reserve_batch(
                    s,
                    entitlement=ent,
                    calls=dataset.samples,
                    hold_minor=hold,
                    key=f"job:{job.id}:{position}:hold",
                )
                row.kind, row.license_id = cover.kind, cover.license_id
                row.currency, row.royalty_per_1k_minor = ent.currency, ent.royalty_per_1k_minor
                row.hold_id, row.hold_minor = cover.hold_id, cover.hold_minor
            s.add(row)
            s.flush()
            for index, (start, stop) in enumerate(bounds):
                chunk_row = JobChunk(
                    job_id=job.id or 0,
                    job_version_id=row.id or 0,
                    chunk_index=index,
                    start=start,
                    stop=stop,
                    lease_until=now + dt.timedelta(seconds=limits.requeue_s),
                )
                s.add(chunk_row)
                s.flush()
                chunk_ids.append(chunk_row.id or 0)
        return job.id or 0, chunk_ids

    job_id, chunk_ids = ledger.run_in_transaction(session, work)
    publish(chunk_ids)
    return job_public(session, find_job(session, job_id, organization_id))


# --- reading jobs ----------------------------------------------------------------------------


def find_job(session: Session, job_id: int, organization_id: int) -> EvaluationJob:
    """The organisation's job; 404 for anyone else's, as for one that does not exist."""
    job = session.get(EvaluationJob, job_id)
    if job is None or job.organization_id != organization_id:
        raise JobNotFound("No such evaluation job.")
    return job


@dataclass
class _Figures:
    """What a version's chunks add up to."""

    samples_done: int = 0
    samples_failed: int = 0
    samples_charged: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    score_sum: float = 0.0
    score_count: int = 0

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        return round(float(np.percentile(np.asarray(self.latencies), q)), 3)

    @property
    def metric_value(self) -> float | None:
        return self.score_sum / self.score_count if self.score_count else None


def _figures(session: Session, job_id: int) -> dict[int, _Figures]:
    rows = session.execute(
        sa.select(
            _chunks_t.c.job_version_id,
            _chunks_t.c.samples_done,
            _chunks_t.c.samples_failed,
            _chunks_t.c.samples_charged,
            _chunks_t.c.failures,
            _chunks_t.c.latencies_ms,
            _chunks_t.c.score_sum,
            _chunks_t.c.score_count,
        ).where(_chunks_t.c.job_id == job_id, _chunks_t.c.state == CHUNK_DONE)
    ).all()
    out: dict[int, _Figures] = {}
    for jv_id, done, failed, charged, failures, latencies, score_sum, score_count in rows:
        figures = out.setdefault(jv_id, _Figures())
        figures.samples_done += done
        figures.samples_failed += failed
        figures.samples_charged += charged
        for code, n in (failures or {}).items():
            figures.failures[code] = figures.failures.get(code, 0) + n
        figures.latencies.extend(latencies or [])
        if score_sum is not None:
            figures.score_sum += score_sum
            figures.score_count += score_count
    return out


@dataclass(frozen=True)
class _VersionView:
    row: JobVersion
    version: ModelVersion
    listing: Listing
    figures: _Figures


def _version_views(session: Session, job: EvaluationJob) -> list[_VersionView]:
    rows = session.exec(
        select(JobVersion, ModelVersion, Listing)
        .join(ModelVersion, col(ModelVersion.id) == col(JobVersion.version_id))
        .join(Listing, col(Listing.id) == col(JobVersion.listing_id))
        .where(JobVersion.job_id == job.id)
        .order_by(col(JobVersion.position))
    ).all()
    figures = _figures(session, job.id or 0)
    return [
        _VersionView(jv, version, listing, figures.get(jv.id or 0, _Figures()))
        for jv, version, listing in rows
    ]


def _shown(v: _VersionView) -> dict[str, Any]:
    """What the job's progress and its signed report both show of a version, by their names."""
    return {
        "model_id": v.listing.id or 0,
        "model_slug": v.listing.slug,
        "version": v.version.version,
        **attributes(v.figures, "metric_value samples_done samples_failed"),
        "latency_p50_ms": v.figures.percentile(50),
        "latency_p99_ms": v.figures.percentile(99),
        "cost_per_1000_minor": None if v.row.currency is None else v.row.royalty_per_1k_minor,
        "currency": v.row.currency,
    }


def _progress(job: EvaluationJob, v: _VersionView) -> JobVersionProgress:
    return JobVersionProgress.model_validate(
        {
            **_shown(v),
            **attributes(v.row, "kind license_id charged_minor"),
            **attributes(v.figures, "samples_charged failures"),
            "version_id": v.version.id or 0,
            "samples": job.samples,
            "held_minor": v.row.hold_minor,
        }
    )


def job_public(session: Session, job: EvaluationJob) -> JobPublic:
    assert job.id is not None
    dataset = session.get(Dataset, job.dataset_id)
    versions = [_progress(job, v) for v in _version_views(session, job)]
    comparison = None
    if job.metric is not None:
        comparison = [ComparisonRow.model_validate(v, from_attributes=True) for v in versions]
    public = JobPublic.model_validate(
        {
            **attributes(
                job,
                "id state dataset_id samples batch_size chunk_samples metric created_at "
                "finished_at cancelled_at",
            ),
            "dataset_sha256": dataset.sha256 if dataset is not None else "",
            "output": job.output_name,
            "k": job.top_k,
            "report_consent": job.report_consent_at is not None,
            "versions": versions,
            "comparison": comparison,
        }
    )
    # Ends the read only now: a rollback expires the rows, and reading the job again in a later
    # transaction could pair a finished state with figures from before its last chunk.
    session.rollback()
    return public


def get_job(session: Session, *, job_id: int, organization_id: int) -> JobPublic:
    return job_public(session, find_job(session, job_id, organization_id))


def list_jobs(session: Session, *, organization_id: int, limit: int) -> list[JobPublic]:
    jobs = session.exec(
        select(EvaluationJob)
        .where(EvaluationJob.organization_id == organization_id)
        .order_by(col(EvaluationJob.id).desc())
        .limit(limit)
    ).all()
    return [job_public(session, job) for job in jobs]


# --- cancelling and finishing -------------------------------------------------------------


def cancel_job(*, session: Session, job_id: int, organization_id: int) -> JobPublic:
    """Stop a job: open chunks are cancelled, what ran stays charged, the rest goes back."""
    job = find_job(session, job_id, organization_id)
    session.rollback()
    if job.state == JOB_FINISHED:
        raise JobFinished("The job has finished; there is nothing left to cancel.")

    def work(s: Session) -> None:
        locked = s.exec(
            select(EvaluationJob)
            .where(EvaluationJob.id == job_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        if locked.state not in JOB_ACTIVE:
            return
        now = utcnow()
        s.execute(
            sa.update(_chunks_t)
            .where(_chunks_t.c.job_id == job_id, _chunks_t.c.state.in_(CHUNK_OPEN))
            .values(state=CHUNK_CANCELLED, finished_at=now)
        )
        for jv in s.exec(
            select(JobVersion).where(JobVersion.job_id == job_id).with_for_update()
        ).all():
            chunks.release_version(s, jv, now)
        locked.state, locked.cancelled_at = JOB_CANCELLED, now
        s.add(locked)

    ledger.run_in_transaction(session, work)
    return get_job(session, job_id=job_id, organization_id=organization_id)


# --- reports ---------------------------------------------------------------------------------


def onnxruntime_version() -> str:
    """The runtime the workers run (installed with this release; never imported here)."""
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _report_versions(views: Sequence[_VersionView]) -> list[dict[str, Any]]:
    return [
        {**_shown(v), "model_sha256": v.version.sha256, "opsets": dict(v.version.opsets)}
        for v in views
    ]


def _execution(job: EvaluationJob, sample_timeout_s: float) -> dict[str, Any]:
    return {
        "batch_size": job.batch_size,
        "chunk_samples": job.chunk_samples,
        # Canonical JSON carries no floats: the deadline in whole milliseconds.
        "sample_timeout_ms": round(sample_timeout_s * 1000),
        "metric": job.metric,
        "output": job.output_name,
        "k": job.top_k,
        "sandbox": {
            "intra_op_num_threads": 1,
            "inter_op_num_threads": 1,
            "execution_mode": "sequential",
        },
    }


def _build_signed(
    job: EvaluationJob,
    dataset: Dataset,
    views: Sequence[_VersionView],
    signer: Any,
    sample_timeout_s: float,
) -> dict[str, Any]:
    report = signed_reports.build_report(
        job_id=job.id or 0,
        dataset_sha256=dataset.sha256,
        dataset_samples=dataset.samples,
        metric=job.metric or "none",
        created_at=job.finished_at or job.created_at,
        onnxruntime_version=onnxruntime_version(),
        execution=_execution(job, sample_timeout_s),
        versions=_report_versions(views),
    )
    return signed_reports.sign_report(report, signer)


def job_report(
    *, session: Session, job_id: int, organization_id: int, signer: Any, sample_timeout_s: float
) -> dict[str, Any]:
    """The finished job's signed report, made and kept the first time it is asked for."""
    job = find_job(session, job_id, organization_id)
    if job.state != JOB_FINISHED:
        raise JobNotFinished("The report is made when every chunk of the job has run.")
    if job.report is not None:
        document = dict(job.report)
        session.rollback()
        return document
    dataset = session.get(Dataset, job.dataset_id)
    assert dataset is not None
    document = _build_signed(job, dataset, _version_views(session, job), signer, sample_timeout_s)
    session.rollback()

    def work(s: Session) -> None:
        s.execute(
            sa.update(_jobs_t)
            .where(_jobs_t.c.id == job_id, _jobs_t.c.report.is_(None))
            .values(report=document)
        )

    ledger.run_in_transaction(session, work)
    stored = session.get(EvaluationJob, job_id, populate_existing=True)
    assert stored is not None and stored.report is not None
    kept = dict(stored.report)
    session.rollback()
    return kept


def consent_to_publication(*, session: Session, job_id: int, organization_id: int) -> JobPublic:
    """The buyer lets the job's vendors publish its figures of their own versions."""
    find_job(session, job_id, organization_id)

    def work(s: Session) -> None:
        s.execute(
            sa.update(_jobs_t)
            .where(_jobs_t.c.id == job_id, _jobs_t.c.report_consent_at.is_(None))
            .values(report_consent_at=utcnow())
        )

    ledger.run_in_transaction(session, work)
    return get_job(session, job_id=job_id, organization_id=organization_id)


def publish_report(
    *,
    session: Session,
    listing_id: int,
    job_id: int,
    organization_id: int,
    signer: Any,
    sample_timeout_s: float,
) -> PublishedReportPublic:
    """A vendor shows a job's figures of its own version on its listing, signed; the buyer
    must have consented (403 ``no_publish_consent``), the job must have finished."""
    from marketplace.catalog.services import get_owned_listing

    listing = get_owned_listing(
        session=session, listing_id=listing_id, organization_id=organization_id
    )
    job = session.get(EvaluationJob, job_id)
    views = [] if job is None else _version_views(session, job)
    mine = [v for v in views if v.listing.id == listing.id]
    if job is None or not mine:
        # A vendor learns nothing of jobs that did not run its models.
        raise JobNotFound("No evaluation job of this model has that id.")
    if job.report_consent_at is None:
        raise NoPublishConsent("The buyer has not consented to publishing this job's figures.")
    if job.state != JOB_FINISHED:
        raise JobNotFinished("The job has not finished.")
    dataset = session.get(Dataset, job.dataset_id)
    assert dataset is not None
    (view,) = mine[:1]
    document = _build_signed(job, dataset, [view], signer, sample_timeout_s)
    session.commit()  # ends the read; the rows stay loaded (a rollback would expire them)

    def work(s: Session) -> PublishedReport:
        exists = s.exec(
            select(PublishedReport.id).where(
                PublishedReport.listing_id == listing_id, PublishedReport.job_id == job_id
            )
        ).first()
        if exists is not None:
            raise ReportPublished("This job's report is published on the listing already.")
        row = PublishedReport(
            listing_id=listing_id,
            version_id=view.version.id or 0,
            job_id=job_id,
            document=document,
        )
        s.add(row)
        s.flush()
        return row

    row = ledger.run_in_transaction(session, work)
    return PublishedReportPublic(
        job_id=job_id,
        version=view.version.version,
        published_at=row.published_at,
        document=row.document,
    )
