"""Helpers every API view uses: body and query parsing, OpenAPI metadata, the spec itself."""

from __future__ import annotations

import datetime as dt
import functools
import json as stdlib_json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from flask import Blueprint, Flask, current_app, has_request_context, request
from flask.json.provider import DefaultJSONProvider
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from werkzeug.routing import IntegerConverter, Map
from werkzeug.routing.converters import NumberConverter

from marketplace.amounts import add_display_schemas, with_displays
from marketplace.bounds import ID_MAX, ID_MIN, INT64_MAX, INT64_MIN
from marketplace.errors import (
    DomainError,
    IntegerOutOfRange,
    NotFound,
    PayloadTooLarge,
    RoutingIntegerOutOfRange,
    ValidationFailed,
    problem_title,
)

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

API_PREFIX = "/api/v1"
JSON_MIME = "application/json"
NPZ_MIME = "application/x-npz"
OCTET_STREAM = "application/octet-stream"
IDEMPOTENCY_KEY_LENGTH_MAX = 128


@dataclass(frozen=True)
class HeaderParam:
    """A request header an operation reads, as the OpenAPI document describes it, with the
    problem codes reading it may answer."""

    name: str
    description: str
    required: bool
    schema: dict[str, Any]
    example: str
    errors: tuple[str, ...] = ()


IDEMPOTENCY_KEY = HeaderParam(
    "Idempotency-Key",
    "Your unique key for this request; a retry with the same key and body returns the first "
    "result and changes nothing, the same key with another body is refused (409).",
    True,
    {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_LENGTH_MAX},
    "7d3f0c1e-order-2026-0001",
    ("idempotency_key_required", "idempotency_key_reused"),
)
CONTENT_DIGEST = HeaderParam(
    "Content-Digest",
    "RFC 9530 digest of the body (`sha-256=:BASE64:`); when present, the body is written to "
    "storage while it arrives and refused (400 `digest_mismatch`) if it does not match.",
    False,
    {"type": "string", "pattern": "^sha-256=:[A-Za-z0-9+/]{43}=:$"},
    "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
    ("invalid_digest", "digest_mismatch"),
)

PATH_PARAMETER_DESCRIPTIONS = {
    "version": "A version number such as `1.0.0`; where a version is read or evaluated, also "
    "`latest`: the listing's newest version that is not revoked.",
}

# The codes each status stands for when an operation names no codes of its own: the problems
# that the shared parsing, authentication and storage layers raise on every route.
DEFAULT_ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("bad_request",),
    401: ("missing_token", "invalid_token"),
    402: ("insufficient_funds",),
    403: ("insufficient_scope", "forbidden"),
    404: ("not_found",),
    405: ("method_not_allowed",),
    409: ("conflict",),
    410: ("version_revoked",),
    411: ("length_required",),
    413: ("payload_too_large",),
    415: ("unsupported_media_type",),
    422: ("validation_failed", "malformed_json", "body_not_object", "integer_out_of_range"),
    429: ("too_many_requests",),
    502: ("worker_crashed",),
    503: ("service_unavailable", "database_busy"),
    504: ("deadline_exceeded",),
}


def idempotency_key() -> str:
    """The request's ``Idempotency-Key`` header (required, 1 to 128 visible characters)."""
    key = request.headers.get(IDEMPOTENCY_KEY.name, "").strip()
    if not key or len(key) > IDEMPOTENCY_KEY_LENGTH_MAX or not key.isprintable():
        raise DomainError(
            f"Send an Idempotency-Key header of 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} printable "
            "characters; use ASCII (other header bytes are read as Latin-1, where UTF-8 text "
            "turns into control characters).",
            code="idempotency_key_required",
        )
    return key


# An amount of money in a request: a JSON integer of minor units, never a string, a float or a
# boolean (lax parsing took "100", 100.0 and true), and far below the 64-bit limit so that
# sums of many amounts stay exact in a BIGINT.
MINOR_MAX = 10**15
MinorAmount = Annotated[int, Field(strict=True, ge=0, le=MINOR_MAX)]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217, upper case")]


def _as_utc_time(value: dt.datetime) -> dt.datetime:
    # A naive time is UTC; an aware one is converted. Near year 1 or 9999 the conversion leaves
    # the range a datetime can hold, which is a bad request, not a server error.
    try:
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("must be a time between the years 1 and 9999 in UTC") from None


# A time in a query string, as UTC: naive times are read as UTC, others converted.
UtcTime = Annotated[dt.datetime, AfterValidator(_as_utc_time)]


class RowModel(BaseModel):
    """A response made from a database row: ``Model.model_validate(row)`` reads its attributes."""

    model_config = ConfigDict(from_attributes=True)


class RequestModel(BaseModel):
    """A request body or query string: a field it does not know is refused, never ignored.

    A field with an alias (``from``, a Python keyword) may also be sent by its own name.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        if holds_nul(value):
            raise ValueError("NUL characters are not accepted")
        return value


def holds_nul(value: Any) -> bool:
    """Whether a string anywhere in ``value`` holds a NUL character.

    PostgreSQL's text cannot store one (the driver raises, which would be a 500) and no name,
    text or query of the marketplace has a use for one, so requests carrying one are refused.
    """
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, BaseModel):
        return any(holds_nul(item) for _name, item in value)
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(holds_nul(item) for item in value)
    return False


class IdConverter(IntegerConverter):
    """Flask's ``<int:...>`` bounded to the id columns' range; beyond it 422, not 500."""

    # ASCII digits only: Werkzeug's \d also matches other scripts' digits, which int() reads,
    # so /models/１ (a full-width one) acted on model 1.
    regex = "[0-9]+"

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", ID_MAX)
        super().__init__(map, *args, **kwargs)

    def to_python(self, value: str) -> int:
        # Compared as text first: int() of a few thousand digits is itself refused by Python.
        if len(value.lstrip("0")) > len(str(ID_MAX)) or int(value) > ID_MAX:
            raise RoutingIntegerOutOfRange()
        return super().to_python(value)  # type: ignore[no-any-return]


def _out_of_range_fields(value: Any, low: int, high: int, where: str = "") -> list[str]:
    """The dotted names of the integers past the bounds, nested models and lists included (a
    job's ``versions.0.model_id`` of 2**63 reached the database as one)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [] if low <= value <= high else [where or "(body)"]
    if isinstance(value, BaseModel):
        items: Any = ((name, field) for name, field in value)
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    else:
        return []
    return [
        name
        for key, item in items
        for name in _out_of_range_fields(item, low, high, f"{where}.{key}" if where else str(key))
    ]


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    # Only location and message: pydantic's "input" would echo secrets such as passwords.
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def validate(model: type[M], data: Any, *, int_min: int = INT64_MIN, int_max: int = INT64_MAX) -> M:
    """``data`` as ``model``; 422 with field errors, ``integer_out_of_range`` past the bounds."""
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed("Some fields are not valid.", errors=_field_errors(exc)) from None
    too_big = _out_of_range_fields(parsed, int_min, int_max)
    if too_big:
        message = f"must be between {int_min} and {int_max}"
        raise IntegerOutOfRange(
            "An integer is out of range.",
            errors=[{"field": name, "message": message} for name in too_big],
        )
    return parsed


def parse_json(model: type[M]) -> M:
    """The request's JSON object, validated into ``model``; 415/413/422 otherwise."""
    if not request.is_json:
        raise DomainError(
            "Send a JSON object with Content-Type: application/json.",
            code="unsupported_media_type",
        )
    return validate(model, read_json_object(current_app.extensions["settings"].json_body_bytes_max))


def read_json_object(bytes_max: int) -> dict[str, Any]:
    """The request body as a JSON object of at most ``bytes_max`` bytes; 413/422 otherwise."""
    if request.content_length is not None and request.content_length > bytes_max:
        raise PayloadTooLarge(f"JSON bodies are limited to {bytes_max} bytes.")
    request.max_content_length = bytes_max
    try:
        data = current_app.json.loads(request.get_data(), object_pairs_hook=_object_named_once)
    except _FieldNamedTwice as exc:
        # Decoders disagree on which of two values wins (here the last): a proxy or log that
        # reads the first would see another amount than the one charged.
        raise ValidationFailed(
            f"The body names {exc.args[0]!r} twice in one object.", code="malformed_json"
        ) from None
    except (ValueError, RecursionError):
        # RecursionError: the standard decoder recurses per nesting level; a hostile body can
        # exhaust the stack.
        data = None
    if data is None:
        raise ValidationFailed("The body is not valid JSON.", code="malformed_json")
    if not isinstance(data, dict):
        raise ValidationFailed("The body must be a JSON object.", code="body_not_object")
    return data


class _FieldNamedTwice(ValueError):
    pass


def _object_named_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for name, _value in pairs:
            if name in seen:
                raise _FieldNamedTwice(name[:64])
            seen.add(name)
    return found


def parse_query(model: type[M]) -> M:
    """The query string as ``model``; its integers are ids or page numbers (see ``ID_MAX``).

    A parameter given twice is refused, as a JSON name written twice is: reading the first
    silently answered ``?currency=CNY&currency=USD`` in CNY.
    """
    twice = sorted(name for name, values in request.args.lists() if len(values) > 1)
    if twice:
        raise ValidationFailed(
            "Each query parameter may be given once.",
            errors=[{"field": name, "message": "given more than once"} for name in twice],
        )
    return validate(model, request.args.to_dict(), int_min=ID_MIN, int_max=ID_MAX)


def openapi(
    summary: str,
    *,
    tag: str,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    scope: str | tuple[str, ...] | None = None,
    errors: Iterable[int] = (),
    body_media_type: str = JSON_MIME,
    body_media_types: Sequence[str] = (),
    response_media_types: Sequence[str] = (JSON_MIME,),
    headers: Sequence[HeaderParam] = (),
    error_codes: Mapping[int, Sequence[str]] | None = None,
    example: Any = None,
    examples: Mapping[str, Any] | None = None,
    description: str = "",
    also_success: Mapping[int, Sequence[str]] | None = None,
    replay_status: int | None = None,
    response_headers: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Attach the operation's description; the spec is built from these and the URL map.

    ``body`` is the JSON body's model; ``body_media_types`` lists further media types the body
    may have (such as npz), ``response_media_types`` those the success response may have
    (chosen by ``Accept``), ``headers`` the request headers the operation reads.
    ``error_codes`` names the problem codes of a status where they differ from
    :data:`DEFAULT_ERROR_CODES`; ``example`` is a JSON body a client may send as it is, and
    ``examples`` gives path and query parameters their example values (integer path
    parameters default to 1, the first id of a fresh database's demo data).
    ``also_success`` lists further success statuses with their media types; ``replay_status``
    is the status a replay of the same Idempotency-Key and body answers, with the first result;
    ``response_headers`` names the headers of the success response with their meaning.
    """
    codes = {int(k): tuple(v) for k, v in (error_codes or {}).items()}

    def decorate(view: F) -> F:
        view.__openapi__ = {  # type: ignore[attr-defined]
            "summary": summary,
            "tag": tag,
            "body": body,
            "query": query,
            "response": response,
            "status": status,
            "scope": scope,
            "errors": sorted(
                set(errors)
                | set(codes)
                | ({401, 403} if scope else set())
                | {422}
                # A JSON body is refused past its bound (413) or under another media type (415).
                | ({413, 415} if body is not None and body_media_type == JSON_MIME else set())
            ),
            "error_codes": codes,
            "example": example,
            "examples": dict(examples or {}),
            "description": description,
            "also_success": {int(k): tuple(v) for k, v in (also_success or {}).items()},
            "replay_status": replay_status,
            "response_headers": dict(response_headers or {}),
            "body_media_type": body_media_type,
            "body_media_types": tuple(body_media_types),
            "response_media_types": tuple(response_media_types),
            "headers": tuple(headers),
        }
        return view

    return decorate


def _schema_ref(
    model: type[BaseModel], schemas: dict[str, Any], *, response: bool = False
) -> dict[str, str]:
    # A response is described as it is serialised (aliases such as ``from``, computed fields);
    # a request as it is validated. Pydantic names the two forms apart where they differ.
    schema = model.model_json_schema(
        ref_template="#/components/schemas/{model}",
        mode="serialization" if response else "validation",
    )
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _raw(media_type: str) -> dict[str, Any]:
    # OpenAPI 3.1 describes a body that is not JSON by its media type, not by a JSON type.
    schema: dict[str, Any] = {"contentMediaType": media_type}
    if media_type in _BINARY_EXAMPLES:
        schema["description"] = _BINARY_EXAMPLES[media_type]
    return schema


def _path_schema(converter: object) -> dict[str, Any]:
    """The JSON schema of a path parameter, from the Flask converter that parses it."""
    if isinstance(converter, NumberConverter) and converter.num_convert is int:
        schema: dict[str, Any] = {"type": "integer", "format": "int32"}
        if not converter.signed:
            schema["minimum"] = 0
        if converter.max is not None:
            schema["maximum"] = converter.max
        return schema
    return {"type": "string"}


def _openapi_path(rule: str) -> str:
    # Flask's <int:org_id> becomes OpenAPI's {org_id}.
    out, i = [], 0
    while i < len(rule):
        if rule[i] == "<":
            end = rule.index(">", i)
            out.append("{" + rule[i + 1 : end].split(":")[-1] + "}")
            i = end + 1
        else:
            out.append(rule[i])
            i += 1
    return "".join(out)


def build_spec(app: Flask) -> dict[str, Any]:
    """OpenAPI 3.1 for every ``/api`` route that carries :func:`openapi` metadata."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "string"},
            },
        }
    }
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api"):
            continue
        view = app.view_functions[rule.endpoint]
        meta = getattr(view, "__openapi__", None)
        if meta is None:
            continue
        path = paths.setdefault(_openapi_path(rule.rule), {})
        examples = meta["examples"]
        params = []
        for arg in sorted(rule.arguments):
            schema = _path_schema(rule._converters[arg])  # type: ignore[attr-defined]
            param = {"name": arg, "in": "path", "required": True, "schema": schema}
            if arg in PATH_PARAMETER_DESCRIPTIONS:
                param["description"] = PATH_PARAMETER_DESCRIPTIONS[arg]
            if arg in examples:
                param["example"] = examples[arg]
            elif schema["type"] == "integer":
                param["example"] = 1
            params.append(param)
        if meta["query"] is not None:
            query_schema = meta["query"].model_json_schema()
            required = set(query_schema.get("required", ()))
            for name, prop in query_schema.get("properties", {}).items():
                param = {"name": name, "in": "query", "required": name in required, "schema": prop}
                if prop.get("description"):
                    param["description"] = prop["description"]
                if name in examples:
                    param["example"] = examples[name]
                elif prop.get("examples"):
                    param["example"] = prop["examples"][0]
                elif prop.get("default") is not None:
                    param["example"] = prop["default"]
                params.append(param)
        for header in meta["headers"]:
            params.append(
                {
                    "name": header.name,
                    "in": "header",
                    "required": header.required,
                    "description": header.description,
                    "schema": header.schema,
                    "example": header.example,
                }
            )
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {
                "operationId": f"{rule.endpoint}.{method.lower()}",
                "summary": meta["summary"],
                **({"description": meta["description"]} if meta["description"] else {}),
                "tags": [meta["tag"]],
                "parameters": params,
                "responses": {},
            }
            if meta["scope"]:
                # scope="any": any valid token of the right organisation will do; a tuple of
                # scopes: any one of them will.
                scopes = meta["scope"] if isinstance(meta["scope"], tuple) else (meta["scope"],)
                op["security"] = [{"oauth2": [] if s == "any" else [s]} for s in scopes]
            content: dict[str, Any] = {}
            if meta["body"] is not None:
                content[JSON_MIME] = {"schema": _schema_ref(meta["body"], schemas)}
                if meta["example"] is not None:
                    content[JSON_MIME]["example"] = meta["example"]
            elif meta["body_media_type"] != JSON_MIME:
                content[meta["body_media_type"]] = {"schema": _raw(meta["body_media_type"])}
            for media_type in meta["body_media_types"]:
                content.setdefault(media_type, {"schema": _raw(media_type)})
            if content:
                op["requestBody"] = {"required": True, "content": content}
            ok: dict[str, Any] = {"description": "Success"}
            if meta["response"] is not None:
                ok["content"] = {}
                for media_type in meta["response_media_types"]:
                    ok["content"][media_type] = (
                        {"schema": _schema_ref(meta["response"], schemas, response=True)}
                        if media_type == JSON_MIME
                        else {"schema": _raw(media_type)}
                    )
            elif meta["response_media_types"] != (JSON_MIME,):
                ok["content"] = {m: {"schema": _raw(m)} for m in meta["response_media_types"]}
            if meta["response_headers"]:
                ok["headers"] = {
                    name: {"description": text, "schema": {"type": "string"}}
                    for name, text in meta["response_headers"].items()
                }
            op["responses"][str(meta["status"])] = ok
            if meta["replay_status"] is not None:
                op["responses"][str(meta["replay_status"])] = {
                    **ok,
                    "description": "The first result, replayed (the same Idempotency-Key and body)",
                }
            for status, media_types in meta["also_success"].items():
                op["responses"][str(status)] = {
                    "description": "Success",
                    "content": {m: {"schema": _raw(m)} for m in media_types},
                }
            for status in meta["errors"]:
                op["responses"][str(status)] = _problem_response(
                    status, meta["error_codes"].get(status) or DEFAULT_ERROR_CODES.get(status, ())
                )
            path[method.lower()] = op
    add_display_schemas(schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Jishi (算法集市) API",
            "version": "1",
            "description": "Amounts `X_minor` are integers in minor units (fen for CNY) with a "
            "formatted `X_display` beside them. Errors are RFC 9457 problem documents whose `code` is "
            "stable; the OAuth2 endpoints answer in RFC 6749's `{error, error_description}`.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "oauth2": {
                    "type": "oauth2",
                    "description": "Client credentials (client_secret_basic or client_secret_post) "
                    "at the token URL; revoke at /oauth/revoke (RFC 7009), introspect at "
                    "/oauth/introspect (RFC 7662), metadata at "
                    "/.well-known/oauth-authorization-server (RFC 8414).",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": "/oauth/token",
                            "scopes": _scope_descriptions(),
                        }
                    },
                }
            },
        },
    }


_BINARY_EXAMPLES = {
    OCTET_STREAM: "The raw bytes of an ONNX model (`curl --data-binary @model.onnx`).",
    NPZ_MIME: "A NumPy `.npz` archive with one array per input name (`numpy.savez`).",
}


def _problem_response(status: int, codes: Sequence[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": "#/components/schemas/Problem"}
    media: dict[str, Any] = {"schema": schema}
    if codes:
        media["schema"] = {
            "allOf": [schema, {"properties": {"code": {"enum": list(codes)}}}],
        }
        media["example"] = {
            "type": f"/problems/{codes[0]}",
            "title": problem_title(codes[0]),
            "status": status,
            "detail": "…",
            "code": codes[0],
        }
    return {
        "description": "Problem: " + ", ".join(f"`{c}`" for c in codes) if codes else "Problem",
        "content": {"application/problem+json": media},
    }


def _scope_descriptions() -> dict[str, str]:
    from marketplace.accounts.scopes import ALL_SCOPES, SCOPE_DESCRIPTIONS

    return {s: SCOPE_DESCRIPTIONS.get(s, s) for s in sorted(ALL_SCOPES)}


meta_bp = Blueprint("api_meta", __name__, url_prefix=API_PREFIX)


@meta_bp.get("/openapi.json")
@openapi("This OpenAPI 3.1 document", tag="meta")
def openapi_json() -> Any:
    # Serialised without the API's JSON provider: the document's examples are request bodies,
    # which must not gain the display fields that responses carry.
    body = stdlib_json.dumps(build_spec(current_app), ensure_ascii=False, sort_keys=True)
    return current_app.response_class(body, mimetype=JSON_MIME)


class ApiJSONProvider(DefaultJSONProvider):
    """Flask's JSON, and under ``/api`` every integer amount ``X_minor`` gains ``X_display``."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if has_request_context() and request.path.startswith("/api"):
            obj = with_displays(obj, _exponent_of)
        return super().dumps(obj, **kwargs)


def _exponent_of(currency: str) -> int | None:
    # Currencies change only with migrations: the table is read once per process, and again
    # only for a code it did not hold.
    known: dict[str, int] = current_app.extensions.setdefault("currency_exponents", {})
    if currency not in known:
        from marketplace.ledger.services import currency_exponents

        session = current_app.extensions["db"].session()
        try:
            known.update(currency_exponents(session))
        finally:
            session.close()
    return known.get(currency)


# The API's reference page: Swagger UI 5 from the flask-swagger-ui package's dist folder (its
# blueprint is not used: its page runs an inline script), served by the app so that nothing is
# fetched from the internet. Its assets live under a path the spec skips.
docs_bp = Blueprint("api_docs", __name__, url_prefix="/api/docs")
_SWAGGER_ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")
_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Jishi (算法集市) API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
<noscript><p>This page needs JavaScript; the document itself is at
<a href="{spec}">{spec}</a>.</p></noscript>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/init.js"></script>
</body>
</html>
"""
_DOCS_INIT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "%s",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    tryItOutEnabled: false
  });
});
"""


@docs_bp.get("")
@openapi(
    "This API's reference, rendered from the OpenAPI document",
    tag="meta",
    response_media_types=("text/html",),
)
def docs_page() -> Any:
    page = _DOCS_PAGE.format(assets=f"{request.script_root}/api/docs/_assets", spec=_spec_url())
    response = current_app.response_class(page, mimetype="text/html")
    # Swagger UI's own scripts and the document, from this site only; it writes style
    # attributes and draws icons from data: URLs.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return response


@docs_bp.get("/_assets/<name>")
def docs_asset(name: str) -> Any:
    from flask import send_from_directory

    if name == "init.js":
        return current_app.response_class(_DOCS_INIT % _spec_url(), mimetype="text/javascript")
    if name not in _SWAGGER_ASSETS:
        raise NotFound("No such asset.")
    return send_from_directory(_swagger_ui_dist(), name, max_age=86400)


@functools.cache
def _swagger_ui_dist() -> str:
    """Where the flask-swagger-ui package keeps Swagger UI's files (located, not imported)."""
    from importlib.util import find_spec

    spec = find_spec("flask_swagger_ui")
    assert spec is not None and spec.submodule_search_locations is not None
    return f"{spec.submodule_search_locations[0]}/dist"


_HTML_DEFAULT_CSP = (
    "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _spec_url() -> str:
    return f"{request.script_root}{API_PREFIX}/openapi.json"


def _read_form_within_bound() -> None:
    """Parse the request's url-encoded form under the JSON body bound; 413 beyond it.

    The first reader of a form (the NUL check, before any blueprint sets a bound) reads it
    whole: unbounded, a 200 MB form held a worker at 7 GB. No form of the marketplace is larger
    than a JSON body may be. A chunked body has no length to refuse up front, and Werkzeug
    stops reading it at the bound without a word; one more byte read says whether it was cut.
    """
    if request.max_content_length is None:
        request.max_content_length = current_app.extensions["settings"].json_body_bytes_max
    request.form  # noqa: B018 - parses and caches the form
    if request.content_length is None:
        request.stream.read(1)  # raises RequestEntityTooLarge when the bound was reached


def init_app(app: Flask) -> None:
    """Bound ``<int:...>`` path parameters (before any route is added); refuse NUL characters;
    display amounts; serve the spec."""
    app.url_map.converters["int"] = IdConverter

    @app.before_request
    def _refuse_nul_characters() -> Any:
        # Paths and form fields reach queries as text too (see holds_nul); JSON bodies and
        # query strings are also checked field by field by RequestModel.
        form = request.mimetype == "application/x-www-form-urlencoded"
        if form:
            _read_form_within_bound()
        if not (
            "\x00" in request.path
            or b"%00" in request.query_string
            or (form and holds_nul(list(request.form.items(multi=True))))
        ):
            return None
        detail = "NUL characters are not accepted in a request."
        if request.path.startswith("/oauth/"):
            # The token endpoints answer in RFC 6749's format (§5.2), as for any bad request.
            return {"error": "invalid_request", "error_description": detail}, 400
        raise ValidationFailed(detail)

    @app.after_request
    def _html_loads_nothing_unasked(response: Any) -> Any:
        # Pages set their own policy (marketplace.web); every other HTML answer (an error
        # page, a redirect's body) runs nothing and loads nothing.
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", _HTML_DEFAULT_CSP)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    app.json = ApiJSONProvider(app)
    app.register_blueprint(meta_bp)
    app.register_blueprint(docs_bp)
