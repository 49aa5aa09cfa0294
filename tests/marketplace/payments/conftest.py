"""The fake Stripe server (one per test session) and an app that pays through it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import stripe

from tests.conftest import Org
from tests.fakes.stripe_server import FakeStripe

CLIENT_TIMEOUT_S = 0.5


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[FakeStripe]:
    server = FakeStripe(timeout_delay_s=CLIENT_TIMEOUT_S * 3).start()
    yield server
    server.stop()


@pytest.fixture
def fake_stripe(stripe_server: FakeStripe) -> Iterator[FakeStripe]:
    """The session's fake Stripe, with every fault switched off for this test."""
    stripe_server.reset_switches()
    yield stripe_server
    stripe_server.reset_switches()


def stripe_settings(fake: FakeStripe, **overrides: Any) -> dict[str, Any]:
    """App settings that pay through ``fake`` with short deadlines and immediate retries."""
    return {
        "PAYMENTS": "stripe",
        "STRIPE_API_KEY": fake.api_key,
        "STRIPE_WEBHOOK_SECRET": ",".join(fake.webhook_secrets),
        "STRIPE_API_BASE": fake.url,
        "STRIPE_TIMEOUT_S": CLIENT_TIMEOUT_S,
        "PAYMENTS_OUTBOX_LEASE_S": CLIENT_TIMEOUT_S * 2,
        "PAYMENTS_OUTBOX_BACKOFF_S": 0.0,
        **overrides,
    }


def set_payments_bounds(app: Any, **bounds: Any) -> None:
    """Change bounds of the running app's payments service, which took them from the settings
    when the app was built."""
    app.extensions["payments"] = replace(app.extensions["payments"], **bounds)


@pytest.fixture
def payer(fake_stripe: FakeStripe) -> stripe.StripeClient:
    """The payer's side: confirms PaymentIntents as Stripe.js would, through the real SDK."""
    return stripe.StripeClient(
        fake_stripe.api_key,
        base_addresses={"api": fake_stripe.url},
        max_network_retries=0,
    )


def webhooks_to(client: Any) -> Any:
    """Deliver the fake's webhooks to the app through ``client`` (a Flask test client)."""

    def post(body: bytes, headers: dict[str, str]) -> int:
        return int(
            client.post("/api/v1/payments/stripe/webhook", data=body, headers=headers).status_code
        )

    return post


def quick_org(client: Any, db_session: Any, roles: list[str]) -> Org:
    """An organisation with an API client of all its scopes, made without a person's password.

    Registration through the API hashes a password with argon2 (half a second here); payments
    tests need many organisations and no people.
    """
    from marketplace.accounts import services as accounts
    from marketplace.accounts.models import Organization

    org = Organization(name=f"org {uuid.uuid4().hex[:8]}", roles=" ".join(sorted(roles)))
    db_session.add(org)
    db_session.flush()
    creds = accounts.create_client(
        session=db_session,
        org=org,
        name="tests",
        scopes=None,
        granting_client_id="tests",
        granting_scopes=org.allowed_scopes,
    )
    return Org(
        client=client,
        id=org.id,
        user_id=0,
        email="",
        client_id=creds.client_id,
        client_secret=creds.client_secret or "",
        scopes=creds.scopes,
    )


@pytest.fixture
def make_org(client: Any, db_session: Any) -> Any:
    return lambda roles, name=None: quick_org(client, db_session, roles)


def admin_headers(client: Any, db_session: Any) -> dict[str, str]:
    """A bearer token of a platform administrator."""
    return quick_org(client, db_session, ["admin"]).headers("admin ledger:read")


def paid_top_up(client: Any, org: Any, payer: Any, fake: FakeStripe, amount: int, key: str) -> Any:
    """A top-up the payer pays by card, with its webhook delivered; the top-up's JSON."""
    resp = client.post(
        "/api/v1/wallet/top-ups",
        json={"amount_minor": amount, "currency": "CNY"},
        headers=org.headers("licenses:write", **{"Idempotency-Key": key}),
    )
    assert resp.status_code == 201, resp.json
    payer.v1.payment_intents.confirm(
        resp.json["payment_intent_id"], {"payment_method": "pm_card_visa"}
    )
    fake.deliver()
    done = client.get(f"/api/v1/wallet/top-ups/{resp.json['id']}", headers=org.headers())
    assert done.json["status"] == "succeeded", done.json
    return done.json


@pytest.fixture
def hooks(fake_stripe: FakeStripe, client: Any) -> FakeStripe:
    """The fake Stripe, delivering its webhooks to this test's app."""
    fake_stripe.webhook_target = webhooks_to(client)
    return fake_stripe


@pytest.fixture
def admin(client: Any, db_session: Any) -> dict[str, str]:
    return admin_headers(client, db_session)


def assert_consistent(app: Any, db_session: Any) -> None:
    """The ledger balances, and our records match the fake server's own state."""
    from marketplace.ledger import services as ledger
    from marketplace.payments import reconcile

    rep = reconcile.report(session=db_session, gateway=app.extensions["payment_gateway"])
    assert rep.mismatches == []
    assert ledger.check_invariants(db_session) == []
