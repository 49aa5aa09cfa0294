"""Catalog errors with stable codes (tests assert the codes)."""

from __future__ import annotations

from typing import Any

from marketplace.errors import (
    Conflict,
    DomainError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    ValidationFailed,
)


class ListingNotFound(NotFound, code="model_not_found"): ...


class VersionNotFound(NotFound, code="version_not_found"): ...


class OfferNotFound(NotFound, code="offer_not_found"): ...


class VersionExists(Conflict, code="version_exists"): ...


class OfferRetired(Conflict, code="offer_retired"): ...


class InvalidVersion(ValidationFailed, code="invalid_version"): ...


class NotAVendor(Forbidden, code="not_a_vendor"): ...


class ListingSuspended(Forbidden, code="listing_suspended"): ...


class VersionRevoked(DomainError, code="version_revoked"): ...


class DownloadNotAllowed(Forbidden, code="download_not_allowed"): ...


class UnsupportedMediaType(DomainError, code="unsupported_media_type"): ...


class ModelTooLarge(PayloadTooLarge, code="model_too_large"): ...


class ContentDigestMismatch(DomainError, code="digest_mismatch"): ...


class InvalidContentDigest(DomainError, code="invalid_digest"): ...


class ModelRejected(DomainError, code="model_rejected"):
    """The inspection refused the model; ``findings`` says why."""

    def __init__(self, detail: str, *, findings: list[dict[str, Any]]) -> None:
        super().__init__(detail, extra={"findings": findings})


class InspectionUnavailable(ServiceUnavailable, code="inspection_unavailable"): ...


class InspectionBusy(ServiceUnavailable, code="inspection_busy"): ...


class StorageUnavailable(ServiceUnavailable, code="storage_unavailable"): ...


class SampleInvalid(ValidationFailed, code="sample_invalid"): ...


class SampleNotFound(NotFound, code="sample_not_found"): ...


class SampleTooLarge(PayloadTooLarge, code="sample_too_large"): ...
