"""The one decorator an API view wears below its route: token, OpenAPI entry and JSON answer.

A view declares once what it needs and what it may answer, and returns a public model::

    @bp.get("/licenses/<int:license_id>")
    @operation("One of your licences", tag="licensing", response=LicensePublic, scope="any",
               errors=["license_not_found"])
    def get_license(license_id: int) -> LicensePublic:
        return ...

``scope`` both guards the view and documents it. ``errors`` names problem codes only: the
status each is documented under comes from :data:`marketplace.errors.ERROR_TABLE`, as it does
when one is raised. The codes a request header may answer come with the header, and a scoped
operation that lists refusals of its own (403) lists ``insufficient_scope`` with them. A model returned is answered as JSON with the operation's ``status``; a
``(model, status)`` pair with that status; a ``Response`` the view built is answered as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec

from flask import jsonify
from pydantic import BaseModel

from marketplace.accounts.oauth import require_oauth
from marketplace.api import openapi
from marketplace.errors import ERROR_TABLE

P = ParamSpec("P")
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
    document with ``summary``, ``errors`` and ``spec`` (see :func:`marketplace.api.openapi`),
    and render what it returns."""
    codes = [*errors, *(code for header in spec.get("headers", ()) for code in header.errors)]
    error_codes: dict[int, list[str]] = {}
    for code in codes:
        error_codes.setdefault(ERROR_TABLE[code].status, []).append(code)
    if scope is not None and FORBIDDEN in error_codes and SCOPE_MISSING not in codes:
        error_codes[FORBIDDEN].append(SCOPE_MISSING)

    def decorate(view: Callable[P, Any]) -> Callable[P, Any]:
        @functools.wraps(view)
        def answer(*args: P.args, **kwargs: P.kwargs) -> Any:
            return _render(view(*args, **kwargs), status)

        guarded: Callable[P, Any] = answer
        if scope is not None:
            needed = None if scope == "any" else list(scope) if isinstance(scope, tuple) else scope
            guarded = require_oauth(needed)(answer)
        elif optional_token:
            guarded = require_oauth(optional=True)(answer)
        describe = openapi(
            summary, tag=tag, scope=scope, status=status, error_codes=error_codes, **spec
        )
        return describe(guarded)

    return decorate


def _render(result: Any, status: int) -> Any:
    model, status = result if isinstance(result, tuple) else (result, status)
    if isinstance(model, BaseModel):
        return jsonify(model.model_dump(mode="json", by_alias=True)), status
    return result
