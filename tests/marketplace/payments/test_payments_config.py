"""Payment settings, the production guard on Stripe keys, periodic tasks, and the offline rail."""

from __future__ import annotations

from dataclasses import replace

import pytest

from marketplace import create_app, periodic
from marketplace.audit.keys import write_private_key
from marketplace.audit.notes import Signer
from marketplace.config import ConfigError, Settings, setting_names
from tests.marketplace.licensing.builders import fund_wallet, make_offer


def test_stripe_settings_keep_stripes_own_names():
    env = {
        "STRIPE_API_KEY": "sk_live_abc",
        "STRIPE_WEBHOOK_SECRET": "whsec_a, whsec_b",
        "STRIPE_API_BASE": "http://127.0.0.1:1",
        "MARKETPLACE_STRIPE_API_KEY": "ignored",
        "MARKETPLACE_PAYOUT_MINIMUM_MINOR": "250",
    }
    settings = Settings.load(None, env)
    assert settings.stripe_api_key == "sk_live_abc"
    assert settings.webhook_secrets == ["whsec_a", "whsec_b"]
    assert settings.stripe_api_base == "http://127.0.0.1:1"
    assert settings.payout_minimum_minor == 250
    names = setting_names()
    assert {"STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_BASE"} <= set(names)
    assert "MARKETPLACE_STRIPE_TEST_KEY_ALLOWED" in names


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MARKETPLACE_PAYOUT_MINIMUM_MINOR": "-1"}, "MARKETPLACE_PAYOUT_MINIMUM_MINOR"),
        (
            {"MARKETPLACE_STRIPE_TIMEOUT_S": "30", "MARKETPLACE_PAYMENTS_OUTBOX_LEASE_S": "40"},
            "MARKETPLACE_PAYMENTS_OUTBOX_LEASE_S",
        ),
    ],
)
def test_bad_payment_settings_are_refused(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.load(None, env)


def _production(tmp_path, url, **extra):
    key_path = tmp_path / "audit.key"  # production signs its journal with the operator's key
    if not key_path.exists():
        write_private_key(key_path, Signer.generate("jishi.example/log"))
    return {
        "ENV": "production",
        "SECRET_KEY": "s" * 40,
        "INSTANCE_PATH": str(tmp_path),
        "DATABASE_URL": url,
        "PAYMENTS": "stripe",
        "STRIPE_WEBHOOK_SECRET": "whsec_x",
        "AUDIT_KEY_PATH": str(key_path),
        "AUDIT_ORIGIN": "jishi.example/log",
        **extra,
    }


def test_production_refuses_a_test_mode_key_unless_told(tmp_path, migrated_database):
    url = migrated_database[0]
    with pytest.raises(ConfigError, match="STRIPE_API_KEY"):
        create_app(_production(tmp_path, url, STRIPE_API_KEY="sk_test_123"))
    with pytest.raises(ConfigError, match="STRIPE_API_KEY"):
        create_app(_production(tmp_path, url, STRIPE_API_KEY=""))
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        create_app(_production(tmp_path, url, STRIPE_API_KEY="sk_live_1", STRIPE_WEBHOOK_SECRET=""))
    for extra in (
        {"STRIPE_API_KEY": "sk_live_123"},
        {"STRIPE_API_KEY": "sk_test_123", "STRIPE_TEST_KEY_ALLOWED": True},
    ):
        app = create_app(_production(tmp_path, url, **extra))
        assert app.extensions["payment_gateway"].name == "stripe"
        assert {t.name for t in periodic.registered(app)} >= {
            "payments.outbox",
            "payments.reconcile",
        }
        app.extensions["db"].engine.dispose()


def test_offline_rail(app, client, buyer, vendor, db_session):
    assert [t.name for t in periodic.registered(app) if t.name.startswith("payments")] == [
        "payments.outbox"
    ]
    hook = client.post("/api/v1/payments/stripe/webhook", data=b"{}")
    assert hook.status_code == 404 and hook.json["code"] == "webhook_unavailable"
    fund_wallet(db_session, buyer.id, 5_000)
    out = client.post(
        "/api/v1/wallet/withdrawals",
        json={"amount_minor": 100, "currency": "CNY"},
        headers=buyer.headers("licenses:write", **{"Idempotency-Key": "w"}),
    )
    assert out.status_code == 409 and out.json["code"] == "withdrawal_unavailable"
    # Payouts work offline too, marked simulated.
    catalog = make_offer(db_session, vendor.id, price_minor=3_000)
    client.post(
        f"/api/v1/offers/{catalog.offer_id}/purchase",
        json={"accept_terms_sha256": catalog.terms_sha256},
        headers=buyer.headers("licenses:write", **{"Idempotency-Key": "b"}),
    )
    linked = client.put(
        f"/api/v1/organizations/{vendor.id}/payout-account",
        json={"account_id": "acct_demo"},
        headers=vendor.headers("payouts:write"),
    )
    assert linked.status_code == 200 and linked.json["provider"] == "offline"
    payments = replace(app.extensions["payments"], payout_minimum_minor=1)
    (payout,) = payments.pay_out(session=db_session)
    assert payout.status == "paid" and payout.simulated and payout.amount_minor == 2_700
