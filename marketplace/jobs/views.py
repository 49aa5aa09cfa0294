"""Datasets and evaluation jobs (buyers), and published reports (vendors)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from flask import Blueprint, Response, current_app, jsonify, request

from marketplace.accounts.oauth import current, require_oauth
from marketplace.accounts.scopes import MODELS_WRITE, SANDBOX_RUN
from marketplace.api import API_PREFIX, NPZ_MIME, openapi, parse_json, parse_query
from marketplace.catalog import upload_context
from marketplace.catalog.schemas import PublishedReportPublic
from marketplace.config import Settings
from marketplace.db import get_session
from marketplace.errors import DomainError
from marketplace.jobs import datasets, queue, results, services
from marketplace.jobs.errors import DatasetTooLarge
from marketplace.jobs.schemas import (
    DatasetList,
    DatasetPublic,
    DatasetQuery,
    JobCreate,
    JobList,
    JobPublic,
    ReportPublish,
    ResultsQuery,
    SignedReport,
)
from model_registry.blobstore import CHUNK_BYTES

bp = Blueprint("jobs", __name__, url_prefix=API_PREFIX)

JOBS_LISTED_MAX = 100
RESULTS_PIECE_BYTES = 1 << 20

_JOB_EXAMPLE = {
    "dataset_id": 1,
    "versions": [{"model_id": 1, "version": "1.0.0"}],
    "batch_size": 1,
}


def _settings() -> Settings:
    settings: Settings = current_app.extensions["settings"]
    return settings


def _json(model: Any, status: int = 200) -> tuple[Response, int]:
    return jsonify(model.model_dump(mode="json")), status


def _limits() -> services.JobLimits:
    s = _settings()
    return services.JobLimits(
        versions_max=s.job_versions_max,
        batch_samples_max=s.job_batch_samples_max,
        chunk_samples=s.job_chunk_samples,
        active_per_organization_max=s.jobs_active_per_organization_max,
        sample_timeout_s=s.job_sample_timeout_s,
        requeue_s=s.job_requeue_s,
        lease_s=s.job_lease_s,
    )


# --- datasets ----------------------------------------------------------------------------


@bp.post("/datasets")
@openapi(
    "Upload a test set: an npz of arrays sharing a first axis of N samples (buyer)",
    tag="evaluation jobs",
    response=DatasetPublic,
    status=201,
    scope=SANDBOX_RUN,
    query=DatasetQuery,
    body_media_type=NPZ_MIME,
    errors=[413, 415, 429, 503],
    description="Arrays are named after the model's inputs; expected outputs for scoring are "
    "named `expected:<output name>` (int64 class labels `[N]` for accuracy and top_k, else "
    "shaped like the output). Save with `numpy.savez` (stored, not compressed): workers read "
    "each chunk's rows in place. The dataset is visible to its organisation only.",
    error_codes={
        413: ["dataset_too_large"],
        415: ["unsupported_media_type"],
        422: ["dataset_invalid"],
        429: ["too_many_datasets"],
        503: ["storage_unavailable"],
    },
    examples={"name": "line 2, May"},
)
@require_oauth(SANDBOX_RUN)
def upload_dataset() -> Any:
    settings = _settings()
    query = parse_query(DatasetQuery)
    if request.mimetype != NPZ_MIME:
        raise DomainError(f"Send the dataset as {NPZ_MIME}.", code="unsupported_media_type")
    if request.content_length is not None and request.content_length > settings.dataset_bytes_max:
        raise DatasetTooLarge(
            f"Datasets are limited to {settings.dataset_bytes_max} bytes.",
            headers={"Connection": "close"},
        )
    request.max_content_length = settings.dataset_bytes_max + CHUNK_BYTES
    created = datasets.upload_dataset(
        session=get_session(),
        store=current_app.extensions["blob_store"],
        organization_id=current.organization_id,
        name=query.name,
        body=request.stream,
        spool_dir=upload_context(current_app).spool_dir,
        limits=datasets.DatasetLimits(
            bytes_max=settings.dataset_bytes_max,
            samples_max=settings.dataset_samples_max,
            arrays_max=settings.dataset_arrays_max,
            per_organization_max=settings.datasets_per_organization_max,
        ),
    )
    response, status = _json(created, 201)
    response.headers["Location"] = f"{API_PREFIX}/datasets/{created.id}"
    return response, status


@bp.get("/datasets")
@openapi(
    "Your organisation's datasets", tag="evaluation jobs", response=DatasetList, scope=SANDBOX_RUN
)
@require_oauth(SANDBOX_RUN)
def list_datasets() -> Any:
    items = datasets.list_datasets(get_session(), organization_id=current.organization_id)
    return _json(DatasetList(items=items))


@bp.get("/datasets/<int:dataset_id>")
@openapi(
    "One of your organisation's datasets",
    tag="evaluation jobs",
    response=DatasetPublic,
    scope=SANDBOX_RUN,
    errors=[404],
    error_codes={404: ["dataset_not_found"]},
)
@require_oauth(SANDBOX_RUN)
def get_dataset(dataset_id: int) -> Any:
    session = get_session()
    row = datasets.get_dataset(
        session, dataset_id=dataset_id, organization_id=current.organization_id
    )
    return _json(datasets.dataset_public(row))


@bp.delete("/datasets/<int:dataset_id>")
@openapi(
    "Delete a dataset and its bytes (refused while a queued or running job uses it)",
    tag="evaluation jobs",
    status=204,
    scope=SANDBOX_RUN,
    errors=[404, 409],
    error_codes={404: ["dataset_not_found"], 409: ["dataset_in_use"]},
)
@require_oauth(SANDBOX_RUN)
def delete_dataset(dataset_id: int) -> Any:
    datasets.delete_dataset(
        session=get_session(),
        store=current_app.extensions["blob_store"],
        dataset_id=dataset_id,
        organization_id=current.organization_id,
    )
    return Response(status=204)


# --- jobs -------------------------------------------------------------------------------------


@bp.post("/evaluation-jobs")
@openapi(
    "Evaluate a dataset against one or more versions, side by side (buyer)",
    tag="evaluation jobs",
    body=JobCreate,
    response=JobPublic,
    status=201,
    scope=SANDBOX_RUN,
    errors=[402, 404, 410, 429],
    description="Every version is checked against the dataset (inputs, dtypes, shapes; the "
    "metric against the output it scores) and its entitlement found before anything runs; "
    "each version then takes up front what the dataset's N samples need: N trial calls, or a "
    "hold on the wallet worth the most N metered calls can cost (402 with `missing_minor` when "
    "it cannot). What does not run is given back. The job runs on the task queue, one task "
    "per version and chunk of samples.",
    error_codes={
        402: ["insufficient_funds"],
        403: [
            "no_entitlement",
            "trial_calls_insufficient",
            "license_inactive",
            "listing_suspended",
            "insufficient_scope",
        ],
        404: ["dataset_not_found", "model_not_found", "version_not_found"],
        410: ["version_revoked"],
        422: [
            "dataset_mismatch",
            "metric_not_applicable",
            "validation_failed",
            "malformed_json",
            "integer_out_of_range",
        ],
        429: ["too_many_jobs"],
    },
    example=_JOB_EXAMPLE,
)
@require_oauth(SANDBOX_RUN)
def create_job() -> Any:
    request_body = parse_json(JobCreate)
    celery = current_app.extensions["celery"]
    job = services.create_job(
        session=get_session(),
        organization_id=current.organization_id,
        request=request_body,
        limits=_limits(),
        publish=lambda chunk_ids: queue.publish(celery, chunk_ids),
    )
    response, status = _json(job, 201)
    response.headers["Location"] = f"{API_PREFIX}/evaluation-jobs/{job.id}"
    return response, status


@bp.get("/evaluation-jobs")
@openapi(
    "Your organisation's evaluation jobs, newest first",
    tag="evaluation jobs",
    response=JobList,
    scope=SANDBOX_RUN,
)
@require_oauth(SANDBOX_RUN)
def list_jobs() -> Any:
    items = services.list_jobs(
        get_session(), organization_id=current.organization_id, limit=JOBS_LISTED_MAX
    )
    return _json(JobList(items=items))


@bp.get("/evaluation-jobs/<int:job_id>")
@openapi(
    "An evaluation job's progress per version, and the comparison table",
    tag="evaluation jobs",
    response=JobPublic,
    scope=SANDBOX_RUN,
    errors=[404],
    error_codes={404: ["job_not_found"]},
)
@require_oauth(SANDBOX_RUN)
def get_job(job_id: int) -> Any:
    job = services.get_job(get_session(), job_id=job_id, organization_id=current.organization_id)
    return _json(job)


@bp.delete("/evaluation-jobs/<int:job_id>")
@openapi(
    "Cancel a job: what ran is charged, the rest is given back",
    tag="evaluation jobs",
    response=JobPublic,
    scope=SANDBOX_RUN,
    errors=[404, 409],
    error_codes={404: ["job_not_found"], 409: ["job_finished"]},
)
@require_oauth(SANDBOX_RUN)
def cancel_job(job_id: int) -> Any:
    job = services.cancel_job(
        session=get_session(), job_id=job_id, organization_id=current.organization_id
    )
    return _json(job)


def _streamed(file: IO[bytes]) -> Iterator[bytes]:
    try:
        file.seek(0)
        while piece := file.read(RESULTS_PIECE_BYTES):
            yield piece
    finally:
        file.close()


@bp.get("/evaluation-jobs/<int:job_id>/results")
@openapi(
    "One version's outputs of a finished or cancelled job, as npz",
    tag="evaluation jobs",
    query=ResultsQuery,
    scope=SANDBOX_RUN,
    response_media_types=(NPZ_MIME,),
    errors=[404, 409, 413, 503],
    description="One array per output with a row per sample that ran (zeros where a sample "
    "failed), `jishi.ok` (whether each sample ran) and `jishi.sample` (its index in the "
    "dataset).",
    error_codes={
        404: ["job_not_found", "job_version_not_found"],
        409: ["job_not_finished", "results_not_stackable"],
        413: ["results_too_large"],
        503: ["storage_unavailable"],
    },
)
@require_oauth(SANDBOX_RUN)
def job_results(job_id: int) -> Any:
    query = parse_query(ResultsQuery)
    spool_dir = Path(upload_context(current_app).spool_dir)
    spool_dir.mkdir(parents=True, exist_ok=True)
    file = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - closed by the stream
    try:
        name = results.write_results(
            session=get_session(),
            store=current_app.extensions["blob_store"],
            job_id=job_id,
            organization_id=current.organization_id,
            version_id=query.version,
            bytes_max=_settings().job_results_bytes_max,
            out=file,
        )
        size = file.tell()
    except BaseException:
        file.close()
        raise
    response = Response(_streamed(file), mimetype=NPZ_MIME)
    response.headers["Content-Length"] = str(size)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/evaluation-jobs/<int:job_id>/report")
@openapi(
    "The finished job's signed evaluation report",
    tag="evaluation jobs",
    response=SignedReport,
    scope=SANDBOX_RUN,
    errors=[404, 409],
    description="Binds each version's model SHA-256, version and opsets, the dataset's "
    "SHA-256, the onnxruntime version, the execution settings, the metric, latency figures "
    "and time, signed with the audit journal's key: `jishi reports verify REPORT "
    "--public-key KEY` checks it offline.",
    error_codes={404: ["job_not_found"], 409: ["job_not_finished"]},
)
@require_oauth(SANDBOX_RUN)
def job_report(job_id: int) -> Any:
    document = services.job_report(
        session=get_session(),
        job_id=job_id,
        organization_id=current.organization_id,
        signer=current_app.extensions["audit_keys"].signer,
        sample_timeout_s=_settings().job_sample_timeout_s,
    )
    return jsonify(document)


@bp.post("/evaluation-jobs/<int:job_id>/report/consent")
@openapi(
    "Let the vendors of the job's versions publish its figures of their own versions",
    tag="evaluation jobs",
    response=JobPublic,
    scope=SANDBOX_RUN,
    errors=[404],
    description="The dataset stays private: a published report names its SHA-256 and sample "
    "count, and only the publishing vendor's own version's figures.",
    error_codes={404: ["job_not_found"]},
)
@require_oauth(SANDBOX_RUN)
def consent(job_id: int) -> Any:
    job = services.consent_to_publication(
        session=get_session(), job_id=job_id, organization_id=current.organization_id
    )
    return _json(job)


@bp.post("/models/<int:model_id>/reports")
@openapi(
    "Publish a buyer's evaluation report of your version on your listing (owner)",
    tag="evaluation jobs",
    body=ReportPublish,
    response=PublishedReportPublic,
    status=201,
    scope=MODELS_WRITE,
    errors=[404, 409],
    error_codes={
        403: ["no_publish_consent", "not_a_vendor", "insufficient_scope"],
        404: ["model_not_found", "job_not_found"],
        409: ["job_not_finished", "report_published"],
    },
    example={"job_id": 1},
)
@require_oauth(MODELS_WRITE)
def publish_report(model_id: int) -> Any:
    body = parse_json(ReportPublish)
    published = services.publish_report(
        session=get_session(),
        listing_id=model_id,
        job_id=body.job_id,
        organization_id=current.organization_id,
        signer=current_app.extensions["audit_keys"].signer,
        sample_timeout_s=_settings().job_sample_timeout_s,
    )
    return _json(published, 201)
