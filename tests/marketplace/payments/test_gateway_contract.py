"""The PaymentGateway contract, run against every implementation: offline, and Stripe through
the fake server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import stripe

from marketplace.payments.gateway import (
    INTENT_FAILED,
    INTENT_PENDING,
    INTENT_SUCCEEDED,
    OfflineGateway,
    PaymentGateway,
    ProviderRefused,
    ProviderUnavailable,
    RefundRequest,
    TopUpRequest,
    TransferRequest,
)
from marketplace.payments.stripe_gateway import StripeGateway
from tests.marketplace.payments.conftest import CLIENT_TIMEOUT_S


@dataclass
class Peer:
    gateway: PaymentGateway
    collect: Callable[[int], str]  # a payment of the amount, collected; its provider ref
    destination: Callable[[], str]  # an account that can receive transfers


def _offline() -> Peer:
    gateway = OfflineGateway()
    return Peer(
        gateway,
        lambda amount: (
            gateway.create_top_up(
                TopUpRequest(idempotency_key=uuid.uuid4().hex, amount_minor=amount, currency="CNY")
            ).provider_ref
        ),
        lambda: "acct_offline",
    )


def _stripe(fake, payer) -> Peer:
    gateway = StripeGateway(api_key=fake.api_key, api_base=fake.url, timeout_s=CLIENT_TIMEOUT_S)

    def collect(amount: int) -> str:
        ref = gateway.create_top_up(
            TopUpRequest(idempotency_key=uuid.uuid4().hex, amount_minor=amount, currency="CNY")
        ).provider_ref
        payer.v1.payment_intents.confirm(ref, {"payment_method": "pm_card_visa"})
        return ref

    return Peer(gateway, collect, fake.create_account)


@pytest.fixture(params=["offline", "stripe"])
def peer(request) -> Peer:
    if request.param == "offline":
        return _offline()
    return _stripe(request.getfixturevalue("fake_stripe"), request.getfixturevalue("payer"))


def test_names_itself_and_says_whether_money_moves(peer):
    assert peer.gateway.name and isinstance(peer.gateway.name, str)
    assert isinstance(peer.gateway.simulated, bool)


def test_top_up_returns_an_intent(peer):
    intent = peer.gateway.create_top_up(
        TopUpRequest(idempotency_key=uuid.uuid4().hex, amount_minor=1_000, currency="CNY")
    )
    assert intent.status in {INTENT_SUCCEEDED, INTENT_PENDING, INTENT_FAILED}
    assert intent.provider_ref
    assert (intent.amount_minor, intent.currency) == (1_000, "CNY")


def test_same_reference_is_the_same_payment(peer):
    request = TopUpRequest(idempotency_key=uuid.uuid4().hex, amount_minor=500, currency="JPY")
    first = peer.gateway.create_top_up(request)
    again = peer.gateway.create_top_up(request)
    assert first.provider_ref == again.provider_ref


def test_non_positive_amounts_are_refused():
    with pytest.raises(ValueError):
        TopUpRequest(idempotency_key="top-up-3", amount_minor=0, currency="CNY")
    with pytest.raises(ValueError):
        TransferRequest(
            idempotency_key="k",
            amount_minor=-1,
            currency="CNY",
            destination="d",
            transfer_group="g",
        )
    with pytest.raises(ValueError):
        RefundRequest(idempotency_key="k", payment_ref="p", amount_minor=0)


def test_a_transfer_is_made_once_per_key(peer):
    peer.collect(5_000)  # money to send
    destination = peer.destination()
    key = uuid.uuid4().hex
    request = TransferRequest(
        idempotency_key=key,
        amount_minor=1_200,
        currency="CNY",
        destination=destination,
        transfer_group="g-1",
        metadata={"a": "b"},
    )
    first = peer.gateway.create_transfer(request)
    again = peer.gateway.create_transfer(request)
    assert first.provider_ref == again.provider_ref
    assert (first.amount_minor, first.currency, first.destination) == (1_200, "CNY", destination)


def test_a_refund_is_made_once_per_key(peer):
    payment = peer.collect(3_000)
    key = uuid.uuid4().hex
    request = RefundRequest(idempotency_key=key, payment_ref=payment, amount_minor=1_000)
    first = peer.gateway.create_refund(request)
    again = peer.gateway.create_refund(request)
    assert first.provider_ref == again.provider_ref
    assert first.amount_minor == 1_000 and first.payment_ref == payment


def test_stripe_states_and_errors(fake_stripe, payer):
    peer = _stripe(fake_stripe, payer)
    gateway = peer.gateway
    intent = gateway.create_top_up(
        TopUpRequest(idempotency_key=uuid.uuid4().hex, amount_minor=800, currency="CNY")
    )
    assert intent.status == INTENT_PENDING and intent.client_secret
    with pytest.raises(stripe.CardError):
        payer.v1.payment_intents.confirm(
            intent.provider_ref, {"payment_method": "pm_card_chargeDeclined"}
        )
    failed = gateway.get_top_up(intent.provider_ref)
    assert failed.status == INTENT_FAILED and failed.failure_code == "generic_decline"
    payer.v1.payment_intents.confirm(intent.provider_ref, {"payment_method": "pm_card_visa"})
    assert gateway.get_top_up(intent.provider_ref).status == INTENT_SUCCEEDED
    # Refunds never exceed what was captured.
    with pytest.raises(ProviderRefused) as refused:
        gateway.create_refund(
            RefundRequest(
                idempotency_key=uuid.uuid4().hex, payment_ref=intent.provider_ref, amount_minor=801
            )
        )
    assert refused.value.code == "amount_too_large"
    # A key reused with other parameters is a conflict for a person, not a retry.
    key = uuid.uuid4().hex
    gateway.create_top_up(TopUpRequest(idempotency_key=key, amount_minor=100, currency="CNY"))
    with pytest.raises(Exception) as clash:
        gateway.create_top_up(TopUpRequest(idempotency_key=key, amount_minor=101, currency="CNY"))
    assert clash.value.code == "payment_provider_conflict"
    # 500s and timeouts are transient.
    fake_stripe.inject("POST", "/v1/payment_intents", "500")
    with pytest.raises(ProviderUnavailable):
        gateway.create_top_up(
            TopUpRequest(idempotency_key=uuid.uuid4().hex, amount_minor=100, currency="CNY")
        )
    fake_stripe.inject("GET", "/v1/payment_intents", "timeout")
    with pytest.raises(ProviderUnavailable):
        gateway.get_top_up(intent.provider_ref)
    # A wrong key is ours to fix: transient, and never a refusal that would undo a hold.
    wrong = StripeGateway(
        api_key="sk_test_wrong", api_base=fake_stripe.url, timeout_s=CLIENT_TIMEOUT_S
    )
    with pytest.raises(ProviderUnavailable):
        wrong.get_top_up(intent.provider_ref)


def test_offline_gateway_is_simulated_and_immediate():
    gateway = OfflineGateway()
    assert gateway.simulated and gateway.name == "offline"
    intent = gateway.create_top_up(
        TopUpRequest(idempotency_key="r", amount_minor=1, currency="USD")
    )
    assert intent.status == INTENT_SUCCEEDED and intent.client_secret is None
