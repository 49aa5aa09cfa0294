"""Helpers every API view uses: body and query parsing, OpenAPI metadata, the spec itself."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from flask import Blueprint, Flask, current_app, jsonify, request
from pydantic import BaseModel, ValidationError

from marketplace.errors import DomainError, PayloadTooLarge, ValidationFailed

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

API_PREFIX = "/api/v1"


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    # Only location and message: pydantic's "input" would echo secrets such as passwords.
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed("Some fields are not valid.", errors=_field_errors(exc)) from None


def parse_json(model: type[M]) -> M:
    """The request's JSON object, validated into ``model``; 415/413/422 otherwise."""
    if not request.is_json:
        raise DomainError(
            "Send a JSON object with Content-Type: application/json.",
            code="unsupported_media_type",
            status=415,
        )
    return validate(model, read_json_object(current_app.extensions["settings"].json_body_bytes_max))


def read_json_object(bytes_max: int) -> dict[str, Any]:
    """The request body as a JSON object of at most ``bytes_max`` bytes; 413/422 otherwise."""
    if request.content_length is not None and request.content_length > bytes_max:
        raise PayloadTooLarge(f"JSON bodies are limited to {bytes_max} bytes.")
    request.max_content_length = bytes_max
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        # The standard decoder recurses per nesting level; a hostile body can exhaust the stack.
        data = None
    if data is None:
        raise ValidationFailed("The body is not valid JSON.", code="malformed_json")
    if not isinstance(data, dict):
        raise ValidationFailed("The body must be a JSON object.", code="body_not_object")
    return data


def parse_query(model: type[M]) -> M:
    return validate(model, request.args.to_dict())


def openapi(
    summary: str,
    *,
    tag: str,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    scope: str | None = None,
    errors: Iterable[int] = (),
    body_media_type: str = "application/json",
) -> Callable[[F], F]:
    """Attach the operation's description; the spec is built from these and the URL map."""

    def decorate(view: F) -> F:
        view.__openapi__ = {  # type: ignore[attr-defined]
            "summary": summary,
            "tag": tag,
            "body": body,
            "query": query,
            "response": response,
            "status": status,
            "scope": scope,
            "errors": sorted(set(errors) | ({401, 403} if scope else set()) | {422}),
            "body_media_type": body_media_type,
        }
        return view

    return decorate


def _schema_ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


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
        params = [
            {"name": arg, "in": "path", "required": True, "schema": {"type": "string"}}
            for arg in sorted(rule.arguments)
        ]
        if meta["query"] is not None:
            for name, prop in meta["query"].model_json_schema().get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": False, "schema": prop})
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {
                "operationId": f"{rule.endpoint}.{method.lower()}",
                "summary": meta["summary"],
                "tags": [meta["tag"]],
                "parameters": params,
                "responses": {},
            }
            if meta["scope"]:
                # scope="any": any valid token of the right organisation will do.
                op["security"] = [{"oauth2": [] if meta["scope"] == "any" else [meta["scope"]]}]
            if meta["body"] is not None:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _schema_ref(meta["body"], schemas)}},
                }
            elif meta["body_media_type"] != "application/json":
                op["requestBody"] = {
                    "required": True,
                    "content": {
                        meta["body_media_type"]: {"schema": {"type": "string", "format": "binary"}}
                    },
                }
            ok: dict[str, Any] = {"description": "Success"}
            if meta["response"] is not None:
                ok["content"] = {
                    "application/json": {"schema": _schema_ref(meta["response"], schemas)}
                }
            op["responses"][str(meta["status"])] = ok
            for status in meta["errors"]:
                op["responses"][str(status)] = {
                    "description": "Problem",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            path[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Jishi (算法集市) API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "oauth2": {
                    "type": "oauth2",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": "/oauth/token",
                            "scopes": {s: s for s in sorted(_all_scopes())},
                        }
                    },
                }
            },
        },
    }


def _all_scopes() -> set[str]:
    from marketplace.accounts.scopes import ALL_SCOPES

    return set(ALL_SCOPES)


meta_bp = Blueprint("api_meta", __name__, url_prefix=API_PREFIX)


@meta_bp.get("/openapi.json")
@openapi("This OpenAPI 3.1 document", tag="meta")
def openapi_json() -> Any:
    return jsonify(build_spec(current_app))
