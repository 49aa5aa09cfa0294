"""One error hierarchy with stable codes, rendered as RFC 9457 problem+json under ``/api``.

Services raise :class:`DomainError` subclasses by code; :data:`ERROR_TABLE` alone decides each
code's HTTP status and title. :func:`library_problem` is the one translation of the libraries'
errors (``SandboxError``, ``RegistryError``), which know no HTTP. Tests assert the ``code``, never
the message.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from flask import Flask, Response, json, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, UnprocessableEntity
from werkzeug.wrappers import Response as BaseResponse

from marketplace.db import is_lock_timeout

if TYPE_CHECKING:
    from model_registry.errors import RegistryError
    from sandbox.errors import SandboxError

log = logging.getLogger(__name__)

PROBLEM_MIME = "application/problem+json"


class ErrorKind(NamedTuple):
    status: int
    title: str


# One table decides, for every stable code, the HTTP status and the problem title (as MLflow's
# ERROR_CODE_TO_HTTP_STATUS): errors are raised by code and never choose a status where they are
# raised. tests/marketplace/core/test_errors.py asserts each row once.
ERROR_TABLE: dict[str, ErrorKind] = {
    # generic, also what Werkzeug raises before our code runs
    "error": ErrorKind(400, "Request failed"),
    "bad_request": ErrorKind(400, "Bad request"),
    "unauthorized": ErrorKind(401, "Authentication required"),
    "forbidden": ErrorKind(403, "Not allowed"),
    "not_found": ErrorKind(404, "Not found"),
    "method_not_allowed": ErrorKind(405, "Method not allowed"),
    "not_acceptable": ErrorKind(406, "Not acceptable"),
    "conflict": ErrorKind(409, "Conflict"),
    "length_required": ErrorKind(411, "Length required"),
    "uri_too_long": ErrorKind(414, "The request line is too long"),
    "header_fields_too_large": ErrorKind(431, "The request headers are too large"),
    "payment_required": ErrorKind(402, "Insufficient funds"),
    "payload_too_large": ErrorKind(413, "Payload too large"),
    "unsupported_media_type": ErrorKind(415, "Unsupported media type"),
    "validation_failed": ErrorKind(422, "The request is not valid"),
    "integer_out_of_range": ErrorKind(422, "An integer is out of range"),
    "too_many_requests": ErrorKind(429, "Too many requests"),
    "internal_error": ErrorKind(500, "Internal error"),
    "http_error": ErrorKind(500, "HTTP error"),
    "service_unavailable": ErrorKind(503, "Service unavailable"),
    "database_busy": ErrorKind(503, "The database is busy"),
    # the request itself
    "body_not_object": ErrorKind(422, "The body is not a JSON object"),
    "malformed_json": ErrorKind(422, "The body is not valid JSON"),
    "idempotency_key_required": ErrorKind(400, "An Idempotency-Key header is required"),
    "idempotency_key_reused": ErrorKind(409, "Idempotency key reused"),
    "invalid_date": ErrorKind(422, "The date is not valid"),
    "csrf_failed": ErrorKind(400, "The form is stale or forged"),
    "digest_mismatch": ErrorKind(400, "The body does not match its Content-Digest"),
    "invalid_digest": ErrorKind(400, "The Content-Digest header is not valid"),
    # accounts and OAuth
    "invalid_credentials": ErrorKind(401, "The credentials are wrong"),
    "invalid_token": ErrorKind(401, "The access token is not valid"),
    "missing_token": ErrorKind(401, "An access token is required"),
    "session_expired": ErrorKind(401, "The session has expired"),
    "insufficient_scope": ErrorKind(403, "The token lacks a scope"),
    "scope_not_allowed": ErrorKind(403, "The scope is not allowed"),
    "no_organization": ErrorKind(403, "The user belongs to no organisation"),
    "organization_suspended": ErrorKind(403, "The organisation is suspended"),
    "organization_not_verified": ErrorKind(403, "The organisation is not verified"),
    "organization_not_found": ErrorKind(404, "No such organisation"),
    "client_not_found": ErrorKind(404, "No such client"),
    "client_revoked": ErrorKind(409, "The client is revoked"),
    "email_taken": ErrorKind(409, "The e-mail address is taken"),
    "last_manager_client": ErrorKind(409, "The last managing client cannot be removed"),
    "invalid_role": ErrorKind(422, "The role is not valid"),
    "no_scopes": ErrorKind(422, "No scopes were asked for"),
    "too_many_registrations": ErrorKind(429, "Too many registrations from this address"),
    "registration_busy": ErrorKind(503, "Too many registrations at once"),
    # catalog
    "not_a_vendor": ErrorKind(403, "Only vendor organisations may do this"),
    "listing_suspended": ErrorKind(403, "The model is suspended"),
    "download_not_allowed": ErrorKind(403, "No licence allows downloading this artifact"),
    "model_not_found": ErrorKind(404, "No such model"),
    "version_not_found": ErrorKind(404, "No such version"),
    "offer_not_found": ErrorKind(404, "No such offer"),
    "sample_not_found": ErrorKind(404, "The version has no sample input"),
    "slug_taken": ErrorKind(409, "No free slug for that name"),
    "version_exists": ErrorKind(409, "The version exists"),
    "offer_retired": ErrorKind(409, "The offer is retired"),
    "version_revoked": ErrorKind(410, "The version has been revoked"),
    "model_too_large": ErrorKind(413, "The model is too large"),
    "sample_too_large": ErrorKind(413, "The sample input is too large"),
    "unknown_currency": ErrorKind(422, "The currency is not supported"),
    "invalid_version": ErrorKind(422, "The version is not semantic versioning"),
    "model_rejected": ErrorKind(422, "The model was rejected"),
    "sample_invalid": ErrorKind(422, "The sample input does not match the version's signature"),
    "inspection_busy": ErrorKind(503, "Too many models are being inspected"),
    "inspection_unavailable": ErrorKind(503, "Model inspection is unavailable"),
    "storage_unavailable": ErrorKind(503, "The model store is unavailable"),
    # licensing and metering
    "no_entitlement": ErrorKind(403, "No licence or trial covers this call"),
    "license_inactive": ErrorKind(403, "The licence is not active"),
    "license_not_found": ErrorKind(404, "No such licence"),
    "order_not_found": ErrorKind(404, "No such order"),
    "own_offer": ErrorKind(409, "An organisation cannot license its own offer"),
    "terms_mismatch": ErrorKind(409, "The offer's terms have changed"),
    "no_trial": ErrorKind(409, "The offer has no trial"),
    "trial_taken": ErrorKind(409, "The trial was taken"),
    "already_licensed": ErrorKind(409, "Already licensed"),
    "refund_exceeds_order": ErrorKind(409, "The refund exceeds the order"),
    "offer_invalid": ErrorKind(422, "The offer is not valid"),
    # evaluation and the sandbox. resource_exhausted is 422: the model or its inputs ask for more
    # than the limits allow, a property of the request, not a server fault. Quarantine and
    # saturation are temporary, so 503 with Retry-After; a throttled caller is told to slow down.
    "input_invalid": ErrorKind(422, "The inputs do not match the model"),
    "input_too_large": ErrorKind(422, "The inputs exceed the limits of a call"),
    "model_invalid": ErrorKind(422, "The model could not be loaded"),
    "resource_exhausted": ErrorKind(422, "The evaluation exceeded the limits"),
    "output_too_large": ErrorKind(422, "The outputs exceed the limit of this call"),
    "json_output_too_large": ErrorKind(422, "The outputs are too large for JSON"),
    "caller_throttled": ErrorKind(429, "Too many failed calls; retry later"),
    "worker_crashed": ErrorKind(502, "The sandbox worker crashed"),
    "model_quarantined": ErrorKind(503, "The model is quarantined"),
    "sandbox_unavailable": ErrorKind(503, "The sandbox is not available"),
    "sandbox_busy": ErrorKind(503, "The sandbox is busy"),
    "sandbox_error": ErrorKind(500, "The sandbox failed"),
    "evaluation_busy": ErrorKind(503, "Too many evaluations at once"),
    "deadline_exceeded": ErrorKind(504, "The evaluation ran out of time"),
    # evaluation jobs and their datasets
    "trial_calls_insufficient": ErrorKind(403, "The trial has fewer calls than the job needs"),
    "no_publish_consent": ErrorKind(403, "The buyer has not consented to publication"),
    "dataset_not_found": ErrorKind(404, "No such dataset"),
    "job_not_found": ErrorKind(404, "No such evaluation job"),
    "job_version_not_found": ErrorKind(404, "The job has no such version"),
    "dataset_in_use": ErrorKind(409, "A running job uses the dataset"),
    "job_finished": ErrorKind(409, "The job has finished"),
    "job_not_finished": ErrorKind(409, "The job has not finished"),
    "report_published": ErrorKind(409, "The report is published already"),
    "results_not_stackable": ErrorKind(409, "The outputs differ in shape between chunks"),
    "dataset_too_large": ErrorKind(413, "The dataset is too large"),
    "results_too_large": ErrorKind(413, "The results are too large to download"),
    "dataset_invalid": ErrorKind(422, "The dataset is not valid"),
    "dataset_mismatch": ErrorKind(422, "The dataset does not fit the model version"),
    "metric_not_applicable": ErrorKind(422, "The metric does not fit the outputs"),
    "too_many_datasets": ErrorKind(429, "Too many datasets"),
    "too_many_jobs": ErrorKind(429, "Too many running evaluation jobs"),
    # ledger
    "insufficient_funds": ErrorKind(402, "Insufficient funds"),
    "limit_exceeded": ErrorKind(409, "An account limit refuses the transaction"),
    "pending_resolved": ErrorKind(409, "The hold is already resolved"),
    "already_reversed": ErrorKind(409, "The transaction was already reversed"),
    "invalid_transaction": ErrorKind(422, "Invalid ledger transaction"),
    "unbalanced": ErrorKind(422, "Debits and credits differ"),
    "currency_mismatch": ErrorKind(422, "The legs are in different currencies"),
    "exceeds_hold": ErrorKind(422, "The post exceeds the hold"),
    "transaction_not_found": ErrorKind(422, "No such transaction"),
    "reverse_pending": ErrorKind(422, "A hold is voided, not reversed"),
    "reverse_void": ErrorKind(422, "A void has nothing to reverse"),
    # payments
    "top_up_not_found": ErrorKind(404, "No such top-up"),
    "withdrawal_not_found": ErrorKind(404, "No such withdrawal"),
    "outbox_not_found": ErrorKind(404, "No such outbox message"),
    "payout_account_not_found": ErrorKind(404, "No payout account"),
    "webhook_unavailable": ErrorKind(404, "Stripe payments are not configured"),
    "payment_refused": ErrorKind(409, "Refused by the payment provider"),
    "payment_provider_conflict": ErrorKind(409, "Payment provider conflict"),
    "payout_account_inactive": ErrorKind(409, "The payout account cannot receive transfers"),
    "payout_account_unknown": ErrorKind(409, "The payment provider knows no such account"),
    "simulated": ErrorKind(409, "Simulated payments have no provider state"),
    "too_many_open_top_ups": ErrorKind(409, "Too many open top-ups"),
    "outbox_not_failed": ErrorKind(409, "The outbox message has not failed"),
    "withdrawal_exceeds_refundable": ErrorKind(
        409, "The withdrawal exceeds the refundable balance"
    ),
    "withdrawal_unavailable": ErrorKind(409, "Withdrawals are unavailable"),
    "signature_invalid": ErrorKind(400, "Webhook signature invalid"),
    "signature_stale": ErrorKind(400, "Webhook signature too old"),
    "top_up_too_large": ErrorKind(422, "The top-up is too large"),
    "payment_provider_unavailable": ErrorKind(503, "Payment provider unavailable"),
    # audit
    "checkpoint_not_found": ErrorKind(404, "No such checkpoint"),
    "range_invalid": ErrorKind(422, "The range is not valid"),
    "range_negative": ErrorKind(422, "The range is negative"),
    "range_reversed": ErrorKind(422, "The range is reversed"),
    "range_empty": ErrorKind(422, "The range is empty"),
    "range_beyond_tree": ErrorKind(422, "The range is beyond the tree"),
    "format_invalid": ErrorKind(422, "The format is not known"),
    "exports_busy": ErrorKind(503, "Too many exports at once"),
}

ERROR_CODE_TO_HTTP_STATUS: dict[str, int] = {
    code: kind.status for code, kind in ERROR_TABLE.items()
}


def error_kind(code: str, cls: type[Exception] | None = None) -> ErrorKind:
    """The status and title of ``code``; an unlisted code takes its nearest listed class's row."""
    kind = ERROR_TABLE.get(code)
    if kind is not None:
        return kind
    for base in (cls or DomainError).__mro__:
        kind = ERROR_TABLE.get(getattr(base, "code", ""))
        if kind is not None:
            return kind
    return ERROR_TABLE["error"]


class DomainError(Exception):
    """An expected failure with a stable machine-readable ``code``."""

    code = "error"

    def __init_subclass__(cls, *, code: str | None = None, **kwargs: Any) -> None:
        # Each error is declared in its class line, `class OfferNotFound(NotFound,
        # code="offer_not_found")`; ERROR_TABLE gives the code its status and title.
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code

    def __init__(
        self,
        detail: str = "",
        *,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        self.status, self.title = error_kind(self.code, type(self))
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra or {}
        self.headers = headers or {}


class ValidationFailed(DomainError, code="validation_failed"):
    def __init__(self, detail: str = "", *, errors: list[dict[str, str]] | None = None, **kw: Any):
        super().__init__(detail, **kw)
        if errors is not None:
            self.extra["errors"] = errors


class IntegerOutOfRange(ValidationFailed, code="integer_out_of_range"): ...


class RoutingIntegerOutOfRange(UnprocessableEntity):
    """Raised by the URL converter while matching, where only HTTP exceptions may be raised."""

    problem_code = IntegerOutOfRange.code
    description = "An id in the path is out of range."


class Unauthorized(DomainError, code="unauthorized"): ...


class Forbidden(DomainError, code="forbidden"): ...


class NotFound(DomainError, code="not_found"): ...


class Conflict(DomainError, code="conflict"): ...


class PaymentRequired(DomainError, code="payment_required"): ...


class PayloadTooLarge(DomainError, code="payload_too_large"): ...


class ServiceUnavailable(DomainError, code="service_unavailable"): ...


class DatabaseBusy(ServiceUnavailable, code="database_busy"): ...


def library_problem(exc: SandboxError | RegistryError) -> DomainError:
    """A sandbox or registry failure as a client-visible problem; raw detail stays in the log.

    The code is kept where the table lists it (the sandbox's codes); any other failure of the
    model store is the store being unavailable, which the client can only retry.
    """
    if exc.log_detail:
        log.warning("%s %s: %s", type(exc).__module__, exc.code, exc.log_detail)
    headers = {}
    retry_after_s = getattr(exc, "retry_after_s", None)
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(retry_after_s)))
    if exc.code in ERROR_TABLE:
        return DomainError(exc.detail, code=exc.code, headers=headers)
    return DomainError("The model store is unavailable; retry later.", code="storage_unavailable")


def problem_title(code: str) -> str:
    """The one title of ``code`` (from :data:`ERROR_TABLE`), the same for every route and raise."""
    return error_kind(code).title


def problem_body(status: int, code: str, detail: str) -> dict[str, Any]:
    """An RFC 9457 problem's members, as every error under ``/api`` answers them."""
    return {
        "type": f"/problems/{code}",
        "title": problem_title(code),
        "status": status,
        "detail": detail,
        "code": code,
    }


def problem_response(
    status: int,
    code: str,
    detail: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {**problem_body(status, code, detail), **(extra or {})}
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
        code = getattr(exc, "problem_code", None) or _HTTP_CODES.get(status, "http_error")
        return problem_response(status, code, exc.description or exc.name, headers=headers)

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
