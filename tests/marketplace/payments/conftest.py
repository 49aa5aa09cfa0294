"""The fake Stripe server (one per test session) and an app that pays through it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import stripe

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
