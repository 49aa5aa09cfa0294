"""POST /api/v1/register and the organisation's API clients."""

from __future__ import annotations

import pytest
from sqlmodel import select

from marketplace.accounts.models import OAuthClient, User, hash_secret
from tests.conftest import register_org

GOOD = {
    "email": "Ada@Example.test",
    "password": "Correct-Horse-9-Battery",
    "organization_name": "Analytical Engines 分析机",
    "organization_roles": ["vendor", "buyer"],
}


def test_register_returns_first_client_once_and_stores_only_hashes(client, db_session):
    resp = client.post("/api/v1/register", json=GOOD)
    assert resp.status_code == 201
    body = resp.json
    creds = body["client"]
    assert set(body) == {"user_id", "organization_id", "client"}
    assert creds["client_secret"].startswith("jcs_")
    assert set(creds["scopes"]) == {
        "models:read",
        "models:write",
        "sandbox:run",
        "licenses:write",
        "ledger:read",
        "clients:manage",  # the first client may manage clients, when its token asks for it
        "payouts:write",
    }
    user = db_session.exec(select(User).where(User.email == "ada@example.test")).one()
    assert user.password_hash.startswith("$argon2id$")
    assert GOOD["password"] not in user.password_hash
    row = db_session.exec(
        select(OAuthClient).where(OAuthClient.client_id == creds["client_id"])
    ).one()
    assert row.client_secret_hash == hash_secret(creds["client_secret"])
    assert creds["client_secret"] not in row.client_secret_hash

    listed = client.get(
        f"/api/v1/organizations/{body['organization_id']}/clients",
        headers={"Authorization": "Bearer " + _token(client, creds)},
    )
    assert listed.status_code == 200
    assert [c["client_secret"] for c in listed.json["items"]] == [None]


def _token(client, creds, scope=None):
    form = {
        "grant_type": "client_credentials",
        "client_id": creds["client_id"],
        "client_secret": creds["client_secret"],
    }
    if scope:
        form["scope"] = scope
    resp = client.post("/oauth/token", data=form)
    assert resp.status_code == 200, resp.json
    return resp.json["access_token"]


def test_duplicate_email_is_409_whatever_the_case(client):
    assert client.post("/api/v1/register", json=GOOD).status_code == 201
    again = client.post("/api/v1/register", json={**GOOD, "email": "ADA@example.TEST"})
    assert again.status_code == 409
    assert again.json["code"] == "email_taken"
    assert again.mimetype == "application/problem+json"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"password": "short1!"}, "password"),
        ({"password": "aaaaaaaaaaaaaaaa"}, "password"),
        ({"password": "password1234"}, "password"),
        ({"email": "not-an-address"}, "email"),
        ({"email": "x" * 300 + "@example.test"}, "email"),
        ({"organization_name": ""}, "organization_name"),
        ({"organization_name": "n" * 201}, "organization_name"),
        ({"organization_roles": []}, "organization_roles"),
        ({"organization_roles": ["admin"]}, "organization_roles.0"),
        ({"organization_roles": "vendor"}, "organization_roles"),
        ({"email": 12}, "email"),
        ({"unexpected": True}, "unexpected"),
    ],
)
def test_invalid_registration_is_422_with_field_errors(client, change, field):
    resp = client.post("/api/v1/register", json={**GOOD, **change})
    assert resp.status_code == 422
    assert resp.json["code"] == "validation_failed"
    assert field in [e["field"] for e in resp.json["errors"]]
    assert "Correct-Horse" not in resp.get_data(as_text=True)


@pytest.mark.parametrize(
    "missing", ["email", "password", "organization_name", "organization_roles"]
)
def test_missing_field_is_422(client, missing):
    body = {k: v for k, v in GOOD.items() if k != missing}
    resp = client.post("/api/v1/register", json=body)
    assert resp.status_code == 422
    assert missing in [e["field"] for e in resp.json["errors"]]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        ("[1, 2]", "application/json", 422, "body_not_object"),
        ('"text"', "application/json", 422, "body_not_object"),
        ("{not json", "application/json", 422, "malformed_json"),
        ("email=a", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
def test_body_that_is_not_a_json_object(client, data, content_type, status, code):
    resp = client.post("/api/v1/register", data=data, content_type=content_type)
    assert resp.status_code == status
    assert resp.json["code"] == code


def test_oversized_json_is_413(client, app):
    limit = app.extensions["settings"].json_body_bytes_max
    resp = client.post(
        "/api/v1/register", data='{"email": "' + "a" * limit + '"}', content_type="application/json"
    )
    assert resp.status_code == 413
    assert resp.json["code"] == "payload_too_large"


def test_more_clients_with_chosen_scopes(client, vendor):
    resp = client.post(
        f"/api/v1/organizations/{vendor.id}/clients",
        json={"name": "CI uploader", "scopes": ["models:write"]},
        headers=vendor.headers("clients:manage models:write"),
    )
    assert resp.status_code == 201
    assert resp.json["scopes"] == ["models:write"]
    assert resp.json["client_secret"]
    listed = client.get(f"/api/v1/organizations/{vendor.id}/clients", headers=vendor.headers())
    assert [c["name"] for c in listed.json["items"]] == ["Default client", "CI uploader"]


def test_client_scopes_are_limited_by_roles_and_by_the_granting_token(client, buyer):
    over_role = client.post(
        f"/api/v1/organizations/{buyer.id}/clients",
        json={"scopes": ["models:write"]},
        headers=buyer.headers("clients:manage"),
    )
    assert over_role.status_code == 403
    assert over_role.json["code"] == "scope_not_allowed"
    over_token = client.post(
        f"/api/v1/organizations/{buyer.id}/clients",
        json={"scopes": ["licenses:write"]},
        headers=buyer.headers("clients:manage models:read"),
    )
    assert over_token.status_code == 403
    assert over_token.json["code"] == "scope_not_allowed"


def test_a_new_client_defaults_to_the_granting_tokens_scopes_without_clients_manage(client, buyer):
    made = client.post(
        f"/api/v1/organizations/{buyer.id}/clients",
        json={"name": "reader"},
        headers=buyer.headers("clients:manage models:read ledger:read"),
    )
    assert made.status_code == 201, made.get_data(as_text=True)
    assert made.json["scopes"] == ["ledger:read", "models:read"]
    nothing = client.post(
        f"/api/v1/organizations/{buyer.id}/clients",
        json={"name": "empty"},
        headers=buyer.headers("clients:manage"),
    )
    assert nothing.status_code == 422
    assert nothing.json["code"] == "no_scopes"


def test_member_of_another_org_gets_404(client, vendor, buyer):
    for method in ("get", "post"):
        resp = getattr(client, method)(
            f"/api/v1/organizations/{vendor.id}/clients",
            json={},
            headers=buyer.headers("clients:manage"),
        )
        assert resp.status_code == 404
        assert resp.json["code"] == "organization_not_found"
    missing = client.get("/api/v1/organizations/999999/clients", headers=buyer.headers())
    assert missing.status_code == 404


def test_clients_endpoint_requires_a_token(client, vendor):
    resp = client.get(f"/api/v1/organizations/{vendor.id}/clients")
    assert resp.status_code == 401
    assert resp.json["code"] == "missing_token"
    assert "Bearer" in resp.headers["WWW-Authenticate"]


def test_registered_orgs_are_independent(client):
    a = register_org(client, ["vendor"])
    b = register_org(client, ["buyer"])
    assert a.id != b.id and a.client_id != b.client_id


def test_deeply_nested_json_is_422_not_500(client):
    raw = '{"email": ' + "[" * 100_000 + "]" * 100_000 + "}"
    resp = client.post("/api/v1/register", data=raw, content_type="application/json")
    assert resp.status_code == 422
    assert resp.json["code"] == "malformed_json"
