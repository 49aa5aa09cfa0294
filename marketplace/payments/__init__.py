"""Payments: wallet top-ups, withdrawals, refunds and payouts through a payment provider."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from marketplace.config import Settings
    from marketplace.payments.gateway import PaymentGateway
    from marketplace.payments.services import PaymentsService


def make_gateway(settings: Settings) -> PaymentGateway:
    """The payment provider the settings name (Stripe, or the offline simulation)."""
    if settings.payments == "stripe":
        from marketplace.payments.stripe_gateway import StripeGateway

        return StripeGateway(
            api_key=settings.stripe_api_key,
            api_base=settings.stripe_api_base,
            timeout_s=settings.stripe_timeout_s,
        )
    from marketplace.payments.gateway import OfflineGateway

    return OfflineGateway()


def _send_due(app: Flask) -> object:
    from marketplace.db import get_session

    return payments_service(app).send_due(get_session())


def _reconcile(app: Flask) -> object:
    from marketplace.db import get_session

    return payments_service(app).reconcile(get_session())


def payments_service(app: Flask) -> PaymentsService:
    """The payments use cases, built once by :func:`init_app`."""
    service: PaymentsService = app.extensions["payments"]
    return service


def init_app(app: Flask) -> None:
    """Build the payment gateway and the payments service; register the API and the outbox and
    reconciliation work."""
    from marketplace import periodic
    from marketplace.payments.services import PaymentsService
    from marketplace.payments.views import bp

    config: Settings = app.extensions["settings"]
    gateway = make_gateway(config)
    app.extensions["payment_gateway"] = gateway
    app.extensions["payments"] = PaymentsService.from_settings(config, gateway)
    app.register_blueprint(bp)
    periodic.register(app, "payments.outbox", config.payments_outbox_interval_s, _send_due)
    if config.payments == "stripe":
        periodic.register(
            app, "payments.reconcile", config.payments_reconcile_interval_s, _reconcile
        )
