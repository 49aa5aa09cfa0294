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


class ListingNotFound(NotFound):
    code = "model_not_found"
    title = "No such model"


class VersionNotFound(NotFound):
    code = "version_not_found"
    title = "No such version"


class OfferNotFound(NotFound):
    code = "offer_not_found"
    title = "No such offer"


class VersionExists(Conflict):
    code = "version_exists"
    title = "The version exists"


class OfferRetired(Conflict):
    code = "offer_retired"
    title = "The offer is retired"


class UnknownCurrency(ValidationFailed):
    code = "unknown_currency"
    title = "The currency is not supported"


class InvalidVersion(ValidationFailed):
    code = "invalid_version"
    title = "The version is not semantic versioning"


class NotAVendor(Forbidden):
    code = "not_a_vendor"
    title = "Only vendor organisations may do this"


class ListingSuspended(Forbidden):
    code = "listing_suspended"
    title = "The model is suspended"


class VersionRevoked(DomainError):
    code = "version_revoked"
    status = 410
    title = "The version has been revoked"


class DownloadNotAllowed(Forbidden):
    code = "download_not_allowed"
    title = "No licence allows downloading this artifact"


class UnsupportedMediaType(DomainError):
    code = "unsupported_media_type"
    status = 415
    title = "Unsupported media type"


class ModelTooLarge(PayloadTooLarge):
    code = "model_too_large"
    title = "The model is too large"


class ContentDigestMismatch(DomainError):
    code = "digest_mismatch"
    status = 400
    title = "The body does not match its Content-Digest"


class InvalidContentDigest(DomainError):
    code = "invalid_digest"
    status = 400
    title = "The Content-Digest header is not valid"


class ModelRejected(DomainError):
    """The inspection refused the model; ``findings`` says why."""

    code = "model_rejected"
    status = 422
    title = "The model was rejected"

    def __init__(self, detail: str, *, findings: list[dict[str, Any]]) -> None:
        super().__init__(detail, extra={"findings": findings})


class InspectionUnavailable(ServiceUnavailable):
    code = "inspection_unavailable"
    title = "Model inspection is unavailable"


class InspectionBusy(ServiceUnavailable):
    code = "inspection_busy"
    title = "Too many models are being inspected"


class StorageUnavailable(ServiceUnavailable):
    code = "storage_unavailable"
    title = "The model store is unavailable"
