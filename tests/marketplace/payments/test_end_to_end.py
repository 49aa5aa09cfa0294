"""The buyer's journey and a vendor payout over real HTTP, paid through the fake Stripe with
every fault switched on somewhere along the way, and both sides agreeing at the end.

The app serves on a real port against a database with real commits; Stripe's webhooks reach it
over HTTP; the node's periodic runner (what `jishi serve` starts) sends the outbox and
reconciles on its own. Top-up → trial → purchase → metered evaluation in the sandbox →
settlement → payout, with a 500, a timeout after the work, a declined card, duplicated, late,
reordered and lost webhooks, and a failing transfer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
import stripe

from marketplace import periodic
from marketplace.ledger import services as ledger
from marketplace.metering.services import settle
from marketplace.payments import reconcile
from tests import onnx_models as m
from tests.marketplace.payments.conftest import quick_org, stripe_settings

X = {"dtype": "float32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
BUY = "licenses:write"


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_buyer_journey_and_payout_through_stripe_with_every_fault(live_server, fake_stripe, payer):
    server = live_server(
        **stripe_settings(
            fake_stripe,
            PAYOUT_MINIMUM_MINOR=1,
            PAYMENTS_OUTBOX_INTERVAL_S=0.1,
            PAYMENTS_RECONCILE_INTERVAL_S=0.2,
            EVAL_TIMEOUT_S=5.0,
        )
    )
    app, base = server.app, server.url
    http = requests.Session()

    def call(
        method: str,
        path: str,
        org: Any,
        scope: str | None = None,
        key: str | None = None,
        content_type: str | None = None,
        **kw: Any,
    ) -> requests.Response:
        headers = org.headers(scope, **({"Idempotency-Key": key} if key else {}))
        if content_type:
            headers["Content-Type"] = content_type
        for _ in range(10):
            resp = http.request(method, base + path, headers=headers, timeout=30, **kw)
            # A busy database answers 503 with Retry-After and wrote nothing: retry, as any
            # client should (the node's runner writes often in this test).
            if resp.status_code != 503 or resp.json().get("code") != "database_busy":
                return resp
            time.sleep(min(float(resp.headers.get("Retry-After", "1")), 1.0))
        return resp

    fake_stripe.webhook_target = lambda body, headers: (
        http.post(
            base + "/api/v1/payments/stripe/webhook", data=body, headers=headers, timeout=10
        ).status_code
    )
    setup = app.extensions["db"].session()
    tokens = app.test_client()  # only to mint tokens; every call below goes over HTTP
    buyer = quick_org(tokens, setup, ["buyer"])
    vendor = quick_org(tokens, setup, ["vendor"])
    admin = quick_org(tokens, setup, ["admin"])
    # Tokens first: minting one through the test client is not what this test is about.
    for org, scopes in (
        (buyer, [BUY, None, "sandbox:run"]),
        (vendor, ["models:write", "payouts:write", "ledger:read"]),
        (admin, ["admin"]),
    ):
        for scope in scopes:
            org.token(scope)
    node = periodic.Runner(app, tick_s=0.05)
    node.start()
    try:

        def top_up_state(top_up_id: int) -> dict[str, Any]:
            return call("GET", f"/api/v1/wallet/top-ups/{top_up_id}", buyer).json()

        def top_up(key: str, amount: int) -> dict[str, Any]:
            """POST the top-up (same key) until its payment exists, as a client would: the
            node's outbox runner may be the one that creates it."""
            body = {"amount_minor": amount, "currency": "CNY"}
            return wait_for(  # type: ignore[no-any-return]
                "the payment's client secret",
                lambda: (
                    (
                        r := call(
                            "POST", "/api/v1/wallet/top-ups", buyer, BUY, key, json=body
                        ).json()
                    )["client_secret"]
                    and r
                ),
            )

        def available() -> int:
            balances = call("GET", "/api/v1/wallet", buyer).json()["balances"]
            return balances[0]["available_minor"] if balances else 0

        # 1. Top-up of 30.00: Stripe answers 500; the client repeats the request with its key.
        #    Every webhook arrives twice.
        fake_stripe.inject("POST", "/v1/payment_intents", "500")
        fake_stripe.webhook_faults.duplicate = 1000
        first = call(
            "POST",
            "/api/v1/wallet/top-ups",
            buyer,
            BUY,
            "a",
            json={"amount_minor": 3_000, "currency": "CNY"},
        )
        assert first.status_code == 201 and first.json()["client_secret"] is None
        a = top_up("a", 3_000)
        assert a["id"] == first.json()["id"]
        payer.v1.payment_intents.confirm(a["payment_intent_id"], {"payment_method": "pm_card_visa"})
        fake_stripe.deliver()
        assert top_up_state(a["id"])["status"] == "succeeded"
        assert available() == 3_000

        # 2. Top-up of 20.00: Stripe creates the payment but the answer times out; the node's
        #    outbox runner sends it again. The card is declined, then paid; the webhooks come
        #    late and newest first.
        fake_stripe.webhook_faults = type(fake_stripe.webhook_faults)(hold=True)
        fake_stripe.inject("POST", "/v1/payment_intents", "timeout")
        b = call(
            "POST",
            "/api/v1/wallet/top-ups",
            buyer,
            BUY,
            "b",
            json={"amount_minor": 2_000, "currency": "CNY"},
        ).json()
        assert b["status"] == "pending"
        b = wait_for(
            "the outbox to create the payment",
            lambda: (s := top_up_state(b["id"]))["payment_intent_id"] and s,
        )
        try:
            payer.v1.payment_intents.confirm(
                b["payment_intent_id"], {"payment_method": "pm_card_chargeDeclined"}
            )
            raise AssertionError("the declined card was accepted")
        except stripe.CardError:
            pass
        payer.v1.payment_intents.confirm(b["payment_intent_id"], {"payment_method": "pm_card_visa"})
        fake_stripe.release(reverse=True)
        fake_stripe.deliver()
        assert top_up_state(b["id"])["status"] == "succeeded"

        # 3. Top-up of 10.00 whose webhooks are all lost: the node's reconciliation credits it.
        fake_stripe.webhook_faults = type(fake_stripe.webhook_faults)(drop=1000)
        c = top_up("c", 1_000)
        payer.v1.payment_intents.confirm(c["payment_intent_id"], {"payment_method": "pm_card_visa"})
        fake_stripe.deliver()
        wait_for("reconciliation", lambda: top_up_state(c["id"])["status"] == "succeeded")
        assert available() == 6_000

        # 4. The vendor publishes a model with a per-inference offer: 10.00, 25.00 per 1000
        #    calls, two trial calls.
        listing = call(
            "POST",
            "/api/v1/models",
            vendor,
            "models:write",
            json={
                "name": "Adder",
                "summary": "Adds.",
                "description_md": "Adds two tensors.",
                "task": "test",
                "tags": [],
            },
        ).json()
        version = call(
            "POST",
            f"/api/v1/models/{listing['id']}/versions?version=1.0.0",
            vendor,
            "models:write",
            content_type="application/octet-stream",
            data=m.add(),
        )
        assert version.status_code == 201, version.text
        offer = call(
            "POST",
            f"/api/v1/models/{listing['id']}/offers",
            vendor,
            "models:write",
            json={
                "name": "Metered",
                "kind": "per_inference",
                "currency": "CNY",
                "price_minor": 1_000,
                "royalty_per_1k_minor": 25_000,
                "trial_calls": 2,
                "trial_days": 7,
                "term_days": None,
                "allow_download": False,
                "commercial_use": True,
                "terms_md": "Per call.",
            },
        ).json()
        accept = {"accept_terms_sha256": offer["terms_sha256"]}
        evaluate = f"/api/v1/models/{listing['id']}/versions/1.0.0/evaluate"

        # 5. Trial: two free calls in the sandbox, then none.
        assert (
            call("POST", f"/api/v1/offers/{offer['id']}/trial", buyer, BUY, json=accept).status_code
            == 201
        )
        for left in (1, 0):
            resp = call("POST", evaluate, buyer, "sandbox:run", json={"inputs": {"x": X, "y": X}})
            assert resp.status_code == 200, resp.text
            assert resp.json()["usage"]["calls_remaining"] == left
        assert available() == 6_000

        # 6. Purchase (10.00), then metered calls at 25.00 per 1000 calls.
        order = call(
            "POST", f"/api/v1/offers/{offer['id']}/purchase", buyer, BUY, "buy", json=accept
        )
        assert order.status_code == 201, order.text
        for _ in range(4):
            resp = call("POST", evaluate, buyer, "sandbox:run", json={"inputs": {"x": X, "y": X}})
            assert resp.status_code == 200, resp.text
            assert resp.json()["usage"]["kind"] == "per_inference"
        with app.app_context():
            settle(session=setup)
        # floor(4 * 25000 / 1000) = 100 for the calls; 1 000 for the licence.
        assert available() == 6_000 - 1_000 - 100
        # Vendor: 90 % of 1 000 and of 100.
        vendor_payable = 900 + 90

        # 7. Payout: the first transfer fails (capability lost) and returns the money; the
        #    second run pays, its answer timing out after Stripe moved the money.
        account = fake_stripe.create_account()
        assert (
            call(
                "PUT",
                f"/api/v1/organizations/{vendor.id}/payout-account",
                vendor,
                "payouts:write",
                json={"account_id": account},
            ).status_code
            == 200
        )
        fake_stripe.objects[account]["capabilities"]["transfers"] = "inactive"
        (first_run,) = call("POST", "/api/v1/payouts/run", admin, "admin", json={}).json()["items"]
        # (the node's outbox runner may be the one that sends it)
        (failed,) = wait_for(
            "the transfer to be refused",
            lambda: [
                p
                for p in call("GET", "/api/v1/payouts", vendor, "ledger:read").json()["items"]
                if p["id"] == first_run["id"] and p["status"] == "failed"
            ],
        )
        assert failed["amount_minor"] == vendor_payable
        assert failed["failure_code"] == "insufficient_capabilities_for_transfer"
        fake_stripe.objects[account]["capabilities"]["transfers"] = "active"
        fake_stripe.inject("POST", "/v1/transfers", "timeout")
        (pending,) = call("POST", "/api/v1/payouts/run", admin, "admin", json={}).json()["items"]
        assert pending["status"] == "pending"
        paid = wait_for(
            "the outbox to confirm the transfer",
            lambda: [
                p
                for p in call("GET", "/api/v1/payouts", vendor, "ledger:read").json()["items"]
                if p["status"] == "paid"
            ],
        )
        assert paid[0]["amount_minor"] == vendor_payable
        transfers = [t for t in fake_stripe.of_kind("transfer") if t["destination"] == account]
        assert [t["id"] for t in transfers] == [paid[0]["provider_ref"]]
        assert transfers[0]["amount"] == vendor_payable
        statement = call(
            "GET", "/api/v1/ledger/statement?currency=CNY", vendor, "ledger:read"
        ).json()
        assert statement["accounts"][0]["balance_minor"] == 0
        assert [e["kind"] for e in statement["entries"] if e["kind"].startswith("payout")] == [
            # The failed payout's hold and the paid one's; a void has no entries.
            "payout",
            "payout",
            "payout_settled",
        ]
    finally:
        node.stop()
        app.extensions["sandbox_pool"].close()
    # Both sides agree, to the unit: the CLI's report and the ledger's own check.
    with app.app_context():
        report = reconcile.report(session=setup, gateway=app.extensions["payment_gateway"])
        assert report.mismatches == [], report.lines()
        assert ledger.check_invariants(setup) == []
        ours = {
            a["payment_intent_id"]
            for a in (top_up_state(a["id"]), top_up_state(b["id"]), top_up_state(c["id"]))
        }
        paid_at_stripe = {
            pi["id"]
            for pi in fake_stripe.of_kind("payment_intent")
            if pi["status"] == "succeeded"
            and pi["metadata"].get("jishi_organization_id") == str(buyer.id)
            and pi["id"] in ours
        }
        assert paid_at_stripe == ours
        result = app.test_cli_runner().invoke(args=["payments", "reconcile", "--report"])
        assert result.exit_code == 0, result.output
    setup.close()
    http.close()
