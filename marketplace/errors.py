"""One error hierarchy with stable codes, rendered as RFC 9457 problem+json under ``/api``.

Services raise :class:`DomainError` subclasses; they never know about HTTP beyond the status
number carried here. Tests assert the ``code``, never the message.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

log = logging.getLogger(__name__)

PROBLEM_MIME = "application/problem+json"


class DomainError(Exception):
    """An expected failure with a stable machine-readable ``code``."""

    code = "error"
    status = 400
    title = "Request failed"

    def __init__(
        self,
        detail: str = "",
        *,
        code: str | None = None,
        status: int | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = extra or {}
        self.headers = headers or {}


class ValidationFailed(DomainError):
    code = "validation_failed"
    status = 422
    title = "The request is not valid"

    def __init__(self, detail: str = "", *, errors: list[dict[str, str]] | None = None, **kw: Any):
        super().__init__(detail, **kw)
        if errors is not None:
            self.extra["errors"] = errors


class Unauthorized(DomainError):
    code = "unauthorized"
    status = 401
    title = "Authentication required"


class Forbidden(DomainError):
    code = "forbidden"
    status = 403
    title = "Not allowed"


class NotFound(DomainError):
    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(DomainError):
    code = "conflict"
    status = 409
    title = "Conflict"


class PaymentRequired(DomainError):
    code = "payment_required"
    status = 402
    title = "Insufficient funds"


class PayloadTooLarge(DomainError):
    code = "payload_too_large"
    status = 413
    title = "Payload too large"


class ServiceUnavailable(DomainError):
    code = "service_unavailable"
    status = 503
    title = "Service unavailable"


def problem_response(
    status: int,
    code: str,
    detail: str,
    title: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": title or code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
    }
    body.update(extra or {})
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIME)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


# Stable codes for the HTTP errors Werkzeug raises before our code runs.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def _wants_problem() -> bool:
    return request.path.startswith("/api")


def init_app(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError) -> Response:
        if not _wants_problem():
            return Response(exc.detail, status=exc.status, mimetype="text/plain")
        return problem_response(exc.status, exc.code, exc.detail, exc.title, exc.extra, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | BaseResponse:
        status = exc.code or 500
        if not _wants_problem():
            return exc.get_response()
        headers = {}
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # type: ignore[attr-defined]
        # Werkzeug's own descriptions are generic and carry no host detail.
        return problem_response(
            status,
            _HTTP_CODES.get(status, "http_error"),
            exc.description or exc.name,
            exc.name,
            headers=headers,
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The full traceback goes to the server log only; the client gets an opaque id-free 500.
        log.exception("unhandled error on %s %s", request.method, request.path)
        if not _wants_problem():
            return Response("Internal server error", status=500, mimetype="text/plain")
        return problem_response(
            500, "internal_error", "The server could not complete the request.", "Internal error"
        )
