"""Audit errors with stable codes."""

from __future__ import annotations

from marketplace.errors import NotFound, ServiceUnavailable, ValidationFailed


class RangeInvalid(ValidationFailed, code="range_invalid"):
    """A seq or size range that is negative, reversed or past the sequenced tree (422)."""


class CheckpointNotFound(NotFound, code="checkpoint_not_found"): ...


class ExportsBusy(ServiceUnavailable, code="exports_busy"): ...
