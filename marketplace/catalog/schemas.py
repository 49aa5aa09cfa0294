"""Request and response shapes of the catalog API. Views return these, never table rows."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from marketplace.api import CurrencyCode, MinorAmount, RequestModel, RowModel

# Semantic Versioning 2.0.0, the official pattern (no leading zeros, optional pre-release and
# build metadata). Patterns here are used with fullmatch: with re.match, "$" also matches before
# a trailing newline, so "1.0.0\n" passed. (Pydantic's Field(pattern=...) runs Rust's regex
# engine, whose "$" is the end of the text.)
SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
VERSION_CHARS_MAX = 64
_TAG = re.compile(r"[\w][\w\-.+]{0,31}")
_TASK = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
DESCRIPTION_CHARS_MAX = 64 * 1024
TAGS_MAX = 20

OfferKind = Literal["per_inference", "perpetual", "subscription"]


def _tags(value: list[str]) -> list[str]:
    out: list[str] = []
    for tag in value:
        tag = tag.strip().lower()
        if not _TAG.fullmatch(tag):
            raise ValueError(f"tag {tag[:40]!r} must be 1-32 letters, digits, '-', '_', '.', '+'")
        if tag not in out:
            out.append(tag)
    return out


def _name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


def _task(value: str) -> str:
    value = value.strip().lower()
    if not _TASK.fullmatch(value):
        raise ValueError("must be lower-case letters, digits, '-' or '_'")
    return value


class ListingCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    summary: str = Field(default="", max_length=500)
    description_md: str = Field(default="", max_length=DESCRIPTION_CHARS_MAX)
    task: str = Field(min_length=1, max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=TAGS_MAX)
    filing_number: str | None = Field(default=None, min_length=1, max_length=64)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _name(value)

    @field_validator("task")
    @classmethod
    def _check_task(cls, value: str) -> str:
        return _task(value)

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: list[str]) -> list[str]:
        return _tags(value)


class ListingUpdate(RequestModel):
    """A partial update; absent fields keep their value."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    summary: str | None = Field(default=None, max_length=500)
    description_md: str | None = Field(default=None, max_length=DESCRIPTION_CHARS_MAX)
    task: str | None = Field(default=None, min_length=1, max_length=64)
    tags: list[str] | None = Field(default=None, max_length=TAGS_MAX)
    filing_number: str | None = Field(default=None, max_length=64)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        return None if value is None else _name(value)

    @field_validator("task")
    @classmethod
    def _check_task(cls, value: str | None) -> str | None:
        return None if value is None else _task(value)

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _tags(value)


class VendorPublic(BaseModel):
    id: int
    name: str


class VersionPublic(RowModel):
    version: str
    sha256: str
    size_bytes: int
    ir_version: int
    opsets: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    stats: dict[str, Any]
    findings: list[dict[str, Any]]
    revoked: bool
    revoked_at: dt.datetime | None
    created_at: dt.datetime


class VersionList(BaseModel):
    items: list[VersionPublic]


class OfferCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    kind: OfferKind
    currency: CurrencyCode
    price_minor: MinorAmount
    royalty_per_1k_minor: MinorAmount = 0
    trial_calls: int = Field(default=0, ge=0, le=1_000_000, strict=True)
    trial_days: int = Field(default=0, ge=0, le=365, strict=True)
    term_days: int | None = Field(default=None, ge=1, le=36_500, strict=True)
    allow_download: bool = Field(default=False, strict=True)
    commercial_use: bool = Field(default=False, strict=True)
    terms_md: str = Field(default="", max_length=DESCRIPTION_CHARS_MAX)
    # Trials only for organisations an administrator verified (registrations are free, so
    # unverified ones could farm trials). A condition of eligibility, not a term the buyer
    # agrees to, so it is not part of terms_sha256.
    trial_requires_verified_org: bool = Field(default=False, strict=True)

    @model_validator(mode="after")
    def _consistent(self) -> OfferCreate:
        if self.kind == "subscription" and self.term_days is None:
            raise ValueError("a subscription needs term_days")
        if self.kind == "per_inference" and self.royalty_per_1k_minor == 0:
            raise ValueError("a per-inference offer needs royalty_per_1k_minor")
        if self.kind == "per_inference" and self.allow_download:
            # Downloaded weights run outside the sandbox, where no call is metered.
            raise ValueError("a per-inference offer cannot allow_download: its calls are metered")
        if self.kind == "perpetual" and self.term_days is not None:
            raise ValueError("a perpetual licence has no term_days")
        return self


class OfferPublic(RowModel):
    id: int
    listing_id: int
    name: str
    kind: str
    currency: str
    price_minor: int
    royalty_per_1k_minor: int
    trial_calls: int
    trial_days: int
    term_days: int | None
    allow_download: bool
    commercial_use: bool
    trial_requires_verified_org: bool
    terms_md: str
    terms_sha256: str
    active: bool
    retired_at: dt.datetime | None
    created_at: dt.datetime


class OfferList(BaseModel):
    items: list[OfferPublic]


class ListingPublic(BaseModel):
    id: int
    slug: str
    vendor: VendorPublic
    name: str
    summary: str
    description_md: str
    description_html: str
    task: str
    tags: list[str]
    filing_number: str | None
    status: str
    latest_version: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


class PublishedReportPublic(BaseModel):
    """A signed evaluation report of one of the listing's versions, published by its vendor."""

    job_id: int
    version: str
    published_at: dt.datetime
    document: dict[str, Any] = Field(
        description="The signed report (verify with `jishi reports verify` and the journal's "
        "public key from /api/v1/audit/public-keys)"
    )


class ListingDetail(ListingPublic):
    versions: list[VersionPublic]
    offers: list[OfferPublic]
    reports: list[PublishedReportPublic] = Field(default_factory=list)


class ListingPage(BaseModel):
    items: list[ListingPublic]
    total: int
    page: int
    page_size: int


SortKey = Literal["newest", "oldest", "name", "updated"]


class ListingQuery(RequestModel):
    q: str | None = Field(default=None, max_length=200)
    task: str | None = Field(default=None, max_length=64)
    tag: str | None = Field(default=None, max_length=32)
    vendor: int | None = Field(default=None, ge=1)
    sort: SortKey = "newest"
    page: int = Field(default=1, ge=1, le=100_000)
    page_size: int = Field(default=20, ge=1)


class OfferSummary(BaseModel):
    """What a catalog card shows of a listing's active offers."""

    cheapest: OfferPublic | None
    has_trial: bool


class Facets(BaseModel):
    """The values the catalog's filters offer: tasks, tags and vendors of visible listings."""

    tasks: list[str]
    tags: list[str]
    vendors: list[VendorPublic]


class SampleTensor(BaseModel):
    dtype: str
    shape: list[int]


class SamplePublic(BaseModel):
    version: str
    sha256: str
    size_bytes: int
    tensors: dict[str, SampleTensor]
    created_at: dt.datetime
