"""Evaluation job and dataset errors with stable codes (tests assert the codes)."""

from __future__ import annotations

from marketplace.errors import (
    Conflict,
    DomainError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ValidationFailed,
)


class DatasetNotFound(NotFound, code="dataset_not_found"): ...


class JobNotFound(NotFound, code="job_not_found"): ...


class JobVersionNotFound(NotFound, code="job_version_not_found"): ...


class DatasetInUse(Conflict, code="dataset_in_use"): ...


class JobFinished(Conflict, code="job_finished"): ...


class JobNotFinished(Conflict, code="job_not_finished"): ...


class ReportPublished(Conflict, code="report_published"): ...


class ResultsNotStackable(Conflict, code="results_not_stackable"): ...


class DatasetTooLarge(PayloadTooLarge, code="dataset_too_large"): ...


class ResultsTooLarge(PayloadTooLarge, code="results_too_large"): ...


class DatasetInvalid(ValidationFailed, code="dataset_invalid"): ...


class DatasetMismatch(ValidationFailed, code="dataset_mismatch"): ...


class MetricNotApplicable(ValidationFailed, code="metric_not_applicable"): ...


class NoPublishConsent(Forbidden, code="no_publish_consent"): ...


class TooManyDatasets(DomainError, code="too_many_datasets"): ...


class TooManyJobs(DomainError, code="too_many_jobs"): ...
