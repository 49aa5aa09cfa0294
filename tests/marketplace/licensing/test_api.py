"""Wallet, trial, purchase, licence and refund API, through the test client."""

from __future__ import annotations

import pytest

from marketplace.ledger import services as ledger
from marketplace.ledger.models import PLATFORM_REVENUE, VENDOR_PAYABLE
from tests.marketplace.licensing.builders import account_posted, make_offer

BUY = "licenses:write"


@pytest.fixture
def catalog(db_session, vendor):
    return make_offer(db_session, vendor.id, price_minor=10_000, trial_calls=3, trial_days=7)


def top_up(client, org, amount, currency="CNY", key="t1"):
    return client.post(
        "/api/v1/wallet/top-ups",
        json={"amount_minor": amount, "currency": currency},
        headers=org.headers(BUY, **{"Idempotency-Key": key}),
    )


def buy(client, org, catalog, key="k1", terms=None):
    return client.post(
        f"/api/v1/offers/{catalog.offer_id}/purchase",
        json={"accept_terms_sha256": terms or catalog.terms_sha256},
        headers=org.headers(BUY, **{"Idempotency-Key": key}),
    )


def test_top_up_is_idempotent_and_simulated(client, buyer, db_session):
    first = top_up(client, buyer, 5_000)
    assert first.status_code == 201, first.json
    assert first.json["status"] == "succeeded"
    assert first.json["payment"] == {
        "provider": "offline",
        "simulated": True,
        "client_secret": None,
    }
    again = top_up(client, buyer, 5_000)
    assert again.json["id"] == first.json["id"]
    other = top_up(client, buyer, 6_000)
    assert other.status_code == 409 and other.json["code"] == "idempotency_key_reused"
    wallet = client.get("/api/v1/wallet", headers=buyer.headers()).json
    assert wallet["balances"] == [
        {
            "currency": "CNY",
            "exponent": 2,
            "balance_minor": 5_000,
            "held_minor": 0,
            "available_minor": 5_000,
            "balance_display": "¥50.00",
            "held_display": "¥0.00",
            "available_display": "¥50.00",
        }
    ]
    assert ledger.check_invariants(db_session) == []


def test_top_up_needs_a_key_and_a_known_currency(client, buyer):
    resp = client.post(
        "/api/v1/wallet/top-ups",
        json={"amount_minor": 1, "currency": "CNY"},
        headers=buyer.headers(BUY),
    )
    assert resp.status_code == 400 and resp.json["code"] == "idempotency_key_required"
    assert top_up(client, buyer, 100, currency="XTS").json["code"] == "unknown_currency"
    assert top_up(client, buyer, 0, key="t2").status_code == 422


def test_trial_needs_current_terms_and_is_granted_once(client, buyer, catalog):
    url = f"/api/v1/offers/{catalog.offer_id}/trial"
    wrong = client.post(url, json={"accept_terms_sha256": "a" * 64}, headers=buyer.headers(BUY))
    assert wrong.status_code == 409 and wrong.json["code"] == "terms_mismatch"
    ok = client.post(
        url, json={"accept_terms_sha256": catalog.terms_sha256}, headers=buyer.headers(BUY)
    )
    assert ok.status_code == 201, ok.json
    assert ok.json["kind"] == "trial" and ok.json["calls_remaining"] == 3
    assert ok.json["expires_at"] is not None
    again = client.post(
        url, json={"accept_terms_sha256": catalog.terms_sha256}, headers=buyer.headers(BUY)
    )
    assert again.status_code == 409 and again.json["code"] == "trial_taken"


def test_purchase_moves_the_price_in_one_transaction(client, buyer, vendor, catalog, db_session):
    assert top_up(client, buyer, 12_345).status_code == 201
    resp = buy(client, buyer, catalog)
    assert resp.status_code == 201, resp.json
    order = resp.json
    assert order["status"] == "paid" and order["amount_minor"] == 10_000
    tx = ledger.get_transaction(db_session, order["ledger_transaction_id"])
    assert tx is not None and tx.kind == "purchase" and len(tx.legs) == 3
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 9_000
    assert account_posted(db_session, None, PLATFORM_REVENUE) >= 1_000
    wallet = client.get("/api/v1/wallet", headers=buyer.headers()).json["balances"][0]
    assert wallet["available_minor"] == 2_345
    licence = client.get(f"/api/v1/licenses/{order['licence_id']}", headers=buyer.headers()).json
    assert licence["kind"] == "perpetual" and licence["status"] == "active"
    # Same key and body: the same order, nothing new.
    replay = buy(client, buyer, catalog)
    assert replay.status_code == 200 and replay.json == order
    # Same key, another body.
    other = buy(client, buyer, catalog, terms="b" * 64)
    assert other.status_code == 409 and other.json["code"] == "idempotency_key_reused"
    # A second perpetual licence for the same offer is refused.
    assert buy(client, buyer, catalog, key="k2").json["code"] == "already_licensed"
    assert ledger.check_invariants(db_session) == []


def test_purchase_without_funds_is_402_with_the_missing_amount(client, buyer, catalog):
    assert top_up(client, buyer, 4_000).status_code == 201
    resp = buy(client, buyer, catalog)
    assert resp.status_code == 402
    assert resp.json["code"] == "insufficient_funds"
    assert resp.json["missing_minor"] == 6_000 and resp.json["currency"] == "CNY"
    assert client.get("/api/v1/licenses", headers=buyer.headers()).json["items"] == []


def test_retired_offers_cannot_be_bought_or_trialled(client, buyer, catalog, db_session):
    from marketplace.catalog.models import Offer
    from marketplace.db import utcnow

    offer = db_session.get(Offer, catalog.offer_id)
    offer.retired_at = utcnow()
    db_session.add(offer)
    db_session.commit()
    assert top_up(client, buyer, 20_000).status_code == 201
    assert buy(client, buyer, catalog).json["code"] == "offer_retired"
    trial = client.post(
        f"/api/v1/offers/{catalog.offer_id}/trial",
        json={"accept_terms_sha256": catalog.terms_sha256},
        headers=buyer.headers(BUY),
    )
    assert trial.json["code"] == "offer_retired"


def test_subscription_expires_after_its_term_and_renewal_extends(client, buyer, vendor, db_session):
    sub = make_offer(db_session, vendor.id, kind="subscription", price_minor=1_000, term_days=30)
    assert top_up(client, buyer, 2_000).status_code == 201
    first = buy(client, buyer, sub, key="s1").json
    second = buy(client, buyer, sub, key="s2").json
    licences = {
        lic["id"]: lic
        for lic in client.get("/api/v1/licenses", headers=buyer.headers()).json["items"]
    }
    a = licences[first["licence_id"]]["expires_at"]
    b = licences[second["licence_id"]]["expires_at"]
    import datetime as dt

    gap = dt.datetime.fromisoformat(b) - dt.datetime.fromisoformat(a)
    assert gap == dt.timedelta(days=30)


def test_no_organisation_sees_anothers_licences_or_entries(client, buyer, make_org, catalog):
    other = make_org(["buyer"])
    assert top_up(client, buyer, 10_000).status_code == 201
    order = buy(client, buyer, catalog).json
    assert (
        client.get(f"/api/v1/licenses/{order['licence_id']}", headers=other.headers()).status_code
        == 404
    )
    assert client.get("/api/v1/licenses", headers=other.headers()).json["items"] == []
    statement = client.get("/api/v1/ledger/statement", headers=other.headers("ledger:read")).json
    assert statement["entries"] == [] and statement["accounts"] == []
    mine = client.get(
        "/api/v1/ledger/statement?currency=CNY", headers=buyer.headers("ledger:read")
    ).json
    assert [e["kind"] for e in mine["entries"]] == ["top_up", "purchase"]
    assert mine["accounts"][0]["balance_minor"] == 0


def test_statement_time_window(client, buyer):
    assert top_up(client, buyer, 100).status_code == 201
    later = client.get(
        "/api/v1/ledger/statement?from=2999-01-01T00:00:00Z", headers=buyer.headers("ledger:read")
    ).json
    assert later["entries"] == [] and later["accounts"][0]["balance_minor"] == 100
    window = client.get(
        "/api/v1/ledger/statement?from=2000-01-01T00:00:00&to=2999-01-01T00:00:00Z",
        headers=buyer.headers("ledger:read"),
    ).json
    assert len(window["entries"]) == 1
    # A zone offset that carries the time off the calendar in UTC was a 500; now the field is named.
    shifted = client.get(
        "/api/v1/ledger/statement?from=2000-01-01T08:00:00%2B08:00",
        headers=buyer.headers("ledger:read"),
    ).json
    assert len(shifted["entries"]) == 1
    for query in ["from=9999-12-31T23:59:59-14:00", "to=0001-01-01T00:00:00%2B14:00"]:
        resp = client.get(f"/api/v1/ledger/statement?{query}", headers=buyer.headers("ledger:read"))
        assert resp.status_code == 422, resp.get_data(as_text=True)
        assert resp.json["code"] == "validation_failed"
        assert resp.json["errors"][0]["field"] == query.split("=")[0]


def test_refund_reverses_the_sale_and_revokes_the_licence(
    client, buyer, vendor, catalog, db_session
):
    from marketplace.accounts import services as accounts

    _user, _admin_org, creds = accounts.create_platform_user(
        session=db_session,
        email="admin@example.test",
        password="Correct-Horse-9-Battery",
        role="admin",
    )
    from tests.conftest import basic_auth

    token = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "admin"},
        headers=basic_auth(creds.client_id, creds.client_secret),
    ).json["access_token"]
    admin = {"Authorization": f"Bearer {token}"}
    assert top_up(client, buyer, 10_000).status_code == 201
    order = buy(client, buyer, catalog).json
    url = f"/api/v1/orders/{order['id']}/refund"
    assert (
        client.post(
            url, json={}, headers=buyer.headers(BUY, **{"Idempotency-Key": "r"})
        ).status_code
        == 403
    )
    part = client.post(
        url, json={"amount_minor": 3_333}, headers={**admin, "Idempotency-Key": "r1"}
    )
    assert part.status_code == 201, part.json
    assert part.json["order"]["status"] == "partially_refunded"
    # A replay answers the first refund, 200 as replayed purchases and top-ups do (it was 201).
    replayed = client.post(
        url, json={"amount_minor": 3_333}, headers={**admin, "Idempotency-Key": "r1"}
    )
    assert replayed.status_code == 200 and replayed.json["id"] == part.json["id"]
    rest = client.post(url, json={}, headers={**admin, "Idempotency-Key": "r2"})
    assert rest.json["amount_minor"] == 6_667 and rest.json["order"]["status"] == "refunded"
    again = client.post(url, json={}, headers={**admin, "Idempotency-Key": "r3"})
    assert again.status_code == 409 and again.json["code"] == "refund_exceeds_order"
    # The parts add back up to exactly the original split.
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 0
    licence = client.get(f"/api/v1/licenses/{order['licence_id']}", headers=buyer.headers()).json
    assert licence["status"] == "revoked"
    wallet = client.get("/api/v1/wallet", headers=buyer.headers()).json["balances"][0]
    assert wallet["available_minor"] == 10_000
    assert ledger.check_invariants(db_session) == []
