"""The one decorator an API view wears below its route: token, OpenAPI entry and JSON answer.

A view declares once what it needs and what it may answer, and returns a public model::

    @bp.get("/licenses/<int:license_id>")
    @operation("One of your licences", tag="licensing", scope="any", errors=["license_not_found"])
    def get_license(license_id: int) -> LicensePublic:
        return ...

Its signature is part of the declaration: the model its return annotation names is the
documented ``response``; parameters ``query`` and ``body`` annotated with models are given the
parsed query string and JSON body, and document them. A view that must check something before
its body is read (a header, the path's organisation) parses the body itself instead.

``scope`` both guards the view and documents it. ``errors`` names problem codes only: the
status each is documented under comes from :data:`marketplace.errors.ERROR_TABLE`, as it does
when one is raised. The codes a request header may answer come with the header, and a scoped
operation that lists refusals of its own (403) lists ``insufficient_scope`` with them. A model returned is answered as JSON with the operation's ``status``; a
``(model, status)`` pair with that status; a ``Response`` the view built is answered as it is.

A blueprint gives what its routes share once, with :func:`operations`, and each route states
only what differs::

    operation = operations(tag="licensing", scope="any")
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar

from flask import jsonify
from pydantic import BaseModel

from marketplace.accounts.oauth import current, require_oauth
from marketplace.api import openapi, parse_json, parse_query
from marketplace.db import get_session
from marketplace.errors import ERROR_TABLE

P = ParamSpec("P")
T = TypeVar("T")
FORBIDDEN = 403
SCOPE_MISSING = "insufficient_scope"


def operation(
    summary: str,
    *,
    tag: str,
    scope: str | tuple[str, ...] | None = None,
    optional_token: bool = False,
    status: int = 200,
    errors: Sequence[str] = (),
    **spec: Any,
) -> Callable[[Callable[P, Any]], Callable[P, Any]]:
    """Guard the view with ``scope`` (``"any"``: any valid token; a tuple: any one of them;
    None: no token, or one read when sent with ``optional_token``), describe it in the OpenAPI
    document with ``summary``, ``errors`` and ``spec`` (see :func:`marketplace.api.openapi`;
    ``response``, ``query`` and ``body`` default to the models of the view's signature), and
    render what it returns."""
    if scope is not None and optional_token:
        # A guarded route never reads a token as optional: one of the two is a mistake.
        raise TypeError("optional_token is for routes without a scope")
    codes = [*errors, *(code for header in spec.get("headers", ()) for code in header.errors)]
    if optional_token:
        codes.append("invalid_token")  # a token sent along must be valid
    error_codes: dict[int, list[str]] = {}
    for code in codes:
        error_codes.setdefault(ERROR_TABLE[code].status, []).append(code)
    if scope is not None and FORBIDDEN in error_codes and SCOPE_MISSING not in codes:
        error_codes[FORBIDDEN].append(SCOPE_MISSING)

    def decorate(view: Callable[P, Any]) -> Callable[P, Any]:
        hints = typing.get_type_hints(view)
        signed = {name: _model(hints.get(name)) for name in ("return", "query", "body")}
        query, body = signed["query"], signed["body"]

        @functools.wraps(view)
        def answer(*args: P.args, **kwargs: P.kwargs) -> Any:
            if query is not None:
                kwargs["query"] = parse_query(query)
            if body is not None:
                kwargs["body"] = parse_json(body)
            return _render(view(*args, **kwargs), status)

        guarded: Callable[P, Any] = answer
        if scope is not None:
            needed = None if scope == "any" else list(scope) if isinstance(scope, tuple) else scope
            guarded = require_oauth(needed)(answer)
        elif optional_token:
            guarded = require_oauth(optional=True)(answer)
        described = {"response": signed["return"], "query": query, "body": body, **spec}
        describe = openapi(
            summary, tag=tag, scope=scope, status=status, error_codes=error_codes, **described
        )
        return describe(guarded)

    return decorate


class Declare(Protocol):
    """:func:`operation` with some of its arguments given already."""

    def __call__(
        self, summary: str, **options: Any
    ) -> Callable[[Callable[P, Any]], Callable[P, Any]]: ...


def operations(*, tag: str, **defaults: Any) -> Declare:
    """:func:`operation` for a group of routes: their ``tag`` and what else they share (the
    ``scope`` most of them need, the ``status`` and ``headers`` of an idempotent create) given
    once. A route overrides any of them by naming it again: ``scope=None`` for a public one."""

    def declare(summary: str, **options: Any) -> Callable[[Callable[P, Any]], Callable[P, Any]]:
        return operation(summary, **{"tag": tag, **defaults, **options})

    return declare


def for_caller(service: Callable[..., T], **arguments: Any) -> T:
    """``service`` asked for the token's organisation in the request's session: how a view
    reads or changes one of the caller's own things (another organisation's is not found)."""
    return service(session=get_session(), organization_id=current.organization_id, **arguments)


def _model(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation names, if it names one (not ``Any``, a ``Response``, a tuple)."""
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _render(result: Any, status: int) -> Any:
    model, status = result if isinstance(result, tuple) else (result, status)
    if isinstance(model, BaseModel):
        return jsonify(model.model_dump(mode="json", by_alias=True)), status
    return result
