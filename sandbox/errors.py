"""The sandbox's error taxonomy.

Every failure the sandbox reports is a `SandboxError` with a stable `code`. `detail` is safe to
show to a client; `log_detail` may carry raw onnxruntime or kernel text and is for server logs
only. The errors carry no HTTP: the web layer maps each code to its status.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CodedError(Exception):
    """The operation failed."""

    # A library failure with a stable `code` and a client-safe `detail`; the registry's errors
    # share this base. An error is declared in two lines: its code in the class line, and its
    # docstring, the detail a client reads when no other is given:
    #
    #     class BlobNotFound(BlobStoreError, code="blob_not_found"):
    #         """No blob is stored under that key."""
    #
    # (Under `python -OO`, which strips docstrings, details fall back to the base's.)

    code: ClassVar[str] = "error"
    default_detail: ClassVar[str] = "The operation failed."

    def __init_subclass__(cls, *, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if cls.__doc__:
            cls.default_detail = " ".join(cls.__doc__.split())

    def __init__(self, detail: str | None = None, *, log_detail: str | None = None) -> None:
        self.detail = detail or self.default_detail
        self.log_detail = log_detail
        super().__init__(self.detail)


class SandboxError(CodedError, code="sandbox_error"):
    """The sandbox failed."""


class ModelInvalid(SandboxError, code="model_invalid"):
    """The model could not be loaded."""


class InputInvalid(SandboxError, code="input_invalid"):
    """The inputs do not match the model's signature or limits."""


class ResourceExhausted(SandboxError, code="resource_exhausted"):
    """The evaluation exceeded the sandbox's memory or size limits."""


# The outputs exceed the smaller limit a caller asked for (the model itself stayed within).
class OutputTooLarge(ResourceExhausted, code="output_too_large"):
    """The outputs exceed the size limit of this call."""


class DeadlineExceeded(SandboxError, code="deadline_exceeded"):
    """The evaluation did not finish before its deadline."""

    def __init__(
        self,
        detail: str | None = None,
        *,
        log_detail: str | None = None,
        ran_to_deadline: bool = False,
    ) -> None:
        super().__init__(detail, log_detail=log_detail)
        # True when the model itself ran until the deadline (not a slow load or queue): the
        # call used its full share of compute.
        self.ran_to_deadline = ran_to_deadline


class WorkerCrashed(SandboxError, code="worker_crashed"):
    """The sandbox worker crashed while evaluating the model."""


# A temporary refusal; `retry_after_s` feeds the Retry-After header.
class _RetryLater(SandboxError):
    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after_s: float = 1.0,
        log_detail: str | None = None,
    ) -> None:
        super().__init__(detail, log_detail=log_detail)
        self.retry_after_s = retry_after_s


class ModelQuarantined(_RetryLater, code="model_quarantined"):
    """The model failed repeatedly and is quarantined for a while."""


class CallerThrottled(_RetryLater, code="caller_throttled"):
    """Your recent calls of this model ran out of time or crashed its worker; retry later."""


class SandboxUnavailable(SandboxError, code="sandbox_unavailable"):
    """The sandbox is not available."""


class SandboxBusy(_RetryLater, code="sandbox_busy"):
    """The sandbox is busy; retry later."""


_BY_CODE: dict[str, type[SandboxError]] = {
    cls.code: cls
    for cls in (
        ModelInvalid,
        InputInvalid,
        ResourceExhausted,
        DeadlineExceeded,
        WorkerCrashed,
        ModelQuarantined,
        CallerThrottled,
        SandboxUnavailable,
        SandboxBusy,
    )
}


def error_for_code(
    code: str, detail: str | None = None, *, log_detail: str | None = None
) -> SandboxError:
    """Build the error for `code`; an unknown code (from a confused worker) is a crash."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return WorkerCrashed(log_detail=f"unknown error code from worker: {code[:64]!r}")
    return cls(detail, log_detail=log_detail)
