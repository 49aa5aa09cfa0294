"""Errors of the model registry, each with a stable ``code``, declared as in ``sandbox.errors``.

They carry no HTTP and no storage-vendor types; the web layer maps codes to statuses. ``detail``
is safe to show to a client (no host paths, no credentials, no raw server messages).
"""

from __future__ import annotations

from sandbox.errors import CodedError


class RegistryError(CodedError, code="registry_error"):
    """The model registry failed."""


# The blob store failed in a way the caller cannot fix (a server fault).
class BlobStoreError(RegistryError, code="storage_error"):
    """The blob store failed."""


class BlobNotFound(BlobStoreError, code="blob_not_found"):
    """No blob is stored under that key."""


class BlobTooLarge(BlobStoreError, code="blob_too_large"):
    """The body is larger than the limit."""


class InvalidBlobKey(BlobStoreError, code="invalid_blob_key"):
    """The blob key is not valid."""


# The store refused our credentials (wrong key or secret, or no permission).
class StorageAccessDenied(BlobStoreError, code="storage_access_denied"):
    """The blob store refused the credentials."""


class StorageUnavailable(BlobStoreError, code="storage_unavailable"):
    """The blob store cannot be reached."""


class StorageConfigError(BlobStoreError, code="storage_config_invalid"):
    """The storage URL is not valid."""
