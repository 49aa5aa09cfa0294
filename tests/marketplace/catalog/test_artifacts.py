"""Artifact download and version revocation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flask.testing import FlaskClient

from marketplace.catalog import services
from tests import onnx_models as builders
from tests.conftest import Org
from tests.marketplace.catalog.test_offers import offer_body


def _buy(client: FlaskClient, buyer: Org, offer: dict[str, Any]) -> None:
    key = f"offer-{offer['id']}"
    resp = client.post(
        "/api/v1/wallet/top-ups",
        json={"amount_minor": offer["price_minor"], "currency": offer["currency"]},
        headers=buyer.headers("licenses:write", **{"Idempotency-Key": f"top-up-{key}"}),
    )
    assert resp.status_code == 201, resp.json
    resp = client.post(
        f"/api/v1/offers/{offer['id']}/purchase",
        json={"accept_terms_sha256": offer["terms_sha256"]},
        headers=buyer.headers("licenses:write", **{"Idempotency-Key": f"buy-{key}"}),
    )
    assert resp.status_code == 201, resp.json


def test_owner_and_licensee_download_others_do_not(
    client: FlaskClient,
    vendor: Org,
    make_org: Callable[..., Org],
    listing: dict[str, Any],
    upload: Callable[..., Any],
) -> None:
    data = builders.relu_bytes()
    assert upload(vendor, listing["id"], data).status_code == 201
    url = f"/api/v1/models/{listing['id']}/versions/1.0.0/artifact"
    mine = client.get(url, headers=vendor.headers())
    assert mine.status_code == 200
    assert mine.data == data
    assert mine.headers["Content-Type"] == "application/octet-stream"
    assert "steel-defect-detector-1.0.0.onnx" in mine.headers["Content-Disposition"]
    assert "no-store" in mine.headers["Cache-Control"]

    buyer, stranger = make_org(["buyer"]), make_org(["buyer"])
    no_download = client.post(
        f"/api/v1/models/{listing['id']}/offers",
        json=offer_body(name="Run only", allow_download=False, price_minor=100),
        headers=vendor.headers("models:write"),
    ).json
    _buy(client, buyer, no_download)
    refused = client.get(url, headers=buyer.headers())
    assert refused.status_code == 403 and refused.json["code"] == "download_not_allowed"
    downloadable = client.post(
        f"/api/v1/models/{listing['id']}/offers",
        json=offer_body(name="With download", allow_download=True, price_minor=200),
        headers=vendor.headers("models:write"),
    ).json
    _buy(client, buyer, downloadable)
    allowed = client.get(url, headers=buyer.headers())
    assert allowed.status_code == 200 and allowed.data == data
    assert client.get(url, headers=stranger.headers()).json["code"] == "download_not_allowed"
    assert client.get(url).status_code == 401

    # Who may download is the policy the app injects (licensing's); without it, vendors only.
    app = client.application
    licensing_access = app.extensions["artifact_access"]
    assert licensing_access.may_download is not services.vendor_only
    app.extensions["artifact_access"] = replace(licensing_access, may_download=services.vendor_only)
    try:
        assert client.get(url, headers=buyer.headers()).json["code"] == "download_not_allowed"
        assert client.get(url, headers=vendor.headers()).status_code == 200
    finally:
        app.extensions["artifact_access"] = licensing_access
    missing = client.get(url.replace("1.0.0", "9.9.9"), headers=vendor.headers())
    assert missing.status_code == 404 and missing.json["code"] == "version_not_found"


def test_revoked_versions_cannot_be_downloaded(
    client: FlaskClient,
    vendor: Org,
    make_org: Callable[..., Org],
    listing: dict[str, Any],
    upload: Callable[..., Any],
) -> None:
    assert upload(vendor, listing["id"], builders.relu_bytes()).status_code == 201
    base = f"/api/v1/models/{listing['id']}/versions/1.0.0"
    other = make_org(["vendor"])
    assert client.post(f"{base}/revoke", headers=other.headers("models:write")).status_code == 404
    assert client.post(f"{base}/revoke", headers=vendor.headers("models:read")).status_code == 403
    resp = client.post(f"{base}/revoke", headers=vendor.headers("models:write"))
    assert resp.status_code == 200
    assert resp.json["revoked"] is True and resp.json["revoked_at"]
    assert client.post(f"{base}/revoke", headers=vendor.headers("models:write")).status_code == 200
    gone = client.get(f"{base}/artifact", headers=vendor.headers())
    assert gone.status_code == 410 and gone.json["code"] == "version_revoked"
    assert client.get(base).json["revoked"] is True
    # The version number stays taken: versions are immutable, even revoked ones.
    again = upload(vendor, listing["id"], builders.relu_bytes(8))
    assert again.status_code == 409


def test_evaluator_lookup(
    app: Any, vendor: Org, listing: dict[str, Any], upload: Callable[..., Any]
) -> None:
    data = builders.relu_bytes()
    assert upload(vendor, listing["id"], data).status_code == 201
    session = app.extensions["db"].session()
    try:
        version, found = services.get_version_for_evaluation(session, listing["id"], "1.0.0")
        assert found.id == listing["id"]
        assert services.load_model_bytes(app.extensions["blob_store"], version) == data
    finally:
        session.close()
