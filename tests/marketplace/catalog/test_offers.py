"""Offers: immutable terms identified by the SHA-256 of their canonical form; retire, not edit."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from marketplace.catalog.models import Offer, canonical_terms
from tests.conftest import Org


def offer_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Perpetual, on premises",
        "kind": "perpetual",
        "currency": "CNY",
        "price_minor": 1_999_900,
        "royalty_per_1k_minor": 0,
        "trial_calls": 100,
        "trial_days": 14,
        "allow_download": True,
        "commercial_use": True,
        "terms_md": "仅限一个工厂使用。\nOne site only.",
    }
    body.update(overrides)
    return body


def test_create_offer_and_its_terms_hash(
    client: FlaskClient, vendor: Org, listing: dict[str, Any]
) -> None:
    resp = client.post(
        f"/api/v1/models/{listing['id']}/offers",
        json=offer_body(),
        headers=vendor.headers("models:write"),
    )
    assert resp.status_code == 201, resp.json
    offer = resp.json
    canonical = {
        "v": 1,
        "allow_download": True,
        "commercial_use": True,
        "currency": "CNY",
        "kind": "perpetual",
        "listing_id": listing["id"],
        "name": "Perpetual, on premises",
        "price_minor": 1_999_900,
        "royalty_per_1k_minor": 0,
        "term_days": None,
        "terms_md": "仅限一个工厂使用。\nOne site only.",
        "trial_calls": 100,
        "trial_days": 14,
    }
    expected = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert offer["terms_sha256"] == hashlib.sha256(expected.encode()).hexdigest()
    assert offer["active"] is True
    detail = client.get(f"/api/v1/models/{listing['id']}").json
    assert [o["id"] for o in detail["offers"]] == [offer["id"]]


def test_canonical_terms_change_with_every_field() -> None:
    base = Offer(listing_id=1, terms_sha256="", **offer_body())
    seen = {canonical_terms(base)}
    for field, value in [("price_minor", 1), ("terms_md", "x"), ("allow_download", False),
                         ("listing_id", 2), ("trial_calls", 0), ("currency", "USD")]:  # fmt: skip
        changed = base.model_copy(update={field: value})
        seen.add(canonical_terms(changed))
    assert len(seen) == 7


@pytest.mark.parametrize(
    "overrides",
    [
        {"kind": "lease"},
        {"currency": "cny"},
        {"currency": "YUAN"},
        {"price_minor": -1},
        {"price_minor": 1.5},
        {"kind": "subscription"},  # needs term_days
        {"kind": "per_inference", "royalty_per_1k_minor": 0},
        {"term_days": 30},  # perpetual has no term
        {"trial_days": 1000},
        {"surprise": True},
    ],
)
def test_invalid_offers(
    client: FlaskClient, vendor: Org, listing: dict[str, Any], overrides: dict[str, Any]
) -> None:
    resp = client.post(
        f"/api/v1/models/{listing['id']}/offers",
        json=offer_body(**overrides),
        headers=vendor.headers("models:write"),
    )
    assert resp.status_code == 422, overrides


def test_only_the_owner_publishes_and_retires(
    client: FlaskClient, vendor: Org, make_org: Callable[..., Org], listing: dict[str, Any]
) -> None:
    other = make_org(["vendor"])
    url = f"/api/v1/models/{listing['id']}/offers"
    assert (
        client.post(url, json=offer_body(), headers=other.headers("models:write")).json["code"]
        == "model_not_found"
    )
    offer = client.post(url, json=offer_body(), headers=vendor.headers("models:write")).json
    retire = f"{url}/{offer['id']}/retire"
    assert client.post(retire, headers=other.headers("models:write")).status_code == 404
    resp = client.post(retire, headers=vendor.headers("models:write"))
    assert resp.status_code == 200
    assert resp.json["active"] is False and resp.json["retired_at"]
    assert resp.json["terms_sha256"] == offer["terms_sha256"]
    again = client.post(retire, headers=vendor.headers("models:write"))
    assert again.status_code == 409 and again.json["code"] == "offer_retired"
    assert client.get(f"/api/v1/models/{listing['id']}").json["offers"] == []
    public = client.get(url).json["items"]
    assert public == []
    own = client.get(url, headers=vendor.headers()).json["items"]
    assert [o["id"] for o in own] == [offer["id"]]
    missing = client.post(f"{url}/999999/retire", headers=vendor.headers("models:write"))
    assert missing.status_code == 404 and missing.json["code"] == "offer_not_found"


def test_offers_cannot_be_edited(client: FlaskClient, vendor: Org, listing: dict[str, Any]) -> None:
    url = f"/api/v1/models/{listing['id']}/offers"
    offer = client.post(url, json=offer_body(), headers=vendor.headers("models:write")).json
    for method in (client.put, client.patch, client.delete):
        resp = method(f"{url}/{offer['id']}", json={"price_minor": 1},
                      headers=vendor.headers("models:write"))  # fmt: skip
        assert resp.status_code in (404, 405)
