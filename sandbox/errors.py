"""The sandbox's error taxonomy.

Every failure the sandbox reports is a `SandboxError` with a stable `code`. `detail` is safe to
show to a client; `log_detail` may carry raw onnxruntime or kernel text and is for server logs
only. The errors carry no HTTP: the web layer maps each code to its status.
"""

from __future__ import annotations

from typing import ClassVar


class SandboxError(Exception):
    """Base of all sandbox failures; `code` is stable, `detail` is client-safe."""

    code: ClassVar[str] = "sandbox_error"
    default_detail: ClassVar[str] = "The sandbox failed."

    def __init__(self, detail: str | None = None, *, log_detail: str | None = None) -> None:
        self.detail = detail or self.default_detail
        self.log_detail = log_detail
        super().__init__(self.detail)


class ModelInvalid(SandboxError):
    code = "model_invalid"
    default_detail = "The model could not be loaded."


class InputInvalid(SandboxError):
    code = "input_invalid"
    default_detail = "The inputs do not match the model's signature or limits."


class ResourceExhausted(SandboxError):
    code = "resource_exhausted"
    default_detail = "The evaluation exceeded the sandbox's memory or size limits."


class OutputTooLarge(ResourceExhausted):
    """The outputs exceed the smaller limit a caller asked for (the model itself stayed within)."""

    code = "output_too_large"
    default_detail = "The outputs exceed the size limit of this call."


class DeadlineExceeded(SandboxError):
    code = "deadline_exceeded"
    default_detail = "The evaluation did not finish before its deadline."

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


class WorkerCrashed(SandboxError):
    code = "worker_crashed"
    default_detail = "The sandbox worker crashed while evaluating the model."


class _RetryLater(SandboxError):
    """A temporary refusal; `retry_after_s` feeds the Retry-After header."""

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after_s: float = 1.0,
        log_detail: str | None = None,
    ) -> None:
        super().__init__(detail, log_detail=log_detail)
        self.retry_after_s = retry_after_s


class ModelQuarantined(_RetryLater):
    code = "model_quarantined"
    default_detail = "The model failed repeatedly and is quarantined for a while."


class CallerThrottled(_RetryLater):
    code = "caller_throttled"
    default_detail = (
        "Your recent calls of this model ran out of time or crashed its worker; retry later."
    )


class SandboxUnavailable(SandboxError):
    code = "sandbox_unavailable"
    default_detail = "The sandbox is not available."


class SandboxBusy(_RetryLater):
    code = "sandbox_busy"
    default_detail = "The sandbox is busy; retry later."


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
