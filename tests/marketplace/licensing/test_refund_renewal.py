"""Refunding one order of a renewed subscription takes its term out of the renewal's expiry."""

from __future__ import annotations

import datetime as dt

from tests.live_api import LiveOrg, platform_org
from tests.marketplace.catalog.conftest import listing_body

TERM_DAYS = 30


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_refunding_the_first_order_of_a_renewed_subscription(live_server):
    server = live_server()
    vendor = LiveOrg.register(server, ["vendor"])
    buyer = LiveOrg.register(server, ["buyer"])
    admin = platform_org(server)
    listing = vendor.call("POST", "/api/v1/models", json=listing_body()).json()
    offer = vendor.call(
        "POST",
        f"/api/v1/models/{listing['id']}/offers",
        json={
            "name": "Monthly",
            "kind": "subscription",
            "currency": "CNY",
            "price_minor": 1_000,
            "term_days": TERM_DAYS,
        },
    ).json()
    top_up = buyer.call(
        "POST",
        "/api/v1/wallet/top-ups",
        json={"amount_minor": 10_000, "currency": "CNY"},
        headers={"Idempotency-Key": "fund"},
    )
    assert top_up.status_code == 201, top_up.text

    def buy(key: str) -> dict:
        resp = buyer.call(
            "POST",
            f"/api/v1/offers/{offer['id']}/purchase",
            json={"accept_terms_sha256": offer["terms_sha256"]},
            headers={"Idempotency-Key": key},
        )
        assert resp.status_code == 201, resp.text
        return resp.json()

    def licence(order: dict) -> dict:
        return buyer.call("GET", f"/api/v1/licenses/{order['licence_id']}").json()

    first, renewal = buy("month-1"), buy("month-2")
    renewed = licence(renewal)
    term = dt.timedelta(days=TERM_DAYS)
    # The renewal, bought during the first term, runs on from the first term's end.
    assert _at(renewed["expires_at"]) == _at(licence(first)["expires_at"]) + term

    refund = admin.call(
        "POST",
        f"/api/v1/orders/{first['id']}/refund",
        scope="admin",
        json={},
        headers={"Idempotency-Key": "r"},
    )
    assert refund.status_code == 201, refund.text
    assert licence(first)["status"] == "revoked"
    # The first term was taken back, so the renewal covers one term from its own purchase.
    after = licence(renewal)
    assert after["status"] == "active"
    assert _at(after["expires_at"]) == _at(after["created_at"]) + term
