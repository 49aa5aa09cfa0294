"""A buyer's whole journey with exact balances at every step: top-up, trial, purchase, metered
use (calls simulated through the entitlement API, as the evaluate endpoint makes them), settle."""

from __future__ import annotations

from marketplace.ledger import services as ledger
from marketplace.licensing import entitlements
from tests.marketplace.licensing.builders import make_offer

BUY = "licenses:write"


def balances(client, org):
    """{code: balance} of the organisation's accounts, from its own statement."""
    statement = client.get(
        "/api/v1/ledger/statement?currency=CNY", headers=org.headers("ledger:read")
    )
    assert statement.status_code == 200
    return {
        a["code"]: (a["balance_minor"], a["debits_pending"]) for a in statement.json["accounts"]
    }


def test_top_up_trial_purchase_metered_use_settle(client, app, buyer, vendor, db_session, runner):
    # 5.00 CNY up front, then 12.34 CNY per 1000 calls; trial of 3 calls.
    catalog = make_offer(
        db_session,
        vendor.id,
        kind="per_inference",
        price_minor=500,
        royalty_per_1k_minor=1_234,
        trial_calls=3,
        trial_days=14,
    )

    def simulate_calls(n):
        usages = []
        for _ in range(n):
            ent = entitlements.check_entitlement(
                session=db_session,
                organization_id=buyer.id,
                listing_id=catalog.listing_id,
                version_id=catalog.version_id,
            )
            # (the model would run here)
            usages.append(
                entitlements.record_successful_call(
                    session=db_session, entitlement=ent, reserve_calls=100
                )
            )
        return usages

    # 1. Top-up: 20.00 CNY.
    resp = client.post(
        "/api/v1/wallet/top-ups",
        json={"amount_minor": 2_000, "currency": "CNY"},
        headers=buyer.headers(BUY, **{"Idempotency-Key": "top-1"}),
    )
    assert resp.status_code == 201
    assert balances(client, buyer) == {"wallet": (2_000, 0)}

    # 2. Trial: three free calls, then no entitlement; the wallet is untouched.
    trial = client.post(
        f"/api/v1/offers/{catalog.offer_id}/trial",
        json={"accept_terms_sha256": catalog.terms_sha256},
        headers=buyer.headers(BUY),
    ).json
    usages = simulate_calls(3)
    assert [u["calls_remaining"] for u in usages] == [2, 1, 0]
    assert {u["licence_id"] for u in usages} == {trial["id"]}
    assert balances(client, buyer) == {"wallet": (2_000, 0)}

    # 3. Purchase: 5.00 CNY, 4.50 to the vendor and 0.50 to the platform.
    order = client.post(
        f"/api/v1/offers/{catalog.offer_id}/purchase",
        json={"accept_terms_sha256": catalog.terms_sha256},
        headers=buyer.headers(BUY, **{"Idempotency-Key": "buy-1"}),
    ).json
    assert order["status"] == "paid"
    assert balances(client, buyer) == {"wallet": (1_500, 0)}
    assert balances(client, vendor) == {"vendor_payable": (450, 0)}

    # 4. Metered use: 250 calls. Reservations of 100 calls are settled each time they run out.
    usages = simulate_calls(250)
    assert {u["kind"] for u in usages} == {"per_inference"}
    assert sum(u["call_accrued_minor"] for u in usages) == 250 * 1_234 // 1000 == 308
    # Settled so far: calls 1..200 -> floor(200 * 1.234) = 246; calls 201..300 are reserved:
    # floor(300 * 1.234) - 246 = 370 - 246 = 124 held.
    assert balances(client, buyer) == {"wallet": (1_500 - 246, 124)}
    licence = client.get(f"/api/v1/licenses/{order['licence_id']}", headers=buyer.headers()).json
    assert licence["usage"] == {
        "calls_used": 250,
        "calls_settled": 200,
        "calls_unsettled": 50,
        "royalty_per_1k_minor": 1_234,
        "accrued_minor": 308,
        "settled_minor": 246,
        "unsettled_minor": 62,
        "royalty_per_1k_display": "¥12.34",
        "accrued_display": "¥3.08",
        "settled_display": "¥2.46",
        "unsettled_display": "¥0.62",
    }

    # 5. Settle: exactly floor(250 * 1234 / 1000) = 308 in total; the hold is released.
    result = runner.invoke(args=["ledger", "settle"])
    assert result.exit_code == 0, result.output
    assert balances(client, buyer) == {"wallet": (1_500 - 308, 0)}
    # Vendor: 450 from the sale + 90 % of 308 (277.2 -> 277).
    assert balances(client, vendor) == {"vendor_payable": (450 + 277, 0)}
    wallet = client.get("/api/v1/wallet", headers=buyer.headers()).json["balances"][0]
    assert wallet["available_minor"] == 1_192 and wallet["available_display"] == "¥11.92"
    assert ledger.check_invariants(db_session) == []
