"""The payments outbox on databases with real commits: several workers at once, and a worker
killed between Stripe's work and our commit."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import select

from marketplace.db import utcnow
from marketplace.ledger import services as ledger
from marketplace.ledger.models import VENDOR_PAYABLE
from marketplace.payments import outbox, payouts, reconcile
from marketplace.payments.models import PaymentOutbox, Payout, TopUp
from tests.marketplace.licensing.builders import account_posted, make_offer
from tests.marketplace.payments.conftest import paid_top_up, quick_org, stripe_settings, webhooks_to

WORKERS = 4
TOP_UPS = 8


def _policy(app):
    return outbox.OutboxPolicy.from_settings(app.extensions["settings"])


def test_concurrent_workers_send_each_call_once(live_server, fake_stripe):
    # A lease far longer than the test: a second send of one call could only come from two
    # workers claiming the same row.
    app = live_server(**stripe_settings(fake_stripe, PAYMENTS_OUTBOX_LEASE_S=60.0)).app
    client = app.test_client()
    setup = app.extensions["db"].session()
    buyer = quick_org(client, setup, ["buyer"])
    # Every request's own attempt fails, so all the calls wait in the outbox.
    fake_stripe.inject("POST", "/v1/payment_intents", "500", times=TOP_UPS)
    ids = []
    for n in range(TOP_UPS):
        resp = client.post(
            "/api/v1/wallet/top-ups",
            json={"amount_minor": 100 + n, "currency": "CNY"},
            headers=buyer.headers("licenses:write", **{"Idempotency-Key": f"c{n}"}),
        )
        assert resp.json["status"] == "pending"
        ids.append(resp.json["id"])
    outcomes: list[dict[str, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(WORKERS)

    def worker() -> None:
        session = app.extensions["db"].session()
        try:
            start.wait()
            while True:
                done = outbox.process_due(
                    session, app.extensions["payment_gateway"], _policy(app), limit=2
                )
                if not done:
                    return
                outcomes.append(done)
        except BaseException as exc:
            errors.append(exc)
        finally:
            session.close()

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(o.get("done", 0) for o in outcomes) == TOP_UPS
    assert set().union(*outcomes) <= {"done"}
    references = {
        t.reference: t.provider_ref
        for t in setup.exec(select(TopUp).where(TopUp.id.in_(ids))).all()  # type: ignore[union-attr]
    }
    made = [
        pi
        for pi in fake_stripe.of_kind("payment_intent")
        if pi["metadata"].get("jishi_reference") in references
    ]
    # One PaymentIntent per top-up, the one each top-up records, from one request each after
    # the failed first attempt.
    keys = [k for m, p, k in fake_stripe.requests if m == "POST" and p == "/v1/payment_intents"]
    sent = {
        r.idempotency_key: keys.count(r.idempotency_key)
        for r in setup.exec(select(PaymentOutbox).where(PaymentOutbox.subject_id.in_(ids))).all()  # type: ignore[attr-defined]
    }
    assert set(sent.values()) == {2}
    assert len(made) == TOP_UPS
    assert {pi["metadata"]["jishi_reference"]: pi["id"] for pi in made} == references
    setup.close()


def test_a_worker_killed_after_stripe_did_the_work_converges(
    live_server, fake_stripe, payer, tmp_path
):
    settings = stripe_settings(fake_stripe, PAYOUT_MINIMUM_MINOR=1)
    server = live_server(**settings)
    app = server.app
    client = app.test_client()
    fake_stripe.webhook_target = webhooks_to(client)
    session = app.extensions["db"].session()
    buyer = quick_org(client, session, ["buyer"])
    vendor = quick_org(client, session, ["vendor"])
    paid_top_up(client, buyer, payer, fake_stripe, 5_000, "fund")
    catalog = make_offer(session, vendor.id, price_minor=2_000)
    assert (
        client.post(
            f"/api/v1/offers/{catalog.offer_id}/purchase",
            json={"accept_terms_sha256": catalog.terms_sha256},
            headers=buyer.headers("licenses:write", **{"Idempotency-Key": "buy"}),
        ).status_code
        == 201
    )
    account = fake_stripe.create_account()
    assert (
        client.put(
            f"/api/v1/organizations/{vendor.id}/payout-account",
            json={"account_id": account},
            headers=vendor.headers("payouts:write"),
        ).status_code
        == 200
    )
    # The payout is held and its transfer queued, not sent.
    (payout,) = payouts.run_payouts(
        session=session, gateway=app.extensions["payment_gateway"], minimum_minor=1
    )
    assert account_posted(session, vendor.id, VENDOR_PAYABLE) == 1_800

    # A worker process sends it; Stripe makes the transfer and the worker dies before it hears.
    fake_stripe.inject("POST", "/v1/transfers", "hang")
    env = {
        **os.environ,
        "MARKETPLACE_ENV": "testing",
        "MARKETPLACE_DATABASE_URL": app.extensions["settings"].database_url,
        "MARKETPLACE_INSTANCE_PATH": str(tmp_path / "worker"),
        "MARKETPLACE_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
        "MARKETPLACE_PAYMENTS": "stripe",
        "STRIPE_API_KEY": fake_stripe.api_key,
        "STRIPE_WEBHOOK_SECRET": fake_stripe.webhook_secrets[0],
        "STRIPE_API_BASE": fake_stripe.url,
        "MARKETPLACE_STRIPE_TIMEOUT_S": "20",
        "MARKETPLACE_PAYMENTS_OUTBOX_LEASE_S": "60",
    }
    jishi = Path(sys.executable).parent / "jishi"
    worker = subprocess.Popen(
        [str(jishi), "payments", "work", "--once"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert fake_stripe.worked.wait(60), "the worker never reached Stripe"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        fake_stripe.unhang()
    group = [
        t for t in fake_stripe.of_kind("transfer") if t["transfer_group"] == payout.transfer_group
    ]
    assert len(group) == 1  # Stripe moved the money
    session.rollback()  # end the read snapshot: the worker wrote since
    message = session.exec(
        select(PaymentOutbox).where(
            PaymentOutbox.kind == "transfer", PaymentOutbox.subject_id == payout.id
        )
    ).one()
    assert message.status == "pending" and message.attempts == 1 and message.lease_token
    assert session.get(Payout, payout.id).status == "pending"
    # The dead worker's lease holds the row until it expires.
    gateway, policy = app.extensions["payment_gateway"], _policy(app)
    assert outbox.process_due(session, gateway, policy, limit=10) == {}
    with app.extensions["db"].engine.begin() as conn:  # the lease runs out
        conn.execute(
            sa.update(PaymentOutbox.__table__)
            .where(PaymentOutbox.__table__.c.id == message.id)
            .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    assert outbox.process_due(session, gateway, policy, limit=10) == {"done": 1}
    paid = session.get(Payout, payout.id, populate_existing=True)
    assert paid.status == "paid" and paid.provider_ref == group[0]["id"]
    # Still exactly one transfer: the retry's key made Stripe replay its first answer.
    assert [
        t["id"]
        for t in fake_stripe.of_kind("transfer")
        if t["transfer_group"] == payout.transfer_group
    ] == [group[0]["id"]]
    assert account_posted(session, vendor.id, VENDOR_PAYABLE) == 0
    rep = reconcile.report(session=session, gateway=gateway)
    assert rep.mismatches == []
    assert ledger.check_invariants(session) == []
    session.close()
