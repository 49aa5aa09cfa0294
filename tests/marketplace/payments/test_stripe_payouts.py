"""Vendor payouts as Stripe Connect Transfers through ledger holds, against the fake server."""

from __future__ import annotations

import pytest

from marketplace.ledger.models import VENDOR_PAYABLE
from marketplace.payments import outbox, reconcile
from tests.marketplace.licensing.builders import account_posted, make_offer
from tests.marketplace.payments.conftest import (
    assert_consistent,
    paid_top_up,
    set_payments_bounds,
    stripe_settings,
)

BUY = "licenses:write"


@pytest.fixture
def app_config(app_config, fake_stripe):
    app_config.update(stripe_settings(fake_stripe, PAYOUT_MINIMUM_MINOR=100))
    return app_config


@pytest.fixture
def sale(client, buyer, vendor, payer, hooks, db_session):
    """The buyer pays 100.00 CNY in by card and buys a 45.00 CNY licence: 40.50 is payable."""
    paid_top_up(client, buyer, payer, hooks, 10_000, "fund")
    catalog = make_offer(db_session, vendor.id, price_minor=4_500)
    resp = client.post(
        f"/api/v1/offers/{catalog.offer_id}/purchase",
        json={"accept_terms_sha256": catalog.terms_sha256},
        headers=buyer.headers(BUY, **{"Idempotency-Key": "buy"}),
    )
    assert resp.status_code == 201
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 4_050
    return resp.json


def link(client, vendor, account_id):
    return client.put(
        f"/api/v1/organizations/{vendor.id}/payout-account",
        json={"account_id": account_id},
        headers=vendor.headers("payouts:write"),
    )


def payouts_of(client, org, headers=None):
    resp = client.get("/api/v1/payouts", headers=headers or org.headers("ledger:read"))
    assert resp.status_code == 200
    return resp.json["items"]


def test_linking_a_payout_account(client, vendor, buyer, fake_stripe):
    account = fake_stripe.create_account()
    resp = link(client, vendor, account)
    assert resp.status_code == 200, resp.json
    assert resp.json["account_ref"] == account and resp.json["provider"] == "stripe"
    got = client.get(f"/api/v1/organizations/{vendor.id}/payout-account", headers=vendor.headers())
    assert got.json["account_ref"] == account
    assert link(client, vendor, "acct_nosuchthing").json["code"] == "payout_account_unknown"
    inactive = fake_stripe.create_account(transfers="inactive")
    assert link(client, vendor, inactive).json["code"] == "payout_account_inactive"
    assert link(client, vendor, "not-an-account").status_code == 422
    # Another organisation's id, and an organisation without the scope.
    other = client.put(
        f"/api/v1/organizations/{buyer.id}/payout-account",
        json={"account_id": account},
        headers=vendor.headers("payouts:write"),
    )
    assert other.status_code == 404
    not_allowed = client.put(
        f"/api/v1/organizations/{buyer.id}/payout-account",
        json={"account_id": account},
        headers=buyer.headers("licenses:write"),
    )
    assert not_allowed.status_code == 403 and not_allowed.json["code"] == "insufficient_scope"
    # The first link still stands after the refused changes.
    got = client.get(f"/api/v1/organizations/{vendor.id}/payout-account", headers=vendor.headers())
    assert got.json["account_ref"] == account


def test_payout_run_sends_the_payable_balance(
    app, client, vendor, admin, fake_stripe, sale, db_session
):
    account = fake_stripe.create_account()
    assert link(client, vendor, account).status_code == 200
    run = client.post("/api/v1/payouts/run", json={}, headers=admin)
    assert run.status_code == 200, run.json
    (payout,) = [p for p in run.json["items"] if p["organization_id"] == vendor.id]
    assert payout["status"] == "paid" and payout["amount_minor"] == 4_050
    transfer = fake_stripe.get(payout["provider_ref"])
    assert (transfer["amount"], transfer["currency"], transfer["destination"]) == (
        4_050,
        "cny",
        account,
    )
    assert transfer["transfer_group"] == payout["transfer_group"]
    assert transfer["metadata"]["jishi_payout_id"] == str(payout["id"])
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 0
    assert payouts_of(client, vendor) == [payout]
    statement = client.get(
        "/api/v1/ledger/statement?currency=CNY", headers=vendor.headers("ledger:read")
    ).json
    kinds = [e["kind"] for e in statement["entries"]]
    assert kinds == ["purchase", "payout", "payout_settled"]
    # Nothing is left to pay: a second run sends nothing.
    assert client.post("/api/v1/payouts/run", json={}, headers=admin).json["items"] == []
    assert_consistent(app, db_session)


def test_payouts_wait_for_the_minimum(app, client, vendor, admin, fake_stripe, sale, db_session):
    assert link(client, vendor, fake_stripe.create_account()).status_code == 200
    set_payments_bounds(app, payout_minimum_minor=4_051)
    assert client.post("/api/v1/payouts/run", json={}, headers=admin).json["items"] == []
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 4_050


@pytest.mark.parametrize("fault", ["capability", "balance"])
def test_a_failed_payout_returns_the_money(
    app, client, vendor, admin, fake_stripe, sale, db_session, runner, fault
):
    account = fake_stripe.create_account()
    assert link(client, vendor, account).status_code == 200
    kept = dict(fake_stripe.balance)
    if fault == "capability":
        fake_stripe.objects[account]["capabilities"]["transfers"] = "inactive"
    else:
        fake_stripe.balance["cny"] = 0
    try:
        result = runner.invoke(args=["payouts", "run"])
    finally:
        fake_stripe.objects[account]["capabilities"]["transfers"] = "active"
        fake_stripe.balance.update(kept)
    assert result.exit_code == 0, result.output
    (payout,) = payouts_of(client, vendor)
    expected = {
        "capability": "insufficient_capabilities_for_transfer",
        "balance": "balance_insufficient",
    }
    assert payout["status"] == "failed" and payout["failure_code"] == expected[fault]
    assert payout["provider_ref"] is None
    # The hold was voided: the vendor's money is payable again, and the next run pays it.
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 4_050
    assert_consistent(app, db_session)
    again = client.post("/api/v1/payouts/run", json={}, headers=admin).json["items"]
    assert [p["status"] for p in again] == ["paid"]
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 0
    assert_consistent(app, db_session)


def test_payout_transfer_timeout_converges_to_one_transfer(
    app, client, vendor, admin, fake_stripe, sale, db_session
):
    account = fake_stripe.create_account()
    assert link(client, vendor, account).status_code == 200
    fake_stripe.inject("POST", "/v1/transfers", "timeout")
    (payout,) = client.post("/api/v1/payouts/run", json={}, headers=admin).json["items"]
    assert payout["status"] == "pending"
    # The money is held while nobody knows whether Stripe moved it.
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 4_050
    statement = client.get(
        "/api/v1/ledger/statement?currency=CNY", headers=vendor.headers("ledger:read")
    ).json
    assert statement["accounts"][0]["debits_pending"] == 4_050
    made = [
        t
        for t in fake_stripe.of_kind("transfer")
        if t["transfer_group"] == payout["transfer_group"]
    ]
    assert len(made) == 1
    outcomes = outbox.process_due(
        db_session,
        app.extensions["payment_gateway"],
        outbox.OutboxPolicy.from_settings(app.extensions["settings"]),
        limit=10,
    )
    assert outcomes == {"done": 1}
    (paid,) = payouts_of(client, vendor)
    assert paid["status"] == "paid" and paid["provider_ref"] == made[0]["id"]
    assert [
        t["id"]
        for t in fake_stripe.of_kind("transfer")
        if t["transfer_group"] == payout["transfer_group"]
    ] == [made[0]["id"]]
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 0
    assert_consistent(app, db_session)


@pytest.mark.parametrize("via", ["api", "cli"])
def test_admin_sees_and_retries_a_provider_call_that_gave_up(
    app, client, vendor, admin, fake_stripe, sale, db_session, runner, via
):
    app.extensions["settings"].payments_outbox_attempts_max = 2
    set_payments_bounds(app, policy=outbox.OutboxPolicy.from_settings(app.extensions["settings"]))
    assert link(client, vendor, fake_stripe.create_account()).status_code == 200
    fake_stripe.inject("POST", "/v1/transfers", "500", times=2)
    (payout,) = client.post("/api/v1/payouts/run", json={}, headers=admin).json["items"]
    assert payout["status"] == "pending"
    policy = outbox.OutboxPolicy.from_settings(app.extensions["settings"])
    assert outbox.process_due(db_session, app.extensions["payment_gateway"], policy, limit=10) == {
        "failed": 1
    }
    assert client.get("/api/v1/payments/outbox?status=bogus", headers=admin).status_code == 422
    failed = client.get("/api/v1/payments/outbox?status=failed", headers=admin).json["items"]
    (message,) = [m for m in failed if m["subject_id"] == payout["id"] and m["kind"] == "transfer"]
    assert message["attempts"] == 2 and "unavailable" in message["last_error"]
    mismatches = reconcile.report(
        session=db_session, gateway=app.extensions["payment_gateway"]
    ).mismatches
    assert any(f"outbox {message['id']}" in m for m in mismatches)
    # Still held: giving up never returns money that may have left.
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 4_050
    assert payouts_of(client, vendor)[0]["status"] == "pending"
    assert (
        vendor.client.post(
            f"/api/v1/payments/outbox/{message['id']}/retry", headers=vendor.headers()
        ).status_code
        == 403
    )
    if via == "api":
        retried = client.post(f"/api/v1/payments/outbox/{message['id']}/retry", headers=admin)
        assert retried.status_code == 200 and retried.json["status"] == "done"
    else:
        result = runner.invoke(args=["payments", "retry", str(message["id"])])
        assert result.exit_code == 0 and "done" in result.output, result.output
    assert payouts_of(client, vendor)[0]["status"] == "paid"
    again = client.post(f"/api/v1/payments/outbox/{message['id']}/retry", headers=admin)
    assert again.status_code == 409 and again.json["code"] == "outbox_not_failed"
    assert_consistent(app, db_session)


def test_payout_lists_are_private(client, vendor, buyer, admin, fake_stripe, sale):
    assert link(client, vendor, fake_stripe.create_account()).status_code == 200
    client.post("/api/v1/payouts/run", json={}, headers=admin)
    assert payouts_of(client, buyer) == []
    peek = client.get(
        f"/api/v1/payouts?organization_id={vendor.id}", headers=buyer.headers("ledger:read")
    )
    assert peek.status_code == 403
    seen = client.get(f"/api/v1/payouts?organization_id={vendor.id}", headers=admin).json["items"]
    assert [p["organization_id"] for p in seen] == [vendor.id]
    assert client.post("/api/v1/payouts/run", json={}, headers=vendor.headers()).status_code == 403
