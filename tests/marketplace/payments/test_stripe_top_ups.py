"""Top-ups through Stripe PaymentIntents against the fake server, with webhooks and their faults."""

from __future__ import annotations

import json
import time

import pytest
import stripe
from sqlmodel import select

from marketplace.payments import outbox, reconcile
from marketplace.payments.models import PaymentOutbox, StripeEvent, TopUp
from tests.marketplace.payments.conftest import (
    assert_consistent,
    set_payments_bounds,
    stripe_settings,
)

BUY = "licenses:write"


@pytest.fixture
def app_config(app_config, fake_stripe):
    app_config.update(stripe_settings(fake_stripe))
    return app_config


def top_up(client, org, amount=5_000, key="t1", currency="CNY"):
    return client.post(
        "/api/v1/wallet/top-ups",
        json={"amount_minor": amount, "currency": currency},
        headers=org.headers(BUY, **{"Idempotency-Key": key}),
    )


def wallet(client, org):
    balances = client.get("/api/v1/wallet", headers=org.headers()).json["balances"]
    return {b["currency"]: (b["balance_minor"], b["held_minor"]) for b in balances}


def state(client, org, top_up_id):
    resp = client.get(f"/api/v1/wallet/top-ups/{top_up_id}", headers=org.headers())
    assert resp.status_code == 200
    return resp.json


def intents_for(fake, db_session, top_up_id):
    """The fake's PaymentIntents made for this top-up (ids repeat across rolled-back tests)."""
    reference = db_session.get(TopUp, top_up_id).reference
    return [
        pi
        for pi in fake.of_kind("payment_intent")
        if pi["metadata"].get("jishi_reference") == reference
    ]


def test_top_up_succeeds_when_the_payment_does(app, client, buyer, payer, hooks, db_session):
    resp = top_up(client, buyer)
    assert resp.status_code == 201, resp.json
    body = resp.json
    assert body["status"] == "requires_payment"
    assert body["payment_intent_id"].startswith("pi_")
    assert body["client_secret"].startswith(body["payment_intent_id"] + "_secret_")
    assert (body["amount_minor"], body["currency"]) == (5_000, "CNY")
    assert body["payment"] == {
        "provider": "stripe",
        "simulated": False,
        "client_secret": body["client_secret"],
    }
    pi = hooks.get(body["payment_intent_id"])
    assert (pi["amount"], pi["currency"]) == (5_000, "cny")
    assert pi["metadata"]["jishi_top_up_id"] == str(body["id"])
    assert wallet(client, buyer) == {}

    payer.v1.payment_intents.confirm(body["payment_intent_id"], {"payment_method": "pm_card_visa"})
    assert wallet(client, buyer) == {}  # nothing before Stripe says so
    delivered = hooks.deliver()
    assert delivered and all(status == 200 for _, status in delivered)
    assert state(client, buyer, body["id"])["status"] == "succeeded"
    assert wallet(client, buyer) == {"CNY": (5_000, 0)}
    # The GET never shows the secret; a repeated POST fetches it again from Stripe.
    assert state(client, buyer, body["id"])["client_secret"] is None
    again = top_up(client, buyer)
    assert again.status_code == 200 and again.json["id"] == body["id"]
    assert wallet(client, buyer) == {"CNY": (5_000, 0)}
    assert_consistent(app, db_session)


def test_declined_then_paid_with_another_card(app, client, buyer, payer, hooks, db_session):
    body = top_up(client, buyer, 2_500).json
    with pytest.raises(stripe.CardError) as exc:
        payer.v1.payment_intents.confirm(
            body["payment_intent_id"], {"payment_method": "pm_card_chargeDeclined"}
        )
    assert exc.value.code == "card_declined"
    hooks.deliver()
    failed = state(client, buyer, body["id"])
    assert failed["status"] == "failed" and failed["failure_code"] == "generic_decline"
    assert wallet(client, buyer) == {}
    assert_consistent(app, db_session)

    payer.v1.payment_intents.confirm(body["payment_intent_id"], {"payment_method": "pm_card_visa"})
    hooks.deliver()
    assert state(client, buyer, body["id"])["status"] == "succeeded"
    assert wallet(client, buyer) == {"CNY": (2_500, 0)}
    assert_consistent(app, db_session)


def test_canceled_payment_leaves_the_wallet_untouched(app, client, buyer, payer, hooks, db_session):
    body = top_up(client, buyer, 700).json
    payer.v1.payment_intents.cancel(body["payment_intent_id"])
    hooks.deliver()
    assert state(client, buyer, body["id"])["status"] == "canceled"
    assert wallet(client, buyer) == {}
    assert_consistent(app, db_session)


def test_webhook_delivered_twice_credits_once(app, client, buyer, payer, hooks, db_session):
    hooks.webhook_faults.duplicate = 10
    body = top_up(client, buyer, 1_000).json
    payer.v1.payment_intents.confirm(body["payment_intent_id"], {"payment_method": "pm_card_visa"})
    delivered = hooks.deliver()
    succeeded = [e for e in hooks.events if e["type"] == "payment_intent.succeeded"][-1]
    assert [status for eid, status in delivered if eid == succeeded["id"]] == [200, 200]
    assert wallet(client, buyer) == {"CNY": (1_000, 0)}
    assert db_session.get(StripeEvent, succeeded["id"]).outcome == "applied"
    assert_consistent(app, db_session)


def test_late_and_out_of_order_webhooks_converge(app, client, buyer, payer, hooks, db_session):
    hooks.webhook_faults.hold = True
    body = top_up(client, buyer, 1_200).json
    with pytest.raises(stripe.CardError):
        payer.v1.payment_intents.confirm(
            body["payment_intent_id"], {"payment_method": "pm_card_chargeDeclined"}
        )
    payer.v1.payment_intents.confirm(body["payment_intent_id"], {"payment_method": "pm_card_visa"})
    assert hooks.deliver() == []  # held back
    assert state(client, buyer, body["id"])["status"] == "requires_payment"
    # Newest first: succeeded, then the older payment_failed, then created.
    hooks.release(reverse=True)
    delivered = hooks.deliver()
    assert len(delivered) == 3 and {s for _, s in delivered} == {200}
    assert state(client, buyer, body["id"])["status"] == "succeeded"
    assert wallet(client, buyer) == {"CNY": (1_200, 0)}
    assert_consistent(app, db_session)


def test_webhook_never_arrives_and_reconciliation_credits_once(
    app, client, buyer, payer, hooks, db_session, runner
):
    hooks.webhook_faults.drop = 100
    body = top_up(client, buyer, 3_000).json
    payer.v1.payment_intents.confirm(body["payment_intent_id"], {"payment_method": "pm_card_visa"})
    assert hooks.deliver() == []
    assert wallet(client, buyer) == {}
    mismatches = reconcile.report(
        session=db_session, gateway=app.extensions["payment_gateway"]
    ).mismatches
    assert any(f"top-up {body['id']}" in m for m in mismatches)

    result = runner.invoke(args=["payments", "reconcile", "--report"])
    assert result.exit_code == 0, result.output
    assert "0 mismatches" in result.output
    assert wallet(client, buyer) == {"CNY": (3_000, 0)}
    assert runner.invoke(args=["payments", "reconcile"]).exit_code == 0
    assert wallet(client, buyer) == {"CNY": (3_000, 0)}
    assert_consistent(app, db_session)


def test_stripe_500_then_success(app, client, buyer, payer, hooks, db_session):
    hooks.inject("POST", "/v1/payment_intents", "500")
    first = top_up(client, buyer, 900)
    assert first.status_code == 201
    assert first.json["status"] == "pending" and first.json["client_secret"] is None
    message = db_session.exec(
        select(PaymentOutbox).where(PaymentOutbox.subject_id == first.json["id"])
    ).one()
    assert message.status == "pending" and message.attempts == 1
    assert "unavailable" in message.last_error
    assert intents_for(hooks, db_session, first.json["id"]) == []

    again = top_up(client, buyer, 900)
    assert again.status_code == 200 and again.json["status"] == "requires_payment"
    assert again.json["client_secret"]
    assert len(intents_for(hooks, db_session, first.json["id"])) == 1
    payer.v1.payment_intents.confirm(
        again.json["payment_intent_id"], {"payment_method": "pm_card_visa"}
    )
    hooks.deliver()
    assert wallet(client, buyer) == {"CNY": (900, 0)}
    assert_consistent(app, db_session)


def test_timeout_after_stripe_did_the_work(app, client, buyer, payer, hooks, db_session):
    hooks.inject("POST", "/v1/payment_intents", "timeout")
    first = top_up(client, buyer, 1_100)
    assert first.status_code == 201 and first.json["status"] == "pending"
    # Stripe made the payment; we never heard.
    (made,) = intents_for(hooks, db_session, first.json["id"])
    assert db_session.get(TopUp, first.json["id"]).provider_ref is None
    time.sleep(0.05)
    outcomes = outbox.process_due(
        db_session,
        app.extensions["payment_gateway"],
        outbox.OutboxPolicy.from_settings(app.extensions["settings"]),
        limit=10,
    )
    assert outcomes == {"done": 1}
    # The retry carried the same key: Stripe replayed the first answer, no second payment.
    assert [pi["id"] for pi in intents_for(hooks, db_session, first.json["id"])] == [made["id"]]
    keys = [k for m, p, k in hooks.requests if m == "POST" and p == "/v1/payment_intents"]
    assert len(keys) >= 2 and len(set(keys[-2:])) == 1
    assert state(client, buyer, first.json["id"])["payment_intent_id"] == made["id"]
    payer.v1.payment_intents.confirm(made["id"], {"payment_method": "pm_card_visa"})
    hooks.deliver()
    assert wallet(client, buyer) == {"CNY": (1_100, 0)}
    assert_consistent(app, db_session)


def _signed_post(client, fake, payload, *, timestamp=None, secret_header=None):
    body = json.dumps(payload)
    header = secret_header or fake.sign(body, timestamp)
    return client.post(
        "/api/v1/payments/stripe/webhook",
        data=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


def test_webhook_signatures_are_checked(client, hooks):
    event = {
        "id": "evt_sigcheck",
        "object": "event",
        "type": "customer.created",
        "data": {"object": {"id": "cus_1"}},
    }
    bad = _signed_post(client, hooks, event, secret_header="t=1,v1=" + "0" * 64)
    assert bad.status_code == 400 and bad.json["code"] == "signature_invalid"
    missing = client.post("/api/v1/payments/stripe/webhook", data=json.dumps(event))
    assert missing.status_code == 400 and missing.json["code"] == "signature_invalid"
    stale = _signed_post(client, hooks, event, timestamp=int(time.time()) - 301)
    assert stale.status_code == 400 and stale.json["code"] == "signature_stale"
    future = _signed_post(client, hooks, event, timestamp=int(time.time()) + 301)
    assert future.status_code == 400 and future.json["code"] == "signature_stale"
    tampered_body = json.dumps({**event, "id": "evt_other"})
    tampered = client.post(
        "/api/v1/payments/stripe/webhook",
        data=tampered_body,
        headers={"Stripe-Signature": hooks.sign(json.dumps(event))},
    )
    assert tampered.status_code == 400 and tampered.json["code"] == "signature_invalid"
    # A replayed old signature behind a decoy timestamp: the SDK checks the signature on the
    # part named exactly "t", so a looser reading of the age took the decoy and accepted it.
    old = hooks.sign(json.dumps(event), int(time.time()) - 3600)
    now = int(time.time())
    for decoy in [f"x=1, t={now},{old}", f"{old},t={now}", f"t ={now},{old}", f" t=,{old}"]:
        replayed = _signed_post(client, hooks, event, secret_header=decoy)
        assert replayed.status_code == 400, (decoy, replayed.get_data(as_text=True))
        assert replayed.json["code"] == "signature_invalid"
    for stamp in ["1e3", "", "-5", "٣", "9" * 5000]:
        odd = _signed_post(client, hooks, event, secret_header=f"t={stamp},v1={'0' * 64}")
        assert odd.status_code == 400 and odd.json["code"] == "signature_invalid", stamp
    ok = _signed_post(client, hooks, event)
    assert ok.status_code == 200 and ok.json["outcome"] == "ignored"  # unknown type: acknowledged
    assert _signed_post(client, hooks, event).json["outcome"] == "duplicate"


def test_oversized_webhook_is_refused(client, hooks, app):
    app.extensions["settings"].json_body_bytes_max = 1024
    event = {"id": "evt_big", "type": "x", "data": {"object": {"pad": "x" * 2000}}}
    resp = _signed_post(client, hooks, event)
    assert resp.status_code == 413


def test_secrets_can_be_rolled(app, client, fake_stripe):
    def post(event_id, signing_secrets):
        body = json.dumps({"id": event_id, "type": "customer.created", "data": {"object": {}}})
        kept = fake_stripe.webhook_secrets
        fake_stripe.webhook_secrets = signing_secrets
        try:
            header = fake_stripe.sign(body)
        finally:
            fake_stripe.webhook_secrets = kept
        resp = client.post(
            "/api/v1/payments/stripe/webhook", data=body, headers={"Stripe-Signature": header}
        )
        return resp.status_code

    # While a secret is rolled we accept both; Stripe signs with one or with both.
    set_payments_bounds(app, webhook_secrets=("whsec_old", "whsec_new"))
    assert post("evt_roll_1", ["whsec_new"]) == 200
    assert post("evt_roll_2", ["whsec_old"]) == 200
    assert post("evt_roll_3", ["whsec_old", "whsec_new"]) == 200
    # After the roll the old secret is refused.
    set_payments_bounds(app, webhook_secrets=("whsec_new",))
    assert post("evt_roll_4", ["whsec_old"]) == 400
    assert post("evt_roll_5", ["whsec_new"]) == 200


def test_an_event_for_another_amount_credits_nothing(app, client, buyer, hooks, db_session):
    body = top_up(client, buyer, 4_000).json
    forged = hooks.get(body["payment_intent_id"])
    forged.update(status="succeeded", amount=40_000, amount_received=40_000)
    event = {
        "id": "evt_amount",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": forged},
    }
    resp = _signed_post(client, hooks, event)
    assert resp.status_code == 200
    assert wallet(client, buyer) == {}
    assert state(client, buyer, body["id"])["status"] == "requires_payment"


def test_a_payment_of_another_installation_is_not_ours(app, client, buyer, hooks, db_session):
    body = top_up(client, buyer, 4_000).json
    foreign = hooks.get(body["payment_intent_id"])
    foreign.update(id="pi_elsewhere", status="succeeded", amount_received=4_000)
    foreign["metadata"] = {**foreign["metadata"], "jishi_reference": "0" * 16}
    event = {"id": "evt_foreign", "type": "payment_intent.succeeded", "data": {"object": foreign}}
    assert _signed_post(client, hooks, event).json["outcome"] == "unmatched"
    assert wallet(client, buyer) == {}


def test_unpaid_top_ups_are_bounded_and_expire(app, client, buyer, payer, hooks, db_session):
    set_payments_bounds(app, top_ups_open_max=2)
    paid = top_up(client, buyer, 300, key="x1").json
    unpaid = top_up(client, buyer, 400, key="x2").json
    refused = top_up(client, buyer, 500, key="x3")
    assert refused.status_code == 409 and refused.json["code"] == "too_many_open_top_ups"
    # One is paid but its webhook is lost; the other is abandoned.
    hooks.webhook_faults.drop = 100
    payer.v1.payment_intents.confirm(paid["payment_intent_id"], {"payment_method": "pm_card_visa"})
    time.sleep(0.01)
    gateway = app.extensions["payment_gateway"]
    policy = outbox.OutboxPolicy.from_settings(app.extensions["settings"])
    result = reconcile.reconcile(
        session=db_session, gateway=gateway, batch_max=10, top_up_expiry_s=0.001
    )
    # Reconciliation credits the paid one first, then queues the abandoned one's cancellation.
    assert result.expired == 1
    assert state(client, buyer, paid["id"])["status"] == "succeeded"
    assert outbox.process_due(db_session, gateway, policy, limit=10) == {"done": 1}
    assert state(client, buyer, unpaid["id"])["status"] == "canceled"
    assert hooks.get(unpaid["payment_intent_id"])["status"] == "canceled"
    late = top_up(client, buyer, 500, key="x3").json
    assert late["status"] == "requires_payment"
    # Paid between the cancellation being queued and sent: Stripe refuses to cancel it, and the
    # next reconciliation credits it.
    time.sleep(0.01)
    reconcile.reconcile(session=db_session, gateway=gateway, batch_max=10, top_up_expiry_s=0.001)
    payer.v1.payment_intents.confirm(late["payment_intent_id"], {"payment_method": "pm_card_visa"})
    assert outbox.process_due(db_session, gateway, policy, limit=10) == {"refused": 1}
    reconcile.reconcile(session=db_session, gateway=gateway, batch_max=10)
    assert state(client, buyer, late["id"])["status"] == "succeeded"
    assert wallet(client, buyer) == {"CNY": (800, 0)}
    assert_consistent(app, db_session)


def test_signed_events_of_any_shape_are_acknowledged_not_crashed_on(client, hooks, db_session):
    # Data or object that is not a JSON object, fields of the wrong type, NUL in ids: each was
    # a 500 (and so days of redeliveries); each is kept and acknowledged once.
    objects = [None, [], "x", 1, {}, {"id": None}, {"id": 5}, {"id": "pi_\u0000"}]
    objects += [{"id": "pi_x", "amount": "x", "metadata": []}, {"id": "re_x", "amount": 2**70}]
    # Our row ids in metadata past the id columns' range, or in other scripts' digits: the
    # lookup was a 500 (SQLite's OverflowError, PostgreSQL's NumericValueOutOfRange).
    for raw_id in ["9223372036854775808", "9" * 30, "١٢"]:
        metadata = {"jishi_top_up_id": raw_id, "jishi_payment_refund_id": raw_id}
        objects += [{"id": f"pi_{raw_id}", "amount": 100, "currency": "cny", "metadata": metadata}]
        objects += [{"id": f"re_{raw_id}", "status": "succeeded", "metadata": metadata}]
    datas = [None, [], "x", *({"object": o} for o in objects)]
    types = ["payment_intent.succeeded", "refund.updated", "customer.created", "\u0000"]
    sent = 0
    for event_type in types:
        for data in datas:
            sent += 1
            event = {"id": f"evt_shape_{sent}\u0000", "type": event_type, "data": data}
            resp = _signed_post(client, hooks, event)
            assert resp.status_code == 200, (event, resp.get_data(as_text=True))
            assert resp.json["outcome"] in {"ignored", "unmatched", "unreadable"}, event
            assert _signed_post(client, hooks, event).json["outcome"] == "duplicate"
    assert len(db_session.exec(select(StripeEvent)).all()) >= sent


def test_replays_of_an_unpaid_top_up_do_not_ask_the_provider_each_time(app, client, buyer, hooks):
    """Every replay fetched the payment from the provider: one buyer replaying one key could
    spend the platform's provider request quota."""
    gateway = app.extensions["payments"].gateway
    asked: list[str] = []
    fetch = gateway.get_top_up

    def counted(provider_ref: str):
        asked.append(provider_ref)
        return fetch(provider_ref)

    first = top_up(client, buyer, 700, key="replayed").json
    gateway.get_top_up = counted
    try:
        for _ in range(20):
            again = top_up(client, buyer, 700, key="replayed")
            assert again.status_code == 200
            assert again.json["client_secret"] == first["client_secret"]
    finally:
        del gateway.get_top_up
    assert len(asked) <= 1, asked
