"""The PaymentGateway contract, run against every implementation installed here."""

from __future__ import annotations

import pytest

from marketplace.payments.gateway import (
    INTENT_FAILED,
    INTENT_PENDING,
    INTENT_SUCCEEDED,
    OfflineGateway,
    PaymentGateway,
)

GATEWAYS = [pytest.param(OfflineGateway, id="offline")]


@pytest.fixture(params=GATEWAYS)
def gateway(request) -> PaymentGateway:
    return request.param()


def test_names_itself_and_says_whether_money_moves(gateway):
    assert gateway.name and isinstance(gateway.name, str)
    assert isinstance(gateway.simulated, bool)


def test_top_up_returns_an_intent(gateway):
    intent = gateway.create_top_up(reference="top-up-1", amount_minor=1_000, currency="CNY")
    assert intent.status in {INTENT_SUCCEEDED, INTENT_PENDING, INTENT_FAILED}
    assert intent.provider_ref


def test_same_reference_is_the_same_payment(gateway):
    first = gateway.create_top_up(reference="top-up-2", amount_minor=500, currency="JPY")
    again = gateway.create_top_up(reference="top-up-2", amount_minor=500, currency="JPY")
    assert first.provider_ref == again.provider_ref


def test_non_positive_amounts_are_refused(gateway):
    with pytest.raises(ValueError):
        gateway.create_top_up(reference="top-up-3", amount_minor=0, currency="CNY")


def test_offline_gateway_is_simulated_and_immediate():
    gateway = OfflineGateway()
    assert gateway.simulated and gateway.name == "offline"
    intent = gateway.create_top_up(reference="r", amount_minor=1, currency="USD")
    assert intent.status == INTENT_SUCCEEDED and intent.client_secret is None
