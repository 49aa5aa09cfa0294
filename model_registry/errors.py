"""Errors of the model registry, each with a stable ``code``.

They carry no HTTP and no storage-vendor types; the web layer maps codes to statuses. ``detail``
is safe to show to a client (no host paths, no credentials, no raw server messages).
"""

from __future__ import annotations

from typing import ClassVar


class RegistryError(Exception):
    """Base of all registry failures."""

    code: ClassVar[str] = "registry_error"
    default_detail: ClassVar[str] = "The model registry failed."

    def __init__(self, detail: str | None = None, *, log_detail: str | None = None) -> None:
        self.detail = detail or self.default_detail
        self.log_detail = log_detail
        super().__init__(self.detail)


class BlobStoreError(RegistryError):
    """The blob store failed in a way the caller cannot fix (a server fault)."""

    code = "storage_error"
    default_detail = "The blob store failed."


class BlobNotFound(BlobStoreError):
    code = "blob_not_found"
    default_detail = "No blob is stored under that key."


class BlobTooLarge(BlobStoreError):
    code = "blob_too_large"
    default_detail = "The body is larger than the limit."


class InvalidBlobKey(BlobStoreError):
    code = "invalid_blob_key"
    default_detail = "The blob key is not valid."


class StorageAccessDenied(BlobStoreError):
    """The store refused our credentials (wrong key or secret, or no permission)."""

    code = "storage_access_denied"
    default_detail = "The blob store refused the credentials."


class StorageUnavailable(BlobStoreError):
    code = "storage_unavailable"
    default_detail = "The blob store cannot be reached."


class StorageConfigError(BlobStoreError):
    code = "storage_config_invalid"
    default_detail = "The storage URL is not valid."
