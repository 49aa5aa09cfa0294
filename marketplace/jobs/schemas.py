"""Request and response shapes of datasets and evaluation jobs. Views return these."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from marketplace.jobs.metrics import METRIC_NAMES

MetricName = Literal["accuracy", "top_k", "mean_absolute_error", "iou"]
if set(METRIC_NAMES) != set(MetricName.__args__):  # type: ignore[attr-defined]
    raise RuntimeError("the API's metric names differ from the metrics module's")

EXPECTED_PREFIX = "expected:"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetArray(BaseModel):
    name: str
    dtype: str
    shape: list[int]


class DatasetPublic(BaseModel):
    id: int
    name: str
    sha256: str
    size_bytes: int
    samples: int
    inputs: list[DatasetArray] = Field(description="Arrays fed to the models, by input name")
    expected: list[DatasetArray] = Field(
        description="Expected outputs (`expected:<output name>` in the npz), by output name"
    )
    created_at: dt.datetime


class DatasetList(BaseModel):
    items: list[DatasetPublic]


class DatasetQuery(Strict):
    name: str | None = Field(
        default=None, max_length=200, description="A name for people", examples=["line 2, May"]
    )


class JobVersionRef(Strict):
    model_id: int = Field(ge=1)
    version: str = Field(min_length=1, max_length=64, examples=["1.0.0"])


class JobCreate(Strict):
    dataset_id: int = Field(ge=1)
    versions: list[JobVersionRef] = Field(min_length=1)
    batch_size: int = Field(default=1, ge=1, description="Samples per sandbox call")
    metric: MetricName | None = Field(
        default=None, description="Scores every version against the dataset's expected outputs"
    )
    output: str | None = Field(
        default=None,
        max_length=256,
        description="The output the metric scores (default: the one the dataset has expected "
        "values for)",
    )
    k: int = Field(default=5, ge=1, le=1000, description="top_k only: how many classes count")


class JobVersionProgress(BaseModel):
    model_id: int
    model_slug: str
    version: str
    version_id: int
    kind: str = Field(description="owner, trial, per_inference, perpetual or subscription")
    license_id: int | None
    samples: int
    samples_done: int = Field(description="Samples run to the end, with outputs")
    samples_failed: int
    samples_charged: int = Field(description="Samples counted against the licence or trial")
    failures: dict[str, int] = Field(
        description="Failed samples by problem code; `not_scored`: samples that ran but whose "
        "outputs the metric could not score; `sample_outputs_too_large`: a sample's outputs "
        "passed JOB_SAMPLE_OUTPUTS_BYTES_MAX; `output_shape_varies`: a sample's outputs were "
        "shaped unlike those of the first sample of its chunk; `tensor_name_reserved`: the "
        "version names an output `jishi.*`. Failed samples cost nothing, except one that ran "
        "to its deadline (`deadline_exceeded`)"
    )
    latency_p50_ms: float | None = Field(description="Of one sandbox call (a batch)")
    latency_p99_ms: float | None
    metric_value: float | None
    currency: str | None
    cost_per_1000_minor: int | None = Field(
        description="What 1,000 samples cost on this licence (none for the vendor's own model)"
    )
    charged_minor: int = Field(description="What this job charged so far")
    held_minor: int = Field(description="Still held on the wallet for samples not yet run")


class ComparisonRow(BaseModel):
    model_id: int
    version: str
    metric_value: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    cost_per_1000_minor: int | None
    currency: str | None
    samples_failed: int


class JobPublic(BaseModel):
    id: int
    state: Literal["queued", "running", "finished", "cancelled"]
    dataset_id: int
    dataset_sha256: str
    samples: int
    batch_size: int
    chunk_samples: int
    metric: str | None
    output: str | None
    k: int
    created_at: dt.datetime
    finished_at: dt.datetime | None
    cancelled_at: dt.datetime | None
    report_consent: bool
    versions: list[JobVersionProgress]
    comparison: list[ComparisonRow] | None = Field(
        description="With a metric: one row per version, side by side"
    )


class JobList(BaseModel):
    items: list[JobPublic]


class ResultsQuery(Strict):
    version: int = Field(ge=1, description="The version's `version_id` in the job", examples=[1])


class ReportPublish(Strict):
    job_id: int = Field(ge=1)


class SignedReport(BaseModel):
    """A report and its Ed25519 signature by the journal's key (``jishi reports verify``)."""

    model_config = ConfigDict(extra="allow")
