"""Demonstration data for the embedded run: a vendor, a buyer and what they trade."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask
from sqlmodel import select

from marketplace.accounts import services as accounts
from marketplace.accounts.models import User
from marketplace.accounts.schemas import RegisterRequest
from marketplace.db import get_session

DEMO_PASSWORD = "demo-Password-2026"
DEMO_VENDOR = "vendor@demo.jishi.test"
DEMO_BUYER = "buyer@demo.jishi.test"


def load_demo_data(app: Flask) -> Iterator[str]:
    """Create the demo organisations once; later runs find them and change nothing."""
    with app.app_context():
        session = get_session()
        if session.exec(select(User).where(User.email == DEMO_VENDOR)).first() is not None:
            yield "demo data present"
            return
        vendor = accounts.register(
            session=session,
            request=RegisterRequest(
                email=DEMO_VENDOR,
                password=DEMO_PASSWORD,
                organization_name="Demo Vision Lab 演示视觉实验室",
                organization_roles=["vendor"],
            ),
        )
        buyer = accounts.register(
            session=session,
            request=RegisterRequest(
                email=DEMO_BUYER,
                password=DEMO_PASSWORD,
                organization_name="Demo Manufacturing Co. 演示制造公司",
                organization_roles=["buyer"],
            ),
        )
        yield f"demo vendor {DEMO_VENDOR}: client {vendor.client.client_id} secret {vendor.client.client_secret}"
        yield f"demo buyer {DEMO_BUYER}: client {buyer.client.client_id} secret {buyer.client.client_secret}"
        yield from _demo_wallet(app, buyer.organization_id)


DEMO_TOP_UP_MINOR = 100_000  # 1,000.00 CNY, simulated by the offline gateway


def _demo_wallet(app: Flask, buyer_organization_id: int) -> Iterator[str]:
    """Fund the demo buyer's wallet so that trials can be followed by purchases at once."""
    from marketplace.ledger.money import format_minor
    from marketplace.payments.schemas import TopUpCreate
    from marketplace.payments.services import create_top_up

    top_up = create_top_up(
        session=get_session(),
        gateway=app.extensions["payment_gateway"],
        organization_id=buyer_organization_id,
        request=TopUpCreate(amount_minor=DEMO_TOP_UP_MINOR, currency="CNY"),
        idempotency_key="demo-wallet",
        amount_minor_max=DEMO_TOP_UP_MINOR,
    )
    simulated = " (simulated)" if top_up.payment.simulated else ""
    yield f"demo buyer wallet: {format_minor(top_up.amount_minor, 'CNY', 2)}{simulated}"
