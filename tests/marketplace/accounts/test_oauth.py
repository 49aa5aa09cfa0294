"""OAuth2: client_credentials, scopes, expiry, revocation, introspection, metadata, throttling."""

from __future__ import annotations

import datetime as dt

import pytest
from authlib.integrations.requests_client import OAuth2Session
from flask import Blueprint, jsonify
from sqlmodel import select

from marketplace.accounts.models import OAuthToken, hash_secret
from marketplace.accounts.oauth import require_oauth
from tests.conftest import basic_auth, register_org


def _token(client, org, scope=None, *, post=False):
    form = {"grant_type": "client_credentials"}
    if scope is not None:
        form["scope"] = scope
    if post:
        form |= {"client_id": org.client_id, "client_secret": org.client_secret}
        return client.post("/oauth/token", data=form)
    return client.post(
        "/oauth/token", data=form, headers=basic_auth(org.client_id, org.client_secret)
    )


@pytest.mark.parametrize("post", [False, True], ids=["client_secret_basic", "client_secret_post"])
def test_token_by_either_client_auth_method(client, vendor, post):
    resp = _token(client, vendor, "models:read models:write", post=post)
    assert resp.status_code == 200
    body = resp.json
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "models:read models:write"
    assert body["expires_in"] == 3600
    assert resp.headers["Cache-Control"] == "no-store"
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json["organization"]["id"] == vendor.id
    assert me.json["scopes"] == ["models:read", "models:write"]


def test_token_without_scope_gets_every_client_scope(client, buyer):
    resp = _token(client, buyer)
    assert set(resp.json["scope"].split()) == {
        "models:read",
        "sandbox:run",
        "licenses:write",
        "ledger:read",
    }


def test_tokens_are_stored_hashed(client, vendor, db_session):
    token = _token(client, vendor).json["access_token"]
    rows = db_session.exec(select(OAuthToken).where(OAuthToken.organization_id == vendor.id)).all()
    assert [r.access_token_hash for r in rows] == [hash_secret(token)]


def test_wrong_secret_is_401_with_www_authenticate(client, vendor):
    resp = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic_auth(vendor.client_id, "jcs_wrong"),
    )
    assert resp.status_code == 401
    assert resp.json["error"] == "invalid_client"
    assert "WWW-Authenticate" in resp.headers
    assert "jcs_wrong" not in resp.get_data(as_text=True)


def test_unknown_client_and_unsupported_grant(client, vendor):
    unknown = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic_auth("jc_nobody", "x"),
    )
    assert unknown.status_code == 401
    grant = client.post(
        "/oauth/token",
        data={"grant_type": "password"},
        headers=basic_auth(vendor.client_id, vendor.client_secret),
    )
    assert grant.status_code == 400
    assert grant.json["error"] == "unsupported_grant_type"


@pytest.mark.parametrize(
    "scope", ["models:write", "audit:read", "admin", "sandbox:run models:write", "nonsense"]
)
def test_buyer_cannot_get_scopes_its_roles_forbid(client, buyer, scope):
    resp = _token(client, buyer, scope)
    assert resp.status_code == 400
    assert resp.json["error"] == "invalid_scope"


@pytest.fixture
def probe_client(app):
    """A route that needs models:write, registered before the app serves its first request."""
    bp = Blueprint("scope_probe", __name__)

    @bp.get("/api/v1/_probe/write")
    @require_oauth("models:write")
    def probe():
        return jsonify(ok=True)

    app.register_blueprint(bp)
    return app.test_client()


def test_missing_scope_is_403_insufficient_scope(probe_client, vendor):
    client = probe_client
    ok = client.get("/api/v1/_probe/write", headers=vendor.headers("models:write"))
    assert ok.status_code == 200
    narrow = client.get("/api/v1/_probe/write", headers=vendor.headers("models:read"))
    assert narrow.status_code == 403
    assert narrow.json["code"] == "insufficient_scope"


def test_expired_token_is_401(client, vendor, db_session):
    token = _token(client, vendor).json["access_token"]
    row = db_session.exec(
        select(OAuthToken).where(OAuthToken.access_token_hash == hash_secret(token))
    ).one()
    row.issued_at = row.issued_at - dt.timedelta(seconds=row.expires_in + 1)
    db_session.add(row)
    db_session.commit()
    resp = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    assert resp.json["code"] == "invalid_token"
    assert "invalid_token" in resp.headers["WWW-Authenticate"]


def test_garbage_token_is_401(client):
    resp = client.get("/api/v1/me", headers={"Authorization": "Bearer not-a-token"})
    assert resp.status_code == 401
    assert resp.json["code"] == "invalid_token"


def test_revocation_and_introspection(client, vendor, buyer):
    token = _token(client, vendor).json["access_token"]
    auth = basic_auth(vendor.client_id, vendor.client_secret)

    active = client.post("/oauth/introspect", data={"token": token}, headers=auth)
    assert active.status_code == 200
    assert active.json["active"] is True
    assert active.json["client_id"] == vendor.client_id
    assert active.json["exp"] - active.json["iat"] == 3600

    # Another organisation's client may not learn anything about the token.
    foreign = client.post(
        "/oauth/introspect",
        data={"token": token},
        headers=basic_auth(buyer.client_id, buyer.client_secret),
    )
    assert foreign.status_code in (400, 401, 403) or foreign.json.get("active") is False

    revoked = client.post("/oauth/revoke", data={"token": token}, headers=auth)
    assert revoked.status_code == 200
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    after = client.post("/oauth/introspect", data={"token": token}, headers=auth)
    assert after.json == {"active": False}


def test_server_metadata(client):
    resp = client.get("/.well-known/oauth-authorization-server")
    assert resp.status_code == 200
    meta = resp.json
    assert meta["token_endpoint"].endswith("/oauth/token")
    assert meta["revocation_endpoint"].endswith("/oauth/revoke")
    assert meta["introspection_endpoint"].endswith("/oauth/introspect")
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert "audit:read" in meta["scopes_supported"]


def test_repeated_failures_are_rate_limited(app, client, vendor):
    limit = app.extensions["settings"].token_failures_max
    bad = basic_auth(vendor.client_id, "jcs_guess")
    for _ in range(limit):
        assert (
            client.post(
                "/oauth/token", data={"grant_type": "client_credentials"}, headers=bad
            ).status_code
            == 401
        )
    throttled = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic_auth(vendor.client_id, vendor.client_secret),
    )
    assert throttled.status_code == 429
    assert throttled.json["error"] == "slow_down"
    assert int(throttled.headers["Retry-After"]) >= 1
    # Other clients are unaffected.
    other = register_org(client, ["buyer"])
    assert _token(client, other).status_code == 200


def test_real_oauth_client_against_a_live_server(live_server, monkeypatch):
    import requests

    server = live_server()
    resp = requests.post(
        f"{server.url}/api/v1/register",
        json={
            "email": "live@example.test",
            "password": "Correct-Horse-9-Battery",
            "organization_name": "Live Org",
            "organization_roles": ["buyer"],
        },
        timeout=10,
    )
    assert resp.status_code == 201
    creds = resp.json()["client"]
    # Authlib refuses plain HTTP unless told: the live server is on loopback without TLS.
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    for method in ("client_secret_basic", "client_secret_post"):
        with OAuth2Session(
            creds["client_id"],
            creds["client_secret"],
            scope="models:read ledger:read",
            token_endpoint_auth_method=method,
        ) as session:
            token = session.fetch_token(
                f"{server.url}/oauth/token", grant_type="client_credentials"
            )
            assert token["scope"] == "ledger:read models:read"
            me = session.get(f"{server.url}/api/v1/me", timeout=10)
            assert me.status_code == 200
            assert me.json()["organization"]["roles"] == ["buyer"]
            session.revoke_token(f"{server.url}/oauth/revoke", token=token["access_token"])
            assert session.get(f"{server.url}/api/v1/me", timeout=10).status_code == 401


def test_passwords_and_secrets_never_reach_the_logs(client, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    password = "Correct-Horse-9-Battery"
    resp = client.post(
        "/api/v1/register",
        json={
            "email": "log@example.test",
            "password": password,
            "organization_name": "L",
            "organization_roles": ["buyer"],
        },
    )
    secret = resp.json["client"]["client_secret"]
    client_id = resp.json["client"]["client_id"]
    token = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic_auth(client_id, secret),
    ).json["access_token"]
    client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic_auth(client_id, "jcs_wrong-guess"),
    )
    client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    for value in (password, secret, token, "jcs_wrong-guess"):
        assert value not in logged
