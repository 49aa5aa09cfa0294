"""Catalog tables: listings (catalog entries), their immutable ONNX versions, and offers.

Tags are stored as one string, lower-cased and wrapped in commas (``,vision,defect,``), so
that an exact tag is ``tags LIKE '%,vision,%'`` and free text is a plain ``LIKE`` on both
SQLite and PostgreSQL without a JSON operator that differs between the two.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from marketplace.canonical import canonical_json, canonical_sha256
from marketplace.db import UTCDateTime, utcnow

LISTING_ACTIVE = "active"
LISTING_SUSPENDED = "suspended"
LISTING_STATUSES = (LISTING_ACTIVE, LISTING_SUSPENDED)

OFFER_KINDS = ("per_inference", "perpetual", "subscription")


def _now_field() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Listing(SQLModel, table=True):
    """A catalog entry owned by a vendor organisation (API path ``/models/{id}``)."""

    __tablename__ = "listings"

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    slug: str = Field(max_length=80, sa_column_kwargs={"unique": True}, nullable=False)
    name: str = Field(max_length=200)
    summary: str = Field(default="", max_length=500)
    description_md: str = Field(default="", sa_type=sa.Text)
    # Rendered from description_md and sanitised; the only HTML ever shown to people.
    description_html: str = Field(default="", sa_type=sa.Text)
    task: str = Field(max_length=64, index=True)
    tags: str = Field(default=",", max_length=1000)
    # The algorithm filing number (算法备案号), when the vendor has one.
    filing_number: str | None = Field(default=None, max_length=64)
    status: str = Field(default=LISTING_ACTIVE, max_length=16)
    created_at: dt.datetime = _now_field()
    updated_at: dt.datetime = _now_field()

    @property
    def tag_list(self) -> list[str]:
        return [t for t in self.tags.split(",") if t]


class ModelVersion(SQLModel, table=True):
    """One immutable ONNX artifact of a listing, bound to its SHA-256."""

    __tablename__ = "model_versions"
    __table_args__ = (sa.UniqueConstraint("listing_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    listing_id: int = Field(foreign_key="listings.id", index=True)
    version: str = Field(max_length=64)
    sha256: str = Field(max_length=64, index=True)
    size_bytes: int = Field(sa_type=sa.BigInteger)
    blob_key: str = Field(max_length=200)
    ir_version: int
    opsets: dict[str, int] = Field(default_factory=dict, sa_type=sa.JSON)
    inputs: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON)
    outputs: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON)
    stats: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    findings: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON)
    revoked_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    created_at: dt.datetime = _now_field()

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class Offer(SQLModel, table=True):
    """Licence terms and a price for a listing; immutable once created, retired not edited."""

    __tablename__ = "offers"

    id: int | None = Field(default=None, primary_key=True)
    listing_id: int = Field(foreign_key="listings.id", index=True)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=16)  # one of OFFER_KINDS
    currency: str = Field(max_length=3)  # ISO 4217, upper case
    price_minor: int = Field(default=0, sa_type=sa.BigInteger)
    royalty_per_1k_minor: int = Field(default=0, sa_type=sa.BigInteger)
    trial_calls: int = Field(default=0)
    trial_days: int = Field(default=0)
    term_days: int | None = Field(default=None)
    allow_download: bool = Field(default=False)
    commercial_use: bool = Field(default=False)
    # Not in TERMS_FIELDS: who may start a trial is not a term the buyer agrees to.
    trial_requires_verified_org: bool = Field(default=False)
    terms_md: str = Field(default="", sa_type=sa.Text)
    terms_sha256: str = Field(max_length=64, index=True)
    retired_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    created_at: dt.datetime = _now_field()

    @property
    def active(self) -> bool:
        return self.retired_at is None


class VersionSample(SQLModel, table=True):
    """A sample input a vendor attached to a version: an npz checked against its signature.

    Kept in the database rather than the blob store: it is small (``sample_bytes_max``), it is
    replaced as a whole, and one transaction then covers the bytes and the row.
    """

    __tablename__ = "version_samples"

    version_id: int = Field(foreign_key="model_versions.id", primary_key=True)
    sha256: str = Field(max_length=64)
    size_bytes: int
    data: bytes = Field(sa_type=sa.LargeBinary, nullable=False)
    # {name: {dtype, shape}} of the tensors inside, for the page that offers the sample.
    tensors: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    created_at: dt.datetime = _now_field()


class PublishedReport(SQLModel, table=True):
    """A signed evaluation report a vendor shows on its listing, with the buyer's consent.

    The document holds the vendor's own version's figures only, signed with the journal's key
    (the competing versions of the job and the buyer's dataset stay private).
    """

    __tablename__ = "published_reports"
    __table_args__ = (sa.UniqueConstraint("listing_id", "job_id"),)

    id: int | None = Field(default=None, primary_key=True)
    listing_id: int = Field(foreign_key="listings.id", index=True)
    version_id: int = Field(foreign_key="model_versions.id")
    job_id: int = Field(foreign_key="evaluation_jobs.id")
    document: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    published_at: dt.datetime = _now_field()


# The fields a buyer agrees to, in the order they are documented; nothing else is hashed.
TERMS_FIELDS = (
    "listing_id",
    "name",
    "kind",
    "currency",
    "price_minor",
    "royalty_per_1k_minor",
    "trial_calls",
    "trial_days",
    "term_days",
    "allow_download",
    "commercial_use",
    "terms_md",
)
TERMS_FORMAT_VERSION = 1


def canonical_terms(offer: Any) -> bytes:
    """The canonical form of an offer's terms, the bytes that ``terms_sha256`` digests.

    A JSON object holding ``"v": 1`` and every field in ``TERMS_FIELDS`` (``term_days`` may be
    null), keys sorted, no insignificant whitespace (separators ``,`` and ``:``), non-ASCII
    characters written as themselves, encoded as UTF-8. Integers are JSON integers, flags are
    ``true``/``false``; ``terms_md`` is hashed exactly as stored (no newline normalisation).
    Works on an ``Offer`` row or any object with the same attributes. This is RFC 8785 for
    these values (ASCII keys, integers below 2**53), so :func:`canonical_json` writes it.
    """
    return canonical_json(_terms_record(offer))


def _terms_record(offer: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"v": TERMS_FORMAT_VERSION}
    for name in TERMS_FIELDS:
        record[name] = getattr(offer, name)
    return record


def terms_sha256(offer: Any) -> str:
    """Hex SHA-256 of :func:`canonical_terms`."""
    return canonical_sha256(_terms_record(offer))
