"""A refund made on the administrator's page goes back to the buyer's card, as one made over
the API does: the same service, against the fake Stripe server."""

from __future__ import annotations

import pytest
from sqlmodel import select

from marketplace.licensing.models import Order
from tests.marketplace.licensing.builders import make_offer, wallet_available
from tests.marketplace.payments.conftest import (  # noqa: F401 - fixtures used by name
    fake_stripe,
    hooks,
    paid_top_up,
    payer,
    stripe_server,
    stripe_settings,
)
from tests.marketplace.payments.test_stripe_refunds import refunded_at_stripe
from tests.marketplace.web.test_pages import accept_on_page


@pytest.fixture
def app_config(app_config, fake_stripe):  # noqa: F811 - the fixture above, by name
    app_config.update(stripe_settings(fake_stripe))
    return app_config


def test_a_refund_on_the_admin_page_goes_back_to_the_card(
    app,
    client,
    person,
    platform_person,
    payer,  # noqa: F811
    hooks,  # noqa: F811
    db_session,
):
    vendor, buyer = person(["vendor"]), person(["buyer"])
    top_up = paid_top_up(client, buyer.org, payer, hooks, 10_000, "card")
    catalog = make_offer(db_session, vendor.org.id, price_minor=10_000)
    accept_on_page(buyer, catalog, "purchase")
    (order,) = db_session.exec(select(Order).where(Order.organization_id == buyer.org.id)).all()
    assert wallet_available(db_session, buyer.org.id) == 0

    admin = platform_person("admin")
    page = admin.post(
        "/admin/refunds",
        {"order_id": str(order.id), "amount": "25.00", "reason": "broken"},
        token_from="/admin",
    )
    assert page.status_code == 302
    db_session.refresh(order)
    assert (order.refunded_minor, order.status) == (2_500, "partially_refunded")
    # The money left for the card, not for the wallet.
    assert refunded_at_stripe(hooks, top_up["payment_intent_id"]) == 2_500
    assert wallet_available(db_session, buyer.org.id) == 0
    shown = admin.browser.get("/admin?lang=en").get_data(as_text=True)
    assert f"Refunded ¥25.00 of order {order.id}." in shown
