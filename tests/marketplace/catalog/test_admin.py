"""Administrators: suspend and reinstate listings, revoke any version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient

from marketplace.accounts import services as accounts
from tests import onnx_models as builders
from tests.conftest import Org


def _admin(client: FlaskClient, db_session: Any) -> Org:
    user, org, creds = accounts.create_platform_user(
        session=db_session, email="root@example.test", password="Admin-Password-2026", role="admin"
    )
    assert org.id is not None and user.id is not None
    return Org(client, org.id, user.id, user.email, creds.client_id, creds.client_secret,
               creds.scopes)  # fmt: skip


def test_admin_suspends_reinstates_and_revokes(
    client: FlaskClient,
    db_session: Any,
    vendor: Org,
    listing: dict[str, Any],
    upload: Callable[..., Any],
) -> None:
    admin = _admin(client, db_session)
    assert upload(vendor, listing["id"], builders.relu_bytes()).status_code == 201
    base = f"/api/v1/models/{listing['id']}"
    refused = client.post(f"{base}/suspend", headers=vendor.headers())
    assert refused.status_code == 403
    resp = client.post(f"{base}/suspend", headers=admin.headers("admin"))
    assert resp.status_code == 200 and resp.json["status"] == "suspended"
    assert client.get(base).status_code == 404
    resp = client.post(f"{base}/reinstate", headers=admin.headers("admin"))
    assert resp.status_code == 200 and resp.json["status"] == "active"
    assert client.get(base).status_code == 200
    revoked = client.post(f"{base}/versions/1.0.0/revoke", headers=admin.headers("admin"))
    assert revoked.status_code == 200 and revoked.json["revoked"] is True
    missing = client.post("/api/v1/models/999999/suspend", headers=admin.headers("admin"))
    assert missing.status_code == 404 and missing.json["code"] == "model_not_found"


def test_a_global_body_limit_does_not_cap_uploads(
    vendor: Org, listing: dict[str, Any], upload: Callable[..., Any]
) -> None:
    # Flask's MAX_CONTENT_LENGTH (for forms and JSON) must not apply to model uploads, which
    # have their own limit, enforced while streaming.
    vendor.client.application.config["MAX_CONTENT_LENGTH"] = 100
    resp = upload(vendor, listing["id"], builders.relu_bytes(64))
    assert resp.status_code == 201, resp.get_data(as_text=True)
