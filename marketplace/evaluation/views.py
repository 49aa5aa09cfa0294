"""POST /models/{id}/versions/{v}/evaluate and GET /sandbox/health."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, Field

from marketplace.accounts.oauth import current, require_oauth
from marketplace.accounts.scopes import ADMIN, SANDBOX_RUN
from marketplace.api import API_PREFIX, JSON_MIME, openapi, read_json_object
from marketplace.catalog.services import sample_of
from marketplace.db import get_session
from marketplace.errors import DomainError, PayloadTooLarge, ValidationFailed
from marketplace.evaluation import services
from marketplace.evaluation.admission import Slot
from marketplace.evaluation.tensors import NPZ_MIME, encode_json_tensors, encode_npz_chunks

bp = Blueprint("evaluation", __name__, url_prefix=API_PREFIX)
# npz outputs up to this size are sent whole, larger ones streamed in chunks of this size.
NPZ_INLINE_BYTES_MAX = 1 << 20


class TensorJSON(BaseModel):
    dtype: str = Field(examples=["float32"])
    shape: list[int]
    data: list[Any]


class EvaluateRequest(BaseModel):
    inputs: dict[str, TensorJSON]


class EvaluateUsage(BaseModel):
    """What this call counted, in the names of the licence's own counters (``/licenses/{id}``)."""

    licence_id: int | None = Field(description="None when the vendor runs its own model")
    kind: str = Field(description="owner, trial, per_inference, perpetual or subscription")
    calls_remaining: int | None = Field(default=None, description="Trials: calls left")
    calls_used: int | None = Field(
        default=None, description="Per inference: this call's number within the licence"
    )
    accrued_minor: int | None = Field(
        default=None,
        description="Per inference: royalties owed for calls 1..calls_used; charged to the "
        "wallet (settled) when usage is settled, not per call",
    )
    call_accrued_minor: int | None = Field(
        default=None, description="Per inference: this call's share of accrued_minor"
    )


class EvaluateResponse(BaseModel):
    outputs: dict[str, TensorJSON]
    timing: dict[str, float]
    usage: EvaluateUsage


def _read_inputs(service: services.EvaluationService) -> dict[str, Any]:
    limit = service.limits.body_bytes_max
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Evaluation bodies are limited to {limit} bytes.")
    mimetype = request.mimetype
    if mimetype == NPZ_MIME:
        request.max_content_length = limit
        return service.decode_npz(request.get_data(cache=False))
    if mimetype == "application/json":
        return service.decode_json(_json_body(service.limits.json_body_bytes_max))
    raise DomainError(f"Send application/json or {NPZ_MIME}.", code="unsupported_media_type")


def _json_body(bytes_max: int) -> dict[str, Any]:
    """The body as a JSON object, as :func:`read_json_object` reads it, parsed faster.

    Tensor data makes evaluation bodies long lists of numbers, which orjson parses about eight
    times faster than the standard decoder. It is strict JSON: whatever it refuses (the NaN
    and Infinity tokens Python's json writes, integers past 64 bits, other encodings) goes to
    the app's own decoder, so the same bodies are accepted and refused as everywhere else.
    """
    if request.content_length is not None and request.content_length > bytes_max:
        raise PayloadTooLarge(f"JSON bodies are limited to {bytes_max} bytes.")
    request.max_content_length = bytes_max
    data = request.get_data()
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return read_json_object(bytes_max)
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.", code="body_not_object")
    if len(_NAME_ENDS.findall(data)) > _names_through_objects(body):
        # A name written twice (orjson keeps the last), an object inside a list, or a quote and
        # a colon inside a string: the app's own decoder, which refuses repeated names, decides.
        return read_json_object(bytes_max)
    return body


# Every name of a JSON object ends with a quote, then optional whitespace, then a colon, so
# there are never fewer such places in a text than names written (about 0.1 ms for 370 KB).
_NAME_ENDS = re.compile(rb'"[ \t\r\n]*:')


def _names_through_objects(value: Any) -> int:
    """The names of the objects reachable through objects alone (the body, its inputs, each
    tensor): every name, when no object sits inside a list. Lists of numbers are not walked."""
    if not isinstance(value, dict):
        return 0
    return len(value) + sum(_names_through_objects(item) for item in value.values())


def _wants_npz() -> bool:
    # Clients send one media type; answering them without werkzeug's general Accept parser
    # takes a measurable share of a fast model's call.
    accept = request.headers.get("Accept", "").strip()
    if accept == NPZ_MIME:
        return True
    if accept in ("", "application/json", "*/*"):
        return False
    best = request.accept_mimetypes.best_match(
        ["application/json", NPZ_MIME], default="application/json"
    )
    return best == NPZ_MIME


@bp.post("/models/<int:model_id>/versions/<version>/evaluate")
@openapi(
    "Run a model version in the sandbox (owner, trial or licence holder)",
    tag="sandbox",
    body=EvaluateRequest,
    response=EvaluateResponse,
    scope=SANDBOX_RUN,
    errors=[402, 404, 410, 413, 415, 429, 502, 503, 504],
    body_media_types=[NPZ_MIME],
    response_media_types=[JSON_MIME, NPZ_MIME],
    description="The body is JSON tensors or an npz archive (`Content-Type: application/x-npz`, "
    "one array per input name). `Accept: application/x-npz` returns the outputs as an npz "
    "archive, streamed; timing and usage then travel in the `X-Jishi-Timing` and "
    "`X-Jishi-Usage` headers. The version may be `latest`: the newest version not revoked.",
    error_codes={
        402: ["insufficient_funds"],
        403: [
            "no_entitlement",
            "license_inactive",
            "listing_suspended",
            "insufficient_scope",
        ],
        410: ["version_revoked"],
        404: ["model_not_found", "version_not_found"],
        413: ["payload_too_large"],
        415: ["unsupported_media_type"],
        422: [
            "input_invalid",
            "input_too_large",
            "malformed_json",
            "model_invalid",
            "output_too_large",
            "json_output_too_large",
            "resource_exhausted",
        ],
        429: ["caller_throttled"],
        502: ["worker_crashed"],
        503: ["evaluation_busy", "sandbox_unavailable", "sandbox_busy", "model_quarantined"],
        504: ["deadline_exceeded"],
    },
    examples={"version": "latest"},
    example={"inputs": {"readings": {"dtype": "float32", "shape": [1, 16], "data": [0.5] * 16}}},
    response_headers={
        "X-Jishi-Timing": "With npz outputs: the timing object as name=value pairs",
        "X-Jishi-Usage": "With npz outputs: the usage object as name=value pairs",
    },
)
@require_oauth(SANDBOX_RUN)
def evaluate(model_id: int, version: str) -> Any:
    # The node's slot is held while this call's tensors are in memory: until a JSON body has
    # been built, or until the last chunk of a streamed npz body has been sent (or the client
    # has gone and the server closed the stream).
    slot = services.admit(current_app.extensions["eval_admission"])
    try:
        return _evaluate(model_id, version, slot)
    except BaseException:
        slot.release()
        raise


def _streamed(chunks: Iterator[bytes], slot: Slot) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        slot.release()


def _evaluate(model_id: int, version: str, slot: Slot) -> Response:
    service: services.EvaluationService = current_app.extensions["evaluation"]
    wants_npz = _wants_npz()
    result = service.evaluate(
        organization_id=current.organization_id,
        model_id=model_id,
        version=version,
        read_inputs=lambda: _read_inputs(service),
        json_outputs=not wants_npz,
    )
    if wants_npz:
        chunks = encode_npz_chunks(result.outputs)
        if sum(a.nbytes for a in result.outputs.values()) <= NPZ_INLINE_BYTES_MAX:
            # Small outputs go out as one body with a length: fewer writes than chunks.
            response = Response(b"".join(chunks), mimetype=NPZ_MIME)
            slot.release()
        else:
            response = Response(_streamed(chunks, slot), mimetype=NPZ_MIME)
            # A generator not yet started has no finally to run: release on close as well.
            response.call_on_close(slot.release)
        response.headers["X-Jishi-Timing"] = ",".join(f"{k}={v}" for k, v in result.timing.items())
        response.headers["X-Jishi-Usage"] = ",".join(f"{k}={v}" for k, v in result.usage.items())
        return response
    response = jsonify(
        {
            "outputs": encode_json_tensors(result.outputs),
            "timing": result.timing,
            "usage": result.usage,
        }
    )
    slot.release()
    return response


@bp.get("/models/<int:model_id>/versions/<version>/sample")
@openapi(
    "The version's sample input as npz (anyone who may evaluate the version)",
    tag="sandbox",
    scope=SANDBOX_RUN,
    errors=[402, 404, 410],
    response_media_types=(NPZ_MIME,),
    error_codes={404: ["model_not_found", "version_not_found", "sample_not_found"]},
    examples={"version": "1.0.0"},
)
@require_oauth(SANDBOX_RUN)
def get_sample(model_id: int, version: str) -> Any:
    session = get_session()
    row, _listing, _entitlement = services.authorize(
        session=session, model_id=model_id, version=version, organization_id=current.organization_id
    )
    sample, data = sample_of(session=session, version=row)
    response = Response(data, mimetype=NPZ_MIME)
    response.headers["Content-Disposition"] = f'attachment; filename="sample-{row.version}.npz"'
    response.headers["ETag"] = f'"{sample.sha256}"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


class SandboxHealth(BaseModel):
    available: bool
    protections: dict[str, Any] | None
    workers: int
    workers_busy: int
    queue_depth: int


@bp.get("/sandbox/health")
@openapi(
    "Which protections the sandbox has in force on this node", tag="sandbox", response=SandboxHealth
)
def sandbox_health() -> Any:
    # Public: the protections in force are part of the marketplace's promise to vendors.
    # Only an administrator sees which models are quarantined.
    detailed = False
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        with require_oauth.acquire() as token:
            detailed = ADMIN in token.scope.split()
    return jsonify(services.health(current_app.extensions["sandbox_pool"], detailed=detailed))
