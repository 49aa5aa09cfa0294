"""Hostile offers and model cards over HTTP: currencies, amounts, metered downloads, images."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.live_api import LiveOrg
from tests.marketplace.catalog.conftest import listing_body
from tests.marketplace.catalog.test_offers import offer_body


@pytest.fixture
def vendor_listing(live_server: Any) -> tuple[LiveOrg, int]:
    server = live_server()
    vendor = LiveOrg.register(server, ["vendor"])
    listing = vendor.call("POST", "/api/v1/models", json=listing_body())
    assert listing.status_code == 201, listing.text
    return vendor, listing.json()["id"]


def test_offer_in_a_currency_the_ledger_does_not_know_is_422(vendor_listing):
    vendor, listing_id = vendor_listing
    offers = f"/api/v1/models/{listing_id}/offers"
    unknown = vendor.call("POST", offers, json=offer_body(currency="XYZ"))
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["code"] == "unknown_currency"
    assert vendor.call("GET", offers).json()["items"] == []
    assert vendor.call("POST", offers, json=offer_body(currency="CNY")).status_code == 201


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("price_minor", "100"),
        ("price_minor", True),
        ("price_minor", 100.0),
        ("royalty_per_1k_minor", "5"),
        ("royalty_per_1k_minor", False),
    ],
)
def test_offer_amounts_are_strict_integers(vendor_listing, field, value):
    vendor, listing_id = vendor_listing
    resp = vendor.call(
        "POST", f"/api/v1/models/{listing_id}/offers", json=offer_body(**{field: value})
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == "validation_failed"
    assert field in [e["field"] for e in resp.json()["errors"]]


def test_a_metered_offer_cannot_hand_out_the_weights(vendor_listing):
    vendor, listing_id = vendor_listing
    metered = offer_body(kind="per_inference", price_minor=0, royalty_per_1k_minor=500)
    refused = vendor.call(
        "POST", f"/api/v1/models/{listing_id}/offers", json={**metered, "allow_download": True}
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "validation_failed"
    assert "allow_download" in refused.text
    fine = vendor.call(
        "POST", f"/api/v1/models/{listing_id}/offers", json={**metered, "allow_download": False}
    )
    assert fine.status_code == 201, fine.text


CARD = """# Card

![pixel](https://tracker.example/p.gif?who=buyer)
![scheme-relative](//tracker.example/q.gif)
![backslashes](\\\\tracker.example\\r.gif)
![diagram](/media/diagram.png)

<img src="https://tracker.example/raw.gif">

[homepage](https://vendor.example/)
"""


def test_model_cards_load_no_remote_images(vendor_listing):
    vendor, listing_id = vendor_listing
    updated = vendor.call("PATCH", f"/api/v1/models/{listing_id}", json={"description_md": CARD})
    assert updated.status_code == 200, updated.text
    shown = vendor.call("GET", f"/api/v1/models/{listing_id}").json()["description_html"]
    sources = re.findall(r"<img[^>]*\bsrc=\"([^\"]*)\"", shown)
    assert sources == ["/media/diagram.png"], shown
    assert "tracker.example" not in "".join(re.findall(r"<img[^>]*>", shown))
    # Remote images become plain links, so a reader can still follow them on purpose.
    assert '<a href="https://tracker.example/p.gif?who=buyer"' in shown
    assert ">pixel</a>" in shown
    assert '<a href="https://vendor.example/"' in shown
