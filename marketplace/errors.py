"""One error hierarchy with stable codes, rendered as RFC 9457 problem+json under ``/api``.

Services raise :class:`DomainError` subclasses; they never know about HTTP beyond the status
number carried here. Tests assert the ``code``, never the message.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, UnprocessableEntity
from werkzeug.wrappers import Response as BaseResponse

from marketplace.db import is_lock_timeout

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


class IntegerOutOfRange(ValidationFailed):
    code = "integer_out_of_range"
    title = "An integer is out of range"


class RoutingIntegerOutOfRange(UnprocessableEntity):
    """Raised by the URL converter while matching, where only HTTP exceptions may be raised."""

    problem_code = IntegerOutOfRange.code
    description = "An id in the path is out of range."


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


class DatabaseBusy(ServiceUnavailable):
    code = "database_busy"
    title = "The database is busy"


def _subclasses(cls: type[DomainError]) -> list[type[DomainError]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def problem_title(code: str) -> str:
    """The one title of ``code``: the title of the error class that owns the code, else the
    code in words; the same for every route and every raise site."""
    for cls in _subclasses(DomainError):
        if cls.__dict__.get("code") == code and "title" in cls.__dict__:
            return str(cls.title)
    return code.replace("_", " ").capitalize()


def problem_response(
    status: int,
    code: str,
    detail: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": problem_title(code),
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
            return Response(
                exc.detail, status=exc.status, mimetype="text/plain", headers=exc.headers
            )
        return problem_response(exc.status, exc.code, exc.detail, exc.extra, exc.headers)

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
            getattr(exc, "problem_code", None) or _HTTP_CODES.get(status, "http_error"),
            exc.description or exc.name,
            headers=headers,
        )

    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError) -> Response:
        # One place turns "the database stayed locked" into 503 with Retry-After, whichever
        # service met it: SQLite past its busy timeout, PostgreSQL past lock_timeout or out of
        # retries on a serialization failure. Anything else from the database is a 500.
        if not is_lock_timeout(exc):
            return _unexpected(exc)
        log.warning("database busy on %s %s: %s", request.method, request.path, exc.orig)
        busy = DatabaseBusy(
            "The database is busy; try again shortly.", headers={"Retry-After": "1"}
        )
        return _domain_error(busy)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The full traceback goes to the server log only; the client gets an opaque id-free 500.
        log.exception("unhandled error on %s %s", request.method, request.path)
        if not _wants_problem():
            return Response("Internal server error", status=500, mimetype="text/plain")
        return problem_response(500, "internal_error", "The server could not complete the request.")
