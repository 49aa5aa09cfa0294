"""The one table from error code to HTTP status: every code once, every raised code listed."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import marketplace
import sandbox.errors
from marketplace.catalog.errors import ListingSuspended, VersionRevoked
from marketplace.errors import (
    ERROR_CODE_TO_HTTP_STATUS,
    ERROR_TABLE,
    Conflict,
    DomainError,
    error_kind,
    library_problem,
)
from model_registry.errors import BlobNotFound, StorageAccessDenied
from model_registry.upload import DigestMismatch
from sandbox.errors import ModelQuarantined, SandboxError, WorkerCrashed

# Each code's status, asserted here once; a change of status is a change of this line.
EXPECTED_STATUS = {
    # 400
    "csrf_failed": 400,
    "bad_request": 400,
    "digest_mismatch": 400,
    "error": 400,
    "idempotency_key_required": 400,
    "invalid_digest": 400,
    "signature_invalid": 400,
    "signature_stale": 400,
    # 401
    "invalid_credentials": 401,
    "invalid_token": 401,
    "missing_token": 401,
    "session_expired": 401,
    "unauthorized": 401,
    # 402
    "insufficient_funds": 402,
    "payment_required": 402,
    # 403
    "no_publish_consent": 403,
    "trial_calls_insufficient": 403,
    "download_not_allowed": 403,
    "forbidden": 403,
    "insufficient_scope": 403,
    "license_inactive": 403,
    "listing_suspended": 403,
    "no_entitlement": 403,
    "no_organization": 403,
    "not_a_vendor": 403,
    "organization_not_verified": 403,
    "organization_suspended": 403,
    "scope_not_allowed": 403,
    # 404
    "dataset_not_found": 404,
    "job_not_found": 404,
    "job_version_not_found": 404,
    "checkpoint_not_found": 404,
    "client_not_found": 404,
    "license_not_found": 404,
    "model_not_found": 404,
    "not_found": 404,
    "offer_not_found": 404,
    "order_not_found": 404,
    "organization_not_found": 404,
    "outbox_not_found": 404,
    "payout_account_not_found": 404,
    "sample_not_found": 404,
    "top_up_not_found": 404,
    "version_not_found": 404,
    "webhook_unavailable": 404,
    "withdrawal_not_found": 404,
    # 405
    "method_not_allowed": 405,
    # 406
    "not_acceptable": 406,
    # 409
    "dataset_in_use": 409,
    "job_finished": 409,
    "job_not_finished": 409,
    "report_published": 409,
    "results_not_stackable": 409,
    "already_licensed": 409,
    "already_reversed": 409,
    "client_revoked": 409,
    "conflict": 409,
    "email_taken": 409,
    "idempotency_key_reused": 409,
    "last_manager_client": 409,
    "limit_exceeded": 409,
    "no_trial": 409,
    "offer_retired": 409,
    "outbox_not_failed": 409,
    "own_offer": 409,
    "payment_provider_conflict": 409,
    "payment_refused": 409,
    "payout_account_inactive": 409,
    "payout_account_unknown": 409,
    "pending_resolved": 409,
    "refund_exceeds_order": 409,
    "simulated": 409,
    "slug_taken": 409,
    "terms_mismatch": 409,
    "too_many_open_top_ups": 409,
    "trial_taken": 409,
    "version_exists": 409,
    "withdrawal_exceeds_refundable": 409,
    "withdrawal_unavailable": 409,
    # 410
    "version_revoked": 410,
    # 411
    "length_required": 411,
    "uri_too_long": 414,
    "header_fields_too_large": 431,
    # 413
    "dataset_too_large": 413,
    "results_too_large": 413,
    "model_too_large": 413,
    "payload_too_large": 413,
    "sample_too_large": 413,
    # 415
    "unsupported_media_type": 415,
    # 422
    "dataset_invalid": 422,
    "dataset_mismatch": 422,
    "metric_not_applicable": 422,
    "body_not_object": 422,
    "currency_mismatch": 422,
    "exceeds_hold": 422,
    "format_invalid": 422,
    "input_invalid": 422,
    "input_too_large": 422,
    "integer_out_of_range": 422,
    "invalid_date": 422,
    "invalid_role": 422,
    "invalid_transaction": 422,
    "invalid_version": 422,
    "json_output_too_large": 422,
    "malformed_json": 422,
    "model_invalid": 422,
    "model_rejected": 422,
    "no_scopes": 422,
    "offer_invalid": 422,
    "output_too_large": 422,
    "range_beyond_tree": 422,
    "range_empty": 422,
    "range_invalid": 422,
    "range_negative": 422,
    "range_reversed": 422,
    "resource_exhausted": 422,
    "reverse_pending": 422,
    "reverse_void": 422,
    "sample_invalid": 422,
    "top_up_too_large": 422,
    "transaction_not_found": 422,
    "unbalanced": 422,
    "unknown_currency": 422,
    "validation_failed": 422,
    # 429
    "too_many_datasets": 429,
    "too_many_jobs": 429,
    "caller_throttled": 429,
    "too_many_registrations": 429,
    "too_many_requests": 429,
    # 500
    "http_error": 500,
    "internal_error": 500,
    "sandbox_error": 500,
    # 502
    "worker_crashed": 502,
    # 503
    "database_busy": 503,
    "evaluation_busy": 503,
    "exports_busy": 503,
    "inspection_busy": 503,
    "inspection_unavailable": 503,
    "model_quarantined": 503,
    "payment_provider_unavailable": 503,
    "registration_busy": 503,
    "sandbox_busy": 503,
    "sandbox_unavailable": 503,
    "service_unavailable": 503,
    "storage_unavailable": 503,
    # 504
    "deadline_exceeded": 504,
}


def test_each_code_has_the_status_it_is_documented_with() -> None:
    assert ERROR_CODE_TO_HTTP_STATUS == EXPECTED_STATUS


def test_every_code_has_a_title_of_its_own() -> None:
    titles = [kind.title for kind in ERROR_TABLE.values()]
    assert all(titles)
    assert len(set(titles)) == len(titles) - _shared_titles(), sorted(titles)


def _shared_titles() -> int:
    # payment_required and insufficient_funds are one condition under two codes.
    return 1


def _raised_codes() -> dict[str, str]:
    """Every code a DomainError subclass declares or a raise site passes, with where it is."""
    codes: dict[str, str] = {}
    root = Path(marketplace.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    value = kw.value
                    if kw.arg == "code" and isinstance(value, ast.Constant):
                        if not isinstance(value.value, str):
                            continue  # redirect(code=302)
                        codes.setdefault(value.value, f"{path}:{node.lineno}")
            if isinstance(node, ast.ClassDef):
                # class OfferNotFound(NotFound, code="offer_not_found"): ...
                for kw in node.keywords:
                    if kw.arg == "code" and isinstance(kw.value, ast.Constant):
                        codes.setdefault(str(kw.value.value), f"{path}:{node.lineno}")
                for stmt in node.body:
                    if (
                        isinstance(stmt, ast.Assign)
                        and [getattr(t, "id", None) for t in stmt.targets] == ["code"]
                        and isinstance(stmt.value, ast.Constant)
                    ):
                        codes.setdefault(str(stmt.value.value), f"{path}:{stmt.lineno}")
    return codes


def test_every_code_the_marketplace_raises_is_in_the_table() -> None:
    # render_template(..., code=...) on the HTML error page passes codes too; they are listed.
    missing = {c: where for c, where in _raised_codes().items() if c not in ERROR_TABLE}
    assert missing == {}


def test_every_sandbox_code_is_in_the_table() -> None:
    classes = [
        obj
        for obj in vars(sandbox.errors).values()
        if inspect.isclass(obj) and issubclass(obj, SandboxError)
    ]
    assert len(classes) >= 10
    assert {cls.code for cls in classes} - set(ERROR_TABLE) == set()


def test_a_domain_error_takes_status_and_title_from_the_table() -> None:
    revoked = VersionRevoked("gone")
    assert (revoked.status, revoked.title) == (410, "The version has been revoked")
    coded = Conflict("x", code="listing_suspended")
    assert (coded.status, coded.code) == (403, "listing_suspended")
    assert ListingSuspended().status == 403
    assert ListingSuspended().detail == "The model is suspended"


def test_an_unlisted_code_takes_its_class_row() -> None:
    assert error_kind("no_such_code_anywhere", Conflict).status == 409
    assert DomainError("x", code="no_such_code_anywhere").status == 400


@pytest.mark.parametrize(
    ("exc", "code", "status"),
    [
        (WorkerCrashed(log_detail="segfault at 0x0"), "worker_crashed", 502),
        (ModelQuarantined(retry_after_s=7.4), "model_quarantined", 503),
        (DigestMismatch(), "digest_mismatch", 400),
        (BlobNotFound(log_detail="bucket/key"), "storage_unavailable", 503),
        (StorageAccessDenied(log_detail="secret"), "storage_unavailable", 503),
    ],
)
def test_one_adapter_translates_the_libraries_errors(
    exc: SandboxError | DigestMismatch, code: str, status: int
) -> None:
    problem = library_problem(exc)
    assert (problem.code, problem.status) == (code, status)
    assert "secret" not in problem.detail and "0x0" not in problem.detail


def test_the_adapter_turns_retry_hints_into_retry_after() -> None:
    assert library_problem(ModelQuarantined(retry_after_s=7.4)).headers == {"Retry-After": "7"}
    assert library_problem(ModelQuarantined(retry_after_s=0.1)).headers == {"Retry-After": "1"}
    assert library_problem(WorkerCrashed()).headers == {}
