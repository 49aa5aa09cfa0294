"""Errors a client reads: the scope it lacks, RFC 6749 errors in words, one title per code."""

from __future__ import annotations

import pytest

from marketplace.errors import DomainError, NotFound, problem_title
from tests.conftest import basic_auth


def test_insufficient_scope_names_the_scope_needed(client, buyer):
    resp = client.post("/api/v1/models", json={}, headers=buyer.headers("models:read"))
    assert resp.status_code == 403
    assert resp.json["code"] == "insufficient_scope"
    assert resp.json["required_scopes"] == ["models:write"]
    assert "models:write" in resp.json["detail"]
    assert "insufficient_scope" in resp.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("form", "auth", "error"),
    [
        ({"grant_type": "password"}, True, "unsupported_grant_type"),
        ({}, True, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "scope": "no-such-scope"}, True, "invalid_scope"),
        ({"grant_type": "client_credentials", "client_id": "jc_nobody"}, False, "invalid_client"),
        # Characters an error_description may not hold: the scope is not echoed (was a 500).
        ({"grant_type": "client_credentials", "scope": "réglages"}, True, "invalid_scope"),
        ({"grant_type": "client_credentials", "scope": 'a"b c\\d'}, True, "invalid_scope"),
        ({"grant_type": "client_credentials", "scope": " ".join("x" * 9)}, True, "invalid_scope"),
    ],
    ids=["grant", "no-grant", "scope", "client", "non-ascii-scope", "quoted-scope", "many"],
)
def test_oauth_errors_keep_rfc_6749_with_readable_descriptions(client, buyer, form, auth, error):
    headers = basic_auth(buyer.client_id, buyer.client_secret) if auth else {}
    resp = client.post("/oauth/token", data=form, headers=headers)
    assert resp.status_code in (400, 401)
    assert set(resp.json) == {"error", "error_description"}
    assert resp.json["error"] == error
    description = resp.json["error_description"]
    assert description and not any(mark in description for mark in "[]{}'\\"), description


@pytest.mark.parametrize("path", ["/oauth/revoke", "/oauth/introspect"])
def test_token_endpoints_describe_a_missing_token(client, buyer, path):
    resp = client.post(path, data={}, headers=basic_auth(buyer.client_id, buyer.client_secret))
    assert resp.status_code == 400
    assert resp.json["error"] == "invalid_request" and resp.json["error_description"]


def test_a_code_has_one_title_wherever_it_is_raised(client, buyer):
    # The router's 404 and a service's NotFound share the code, and so the title.
    router = client.get("/api/v1/no-such-thing").json
    service = client.get("/api/v1/models/999999").json
    assert router["code"] == "not_found" and router["title"] == problem_title("not_found")
    assert service["code"] == "model_not_found"
    assert service["title"] == problem_title("model_not_found")
    # A class reused with another code takes that code's title, not its own.
    borrowed = client.get("/api/v1/licenses/999999", headers=buyer.headers()).json
    assert borrowed["title"] == problem_title(borrowed["code"])
    assert problem_title(NotFound.code) == NotFound().title == "Not found"


def test_no_error_class_chooses_its_own_title_or_status():
    # ERROR_TABLE in marketplace/errors.py is the one place a code's title and status are set.
    def walk(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)

    own = [c.__name__ for c in walk(DomainError) if {"title", "status"} & set(c.__dict__)]
    assert own == []
