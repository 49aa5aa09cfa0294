"""The bearer check on API routes: header forms, scopes, expiry and revocation, also for a token
that this process serves from its verified-token cache."""

from __future__ import annotations

import time

import pytest
from sqlmodel import select

from marketplace.accounts.models import OAuthToken, Organization, hash_secret
from tests.conftest import basic_auth

ME = "/api/v1/me"
# Needs models:write; its body is checked only after the token.
CREATE_LISTING = "/api/v1/models"


@pytest.fixture
def app_config(app_config):
    app_config["ACCESS_TOKEN_TTL_S"] = 2
    app_config["TOKEN_CACHE_TTL_S"] = 0.5
    return app_config


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _cached(app, token: str) -> bool:
    return app.extensions["token_cache"].get(hash_secret(token)) is not None


@pytest.mark.parametrize(
    ("header", "status", "code"),
    [
        (None, 401, "missing_token"),
        ("", 401, "missing_token"),
        ("Bearer", 401, "invalid_token"),
        ("Basic dXNlcjpwYXNz", 401, "invalid_token"),
        ("Bearer not-a-token", 401, "invalid_token"),
    ],
    ids=["absent", "empty", "no-token", "basic", "unknown-token"],
)
def test_authorization_header_forms_are_refused_with_their_code(client, header, status, code):
    headers = {} if header is None else {"Authorization": header}
    resp = client.get(ME, headers=headers)
    assert resp.status_code == status
    assert resp.json["code"] == code
    assert resp.headers["WWW-Authenticate"].lower().startswith("bearer")


def test_the_scheme_is_case_insensitive(client, vendor):
    resp = client.get(ME, headers={"Authorization": f"bearer {vendor.token()}"})
    assert resp.status_code == 200
    assert resp.json["organization"]["id"] == vendor.id


def test_a_cached_token_is_still_held_to_its_scopes(app, client, vendor):
    token = vendor.token("models:read")
    assert client.get(ME, headers=_bearer(token)).status_code == 200
    assert _cached(app, token)
    resp = client.post(CREATE_LISTING, json={"name": "x", "task": "t"}, headers=_bearer(token))
    assert resp.status_code == 403
    assert resp.json["code"] == "insufficient_scope"
    assert resp.json["required_scopes"] == ["models:write"]
    assert 'scope="models:write"' in resp.headers["WWW-Authenticate"]


def test_a_cached_token_expires_on_time(app, client, vendor):
    token = vendor.token()
    assert client.get(ME, headers=_bearer(token)).status_code == 200
    assert _cached(app, token)
    # The cache would serve it for 0.5 s at a time; the token itself ends 2 s after issue.
    deadline = time.monotonic() + 5
    while client.get(ME, headers=_bearer(token)).status_code == 200:
        assert time.monotonic() < deadline, "an expired token was still accepted"
        time.sleep(0.1)
    resp = client.get(ME, headers=_bearer(token))
    assert resp.status_code == 401
    assert resp.json["code"] == "invalid_token"


def test_revocation_here_ends_a_cached_token_at_once(app, client, vendor):
    token = vendor.token()
    assert client.get(ME, headers=_bearer(token)).status_code == 200
    assert _cached(app, token)
    revoked = client.post(
        "/oauth/revoke",
        data={"token": token},
        headers=basic_auth(vendor.client_id, vendor.client_secret),
    )
    assert revoked.status_code == 200
    assert client.get(ME, headers=_bearer(token)).status_code == 401


@pytest.mark.parametrize("change", ["token revoked", "organisation suspended"])
def test_a_change_made_elsewhere_ends_a_cached_token_within_the_bound(
    app, client, vendor, db_session, change
):
    token = vendor.token()
    assert client.get(ME, headers=_bearer(token)).status_code == 200
    # As another process or node would: straight in the database, this process not told.
    if change == "token revoked":
        row = db_session.exec(
            select(OAuthToken).where(OAuthToken.access_token_hash == hash_secret(token))
        ).one()
        row.revoked = True
    else:
        row = db_session.get(Organization, vendor.id)
        row.suspended = True
    db_session.add(row)
    db_session.commit()
    changed = time.monotonic()
    while client.get(ME, headers=_bearer(token)).status_code == 200:
        assert time.monotonic() - changed < 0.5 + 0.2, "served past token_cache_ttl_s"
        time.sleep(0.02)
    assert client.get(ME, headers=_bearer(token)).status_code == 401
