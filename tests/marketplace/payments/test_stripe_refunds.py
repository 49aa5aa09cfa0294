"""Order refunds and withdrawals back to the buyer's Stripe payments, against the fake server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import requests

from marketplace.ledger import services as ledger
from marketplace.ledger.models import PLATFORM_REVENUE, VENDOR_PAYABLE
from marketplace.payments import reconcile
from tests.marketplace.licensing.builders import account_posted, make_offer, wallet_available
from tests.marketplace.payments.conftest import (
    assert_consistent,
    paid_top_up,
    stripe_settings,
)

BUY = "licenses:write"


@pytest.fixture
def app_config(app_config, fake_stripe):
    app_config.update(stripe_settings(fake_stripe))
    return app_config


def refunded_at_stripe(fake, payment_intent_id):
    """What the fake's own records say was refunded of a payment (failed refunds excluded)."""
    return sum(
        r["amount"]
        for r in fake.of_kind("refund")
        if r["payment_intent"] == payment_intent_id and r["status"] != "failed"
    )


def withdraw(client, org, amount, key="w1"):
    return client.post(
        "/api/v1/wallet/withdrawals",
        json={"amount_minor": amount, "currency": "CNY"},
        headers=org.headers(BUY, **{"Idempotency-Key": key}),
    )


def test_partial_and_full_refunds_go_back_to_the_payments(
    app, client, buyer, vendor, admin, payer, hooks, db_session
):
    older = paid_top_up(client, buyer, payer, hooks, 6_000, "a")
    newer = paid_top_up(client, buyer, payer, hooks, 4_000, "b")
    catalog = make_offer(db_session, vendor.id, price_minor=9_000)
    order = client.post(
        f"/api/v1/offers/{catalog.offer_id}/purchase",
        json={"accept_terms_sha256": catalog.terms_sha256},
        headers=buyer.headers(BUY, **{"Idempotency-Key": "buy"}),
    ).json
    assert wallet_available(db_session, buyer.id) == 1_000
    url = f"/api/v1/orders/{order['id']}/refund"

    part = client.post(
        url, json={"amount_minor": 3_333}, headers={**admin, "Idempotency-Key": "r1"}
    )
    assert part.status_code == 201, part.json
    assert part.json["to_wallet_minor"] == 0
    (first,) = part.json["payment_refunds"]
    assert first["payment_intent_id"] == newer["payment_intent_id"]
    assert (first["amount_minor"], first["status"]) == (3_333, "succeeded")
    assert hooks.get(first["refund_id"])["amount"] == 3_333
    # Vendor share and fee reversed by largest remainder: 3 333 = 3 000 (90 %) + 333.
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 8_100 - 3_000
    assert account_posted(db_session, None, PLATFORM_REVENUE) == 900 - 333
    assert wallet_available(db_session, buyer.id) == 1_000

    rest = client.post(url, json={}, headers={**admin, "Idempotency-Key": "r2"})
    assert rest.status_code == 201, rest.json
    assert rest.json["order"]["status"] == "refunded"
    assert [(r["payment_intent_id"], r["amount_minor"]) for r in rest.json["payment_refunds"]] == [
        (newer["payment_intent_id"], 667),
        (older["payment_intent_id"], 5_000),
    ]
    # Never more than captured minus earlier refunds, on each payment.
    assert refunded_at_stripe(hooks, newer["payment_intent_id"]) == 4_000
    assert refunded_at_stripe(hooks, older["payment_intent_id"]) == 5_000
    assert account_posted(db_session, vendor.id, VENDOR_PAYABLE) == 0
    assert wallet_available(db_session, buyer.id) == 1_000
    again = client.post(url, json={}, headers={**admin, "Idempotency-Key": "r3"})
    assert again.status_code == 409 and again.json["code"] == "refund_exceeds_order"
    licence = client.get(f"/api/v1/licenses/{order['licence_id']}", headers=buyer.headers()).json
    assert licence["status"] == "revoked"
    statement = client.get(
        "/api/v1/ledger/statement?currency=CNY", headers=buyer.headers("ledger:read")
    ).json
    kinds = [e["kind"] for e in statement["entries"]]
    assert kinds.count("refund") == 2 and kinds.count("refund_to_payment_settled") == 3
    assert_consistent(app, db_session)

    # What is left in the wallet can be withdrawn: it goes to the older payment's last 1 000.
    out = withdraw(client, buyer, 1_000)
    assert out.status_code == 201, out.json
    assert out.json["status"] == "succeeded"
    assert [(r["payment_intent_id"], r["amount_minor"]) for r in out.json["refunds"]] == [
        (older["payment_intent_id"], 1_000)
    ]
    assert refunded_at_stripe(hooks, older["payment_intent_id"]) == 6_000
    assert wallet_available(db_session, buyer.id) == 0
    assert withdraw(client, buyer, 1, key="w2").json["code"] == "withdrawal_exceeds_refundable"
    assert_consistent(app, db_session)


def test_withdrawals_are_bounded_by_wallet_and_payments(
    app, client, buyer, vendor, payer, hooks, db_session
):
    paid_top_up(client, buyer, payer, hooks, 5_000, "a")
    catalog = make_offer(db_session, vendor.id, price_minor=3_000)
    client.post(
        f"/api/v1/offers/{catalog.offer_id}/purchase",
        json={"accept_terms_sha256": catalog.terms_sha256},
        headers=buyer.headers(BUY, **{"Idempotency-Key": "buy"}),
    )
    too_much = withdraw(client, buyer, 2_500)
    assert too_much.status_code == 402 and too_much.json["code"] == "insufficient_funds"
    over_payments = withdraw(client, buyer, 5_001, key="w0")
    assert over_payments.status_code == 409
    assert over_payments.json["refundable_minor"] == 5_000
    assert withdraw(client, buyer, 0, key="w3").status_code == 422
    assert withdraw(client, buyer, "100", key="w4").status_code == 422
    first = withdraw(client, buyer, 2_000, key="w5")
    assert first.status_code == 201 and first.json["status"] == "succeeded"
    again = withdraw(client, buyer, 2_000, key="w5")
    assert again.status_code == 200 and again.json["id"] == first.json["id"]
    other = withdraw(client, buyer, 1_000, key="w5")
    assert other.status_code == 409 and other.json["code"] == "idempotency_key_reused"
    assert len([r for r in hooks.of_kind("refund") if r["metadata"].get("jishi_purpose")]) >= 1
    assert wallet_available(db_session, buyer.id) == 0
    assert_consistent(app, db_session)


def test_a_refund_that_fails_later_returns_the_money_to_the_wallet(
    app, client, buyer, payer, hooks, db_session
):
    top_up = paid_top_up(client, buyer, payer, hooks, 3_000, "a")
    hooks.refund_status = "pending"
    out = withdraw(client, buyer, 3_000).json
    assert out["status"] == "pending"
    (refund,) = out["refunds"]
    assert refund["status"] == "pending"
    hooks.deliver()  # refund.created (pending) changes nothing
    assert wallet_available(db_session, buyer.id) == 0  # held
    assert_consistent(app, db_session)

    hooks.settle_refund(refund["refund_id"], "failed")
    hooks.deliver()
    got = client.get(f"/api/v1/wallet/withdrawals/{out['id']}", headers=buyer.headers()).json
    assert got["status"] == "failed"
    assert got["refunds"][0]["failure_code"] == "expired_or_canceled_card"
    assert wallet_available(db_session, buyer.id) == 3_000
    # The payment can be refunded again, in full.
    assert (
        client.get(f"/api/v1/wallet/top-ups/{top_up['id']}", headers=buyer.headers()).json[
            "refunded_minor"
        ]
        == 0
    )
    assert_consistent(app, db_session)

    # A pending refund whose webhook never comes is settled by reconciliation.
    hooks.webhook_faults.drop = 100
    second = withdraw(client, buyer, 3_000, key="w2").json
    (refund,) = second["refunds"]
    hooks.settle_refund(refund["refund_id"], "succeeded")
    hooks.deliver()
    assert wallet_available(db_session, buyer.id) == 0
    reconcile.reconcile(session=db_session, gateway=app.extensions["payment_gateway"], batch_max=10)
    got = client.get(f"/api/v1/wallet/withdrawals/{second['id']}", headers=buyer.headers()).json
    assert got["status"] == "succeeded"
    assert refunded_at_stripe(hooks, top_up["payment_intent_id"]) == 3_000
    assert_consistent(app, db_session)


def test_a_refund_stripe_refuses_returns_the_money(app, client, buyer, payer, hooks, db_session):
    top_up = paid_top_up(client, buyer, payer, hooks, 2_000, "a")
    # Someone refunded the payment directly in Stripe's dashboard: our refund is refused.
    payer.v1.refunds.create({"payment_intent": top_up["payment_intent_id"]})
    out = withdraw(client, buyer, 2_000).json
    assert out["status"] == "failed"
    assert out["refunds"][0]["failure_code"] == "charge_already_refunded"
    assert wallet_available(db_session, buyer.id) == 2_000
    assert ledger.check_invariants(db_session) == []


def test_a_refund_reported_for_other_money_is_not_posted(
    app, client, buyer, payer, hooks, db_session
):
    """A signed success of a refund of 400 posted our hold of 500: the wallet lost 100 that
    never went back to the card. Top-ups already refused an amount they had not asked for."""
    paid_top_up(client, buyer, payer, hooks, 500, "a")
    hooks.refund_status = "pending"
    out = withdraw(client, buyer, 500).json
    (refund,) = out["refunds"]
    hooks.deliver()
    with hooks.lock:
        hooks.objects[refund["refund_id"]]["amount"] = 400
    hooks.settle_refund(refund["refund_id"], "succeeded")
    hooks.deliver()
    got = client.get(f"/api/v1/wallet/withdrawals/{out['id']}", headers=buyer.headers()).json
    assert got["refunds"][0]["status"] == "pending"  # for a person to settle
    assert wallet_available(db_session, buyer.id) == 0  # still held, not spent
    rep = reconcile.report(session=db_session, gateway=app.extensions["payment_gateway"])
    assert any("500 here, 400 at the provider" in m for m in rep.mismatches), rep
    assert ledger.check_invariants(db_session) == []


def _posts(org: Any, path: str, body: dict[str, Any], key: str) -> list[Callable[[], Any]]:
    """Twelve POSTs of ``body`` to ``path`` by ``org``, each with an Idempotency-Key of its own
    (an administrator's with the admin scope)."""
    scope = "admin" if path.endswith("/refund") else BUY
    return [
        partial(
            org.call, "POST", path, scope=scope, json=body, headers={"Idempotency-Key": f"{key}{i}"}
        )
        for i in range(12)
    ]


def _race(calls: list[Callable[[], requests.Response]]) -> list[int]:
    """The statuses of ``calls``, each made by a thread of its own, all released at once."""
    statuses: list[int] = []
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], requests.Response]) -> None:
        start.wait()
        statuses.append(call().status_code)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return statuses


def test_refunds_and_withdrawals_racing_on_one_wallet_never_deadlock(
    live_server, fake_stripe, payer
):
    """A refund locked the ledger's balances, then the payments; a withdrawal the payments, then
    the wallet's balance: on PostgreSQL the two deadlocked (503 `database_busy`)."""

    from tests.live_api import LiveOrg, platform_org

    server = live_server(**stripe_settings(fake_stripe))
    fake_stripe.webhook_target = lambda body, headers: (
        requests.post(
            f"{server.url}/api/v1/payments/stripe/webhook", data=body, headers=headers, timeout=30
        ).status_code
    )
    buyer, vendor = LiveOrg.register(server, ["buyer"]), LiveOrg.register(server, ["vendor"])
    admin = platform_org(server, "admin")
    for i in range(3):
        made = buyer.call(
            "POST", "/api/v1/wallet/top-ups", scope=BUY,
            json={"amount_minor": 5_000, "currency": "CNY"}, headers={"Idempotency-Key": f"t{i}"},
        ).json()  # fmt: skip
        payer.v1.payment_intents.confirm(
            made["payment_intent_id"], {"payment_method": "pm_card_visa"}
        )
    fake_stripe.deliver()
    with server.app.app_context():
        from marketplace.db import get_session

        catalog = make_offer(get_session(), vendor.id, price_minor=9_000)
    order = buyer.call(
        "POST", f"/api/v1/offers/{catalog.offer_id}/purchase", scope=BUY,
        json={"accept_terms_sha256": catalog.terms_sha256}, headers={"Idempotency-Key": "buy"},
    ).json()  # fmt: skip
    refunds = _posts(admin, f"/api/v1/orders/{order['id']}/refund", {"amount_minor": 100}, "r")
    withdrawals = _posts(
        buyer, "/api/v1/wallet/withdrawals", {"amount_minor": 100, "currency": "CNY"}, "w"
    )
    statuses = _race([*refunds, *withdrawals])
    assert sorted(statuses) == [201] * 24, statuses
    with server.app.app_context():
        from marketplace.db import get_session

        assert ledger.check_invariants(get_session()) == []


def test_a_refund_made_at_the_provider_is_reported(app, client, buyer, payer, hooks, db_session):
    """A refund from the provider's dashboard left the wallet credit in place, unreported."""
    paid = paid_top_up(client, buyer, payer, hooks, 1_000, "a")
    assert (
        reconcile.report(session=db_session, gateway=app.extensions["payment_gateway"]).mismatches
        == []
    )
    outside = payer.v1.refunds.create({"payment_intent": paid["payment_intent_id"], "amount": 600})
    hooks.deliver()
    rep = reconcile.report(session=db_session, gateway=app.extensions["payment_gateway"])
    assert any(outside.id in m and f"top-up {paid['id']}" in m for m in rep.mismatches), rep


@pytest.mark.parametrize("payments", ["stripe", "offline"])
def test_concurrent_top_ups_keep_to_the_open_limit(live_server, fake_stripe, payments):
    """Counted while others were added, 60 top-ups opened 13 against 10 on PostgreSQL; offline,
    where every top-up completes at once, a moment's pending ones were counted as unpaid."""
    from tests.live_api import LiveOrg

    settings = stripe_settings(fake_stripe) if payments == "stripe" else {"PAYMENTS": "offline"}
    server = live_server(TOP_UPS_OPEN_MAX=3, **settings)
    buyer = LiveOrg.register(server, ["buyer"])
    statuses = _race(
        _posts(buyer, "/api/v1/wallet/top-ups", {"amount_minor": 100, "currency": "CNY"}, "k")
    )
    if payments == "stripe":
        assert sorted(statuses) == [201] * 3 + [409] * 9, statuses
    else:
        assert statuses == [201] * 12, statuses
