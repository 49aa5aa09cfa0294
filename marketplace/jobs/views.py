"""Datasets and evaluation jobs (buyers), and published reports (vendors)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from flask import Blueprint, Response, current_app, jsonify, request

from marketplace.accounts.scopes import MODELS_WRITE, SANDBOX_RUN
from marketplace.api import API_PREFIX, NPZ_MIME
from marketplace.catalog import upload_context
from marketplace.catalog.errors import UnsupportedMediaType
from marketplace.catalog.schemas import PublishedReportPublic
from marketplace.jobs import JobsContext, datasets, queue, results, services
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
from marketplace.operation import for_caller, operations
from model_registry.blobstore import CHUNK_BYTES

bp = Blueprint("jobs", __name__, url_prefix=API_PREFIX)
T = TypeVar("T")

JOBS_LISTED_MAX = 100
RESULTS_PIECE_BYTES = 1 << 20
# A buyer's own datasets and jobs, read and run with sandbox:run.
operation = operations(tag="evaluation jobs", scope=SANDBOX_RUN)

_JOB_EXAMPLE = {
    "dataset_id": 1,
    "versions": [{"model_id": 1, "version": "1.0.0"}],
    "batch_size": 1,
}


def _context() -> JobsContext:
    context: JobsContext = current_app.extensions["jobs"]
    return context


def _signed(report: Callable[..., T], **arguments: Any) -> T:
    """A job's report for the caller, signed with the audit journal's key; the sample timeout
    it ran under is one of the execution settings a report binds."""
    return for_caller(
        report,
        signer=current_app.extensions["audit_keys"].signer,
        sample_timeout_s=_context().limits.sample_timeout_s,
        **arguments,
    )


def _created(model: Any, location: str) -> tuple[Response, int]:
    response = jsonify(model.model_dump(mode="json"))
    response.headers["Location"] = location
    return response, 201


# --- datasets ----------------------------------------------------------------------------


@bp.post("/datasets")
@operation(
    "Upload a test set: an npz of arrays sharing a first axis of N samples (buyer)",
    response=DatasetPublic,
    status=201,
    body_media_type=NPZ_MIME,
    errors=[
        "dataset_too_large",
        "unsupported_media_type",
        "dataset_invalid",
        "too_many_datasets",
        "storage_unavailable",
    ],
    response_headers={"Location": "The new dataset's URL"},
    description="Arrays are named after the model's inputs; expected outputs for scoring are "
    "named `expected:<output name>` (int64 class labels `[N]` for accuracy and top_k, else "
    "shaped like the output). Save with `numpy.savez` (stored, not compressed): workers read "
    "each chunk's rows in place. The dataset is visible to its organisation only.",
    examples={"name": "line 2, May"},
)
def upload_dataset(query: DatasetQuery) -> Any:
    limits = _context().dataset_limits
    if request.mimetype != NPZ_MIME:
        raise UnsupportedMediaType(f"Send the dataset as {NPZ_MIME}.")
    if request.content_length is not None and request.content_length > limits.bytes_max:
        raise DatasetTooLarge(
            f"Datasets are limited to {limits.bytes_max} bytes.",
            headers={"Connection": "close"},
        )
    request.max_content_length = limits.bytes_max + CHUNK_BYTES
    created = for_caller(
        datasets.upload_dataset,
        store=current_app.extensions["blob_store"],
        name=query.name,
        body=request.stream,
        spool_dir=upload_context(current_app).spool_dir,
        limits=limits,
    )
    return _created(created, f"{API_PREFIX}/datasets/{created.id}")


@bp.get("/datasets")
@operation("Your organisation's datasets")
def list_datasets() -> DatasetList:
    return DatasetList(items=for_caller(datasets.list_datasets))


@bp.get("/datasets/<int:dataset_id>")
@operation("One of your organisation's datasets", errors=["dataset_not_found"])
def get_dataset(dataset_id: int) -> DatasetPublic:
    return datasets.dataset_public(for_caller(datasets.get_dataset, dataset_id=dataset_id))


@bp.delete("/datasets/<int:dataset_id>")
@operation(
    "Delete a dataset and its bytes (refused while a queued or running job uses it)",
    status=204,
    errors=["dataset_not_found", "dataset_in_use"],
)
def delete_dataset(dataset_id: int) -> Response:
    store = current_app.extensions["blob_store"]
    for_caller(datasets.delete_dataset, store=store, dataset_id=dataset_id)
    return Response(status=204)


# --- jobs -------------------------------------------------------------------------------------


@bp.post("/evaluation-jobs")
@operation(
    "Evaluate a dataset against one or more versions, side by side (buyer)",
    response=JobPublic,
    status=201,
    errors=[
        "insufficient_funds",
        "no_entitlement",
        "trial_calls_insufficient",
        "license_inactive",
        "listing_suspended",
        "dataset_not_found",
        "model_not_found",
        "version_not_found",
        "version_revoked",
        "dataset_mismatch",
        "metric_not_applicable",
        "validation_failed",
        "malformed_json",
        "integer_out_of_range",
        "too_many_jobs",
    ],
    response_headers={"Location": "The new job's URL"},
    description="Every version is checked against the dataset (inputs, dtypes, shapes; the "
    "metric against the output it scores) and its entitlement found before anything runs; "
    "each version then takes up front what the dataset's N samples need: N trial calls, or a "
    "hold on the wallet worth the most N metered calls can cost (402 with `missing_minor` when "
    "it cannot). What does not run is given back. The job runs on the task queue, one task "
    "per version and chunk of samples.",
    example=_JOB_EXAMPLE,
)
def create_job(body: JobCreate) -> Any:
    celery = current_app.extensions["celery"]
    job = for_caller(
        services.create_job,
        request=body,
        limits=_context().limits,
        publish=lambda chunk_ids: queue.publish(celery, chunk_ids),
    )
    return _created(job, f"{API_PREFIX}/evaluation-jobs/{job.id}")


@bp.get("/evaluation-jobs")
@operation("Your organisation's evaluation jobs, newest first")
def list_jobs() -> JobList:
    return JobList(items=for_caller(services.list_jobs, limit=JOBS_LISTED_MAX))


@bp.get("/evaluation-jobs/<int:job_id>")
@operation(
    "An evaluation job's progress per version, and the comparison table", errors=["job_not_found"]
)
def get_job(job_id: int) -> JobPublic:
    return for_caller(services.get_job, job_id=job_id)


@bp.delete("/evaluation-jobs/<int:job_id>")
@operation(
    "Cancel a job: what ran is charged, the rest is given back",
    errors=["job_not_found", "job_finished"],
)
def cancel_job(job_id: int) -> JobPublic:
    return for_caller(services.cancel_job, job_id=job_id)


def _streamed(file: IO[bytes]) -> Iterator[bytes]:
    try:
        file.seek(0)
        while piece := file.read(RESULTS_PIECE_BYTES):
            yield piece
    finally:
        file.close()


@bp.get("/evaluation-jobs/<int:job_id>/results")
@operation(
    "One version's outputs of a finished or cancelled job, as npz",
    response_media_types=(NPZ_MIME,),
    errors=[
        "job_not_found",
        "job_version_not_found",
        "job_not_finished",
        "results_not_stackable",
        "results_too_large",
        "storage_unavailable",
    ],
    description="One array per output with a row per sample that ran (zeros where a sample "
    "failed), `jishi.ok` (whether each sample ran) and `jishi.sample` (its index in the "
    "dataset).",
)
def job_results(job_id: int, query: ResultsQuery) -> Response:
    spool_dir = Path(upload_context(current_app).spool_dir)
    spool_dir.mkdir(parents=True, exist_ok=True)
    file = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - closed by the stream
    try:
        name = for_caller(
            results.write_results,
            store=current_app.extensions["blob_store"],
            job_id=job_id,
            version_id=query.version,
            bytes_max=_context().results_bytes_max,
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
@operation(
    "The finished job's signed evaluation report",
    response=SignedReport,
    errors=["job_not_found", "job_not_finished"],
    description="Binds each version's model SHA-256, version and opsets, the dataset's "
    "SHA-256, the onnxruntime version, the execution settings, the metric, latency figures "
    "and time, signed with the audit journal's key: `jishi reports verify REPORT "
    "--public-key KEY` checks it offline.",
)
def job_report(job_id: int) -> Response:
    document = _signed(services.job_report, job_id=job_id)
    # Sent as stored: the signed bytes are not re-rendered through a model.
    return jsonify(document)


@bp.post("/evaluation-jobs/<int:job_id>/report/consent")
@operation(
    "Let the vendors of the job's versions publish its figures of their own versions",
    errors=["job_not_found"],
    description="The dataset stays private: a published report names its SHA-256 and sample "
    "count, and only the publishing vendor's own version's figures.",
)
def consent(job_id: int) -> JobPublic:
    return for_caller(services.consent_to_publication, job_id=job_id)


@bp.post("/models/<int:model_id>/reports")
@operation(
    "Publish a buyer's evaluation report of your version on your listing (owner)",
    status=201,
    scope=MODELS_WRITE,
    errors=[
        "no_publish_consent",
        "not_a_vendor",
        "model_not_found",
        "job_not_found",
        "job_not_finished",
        "report_published",
    ],
    example={"job_id": 1},
)
def publish_report(model_id: int, body: ReportPublish) -> PublishedReportPublic:
    return _signed(services.publish_report, listing_id=model_id, job_id=body.job_id)
