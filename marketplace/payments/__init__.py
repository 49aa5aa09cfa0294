"""Payments: wallet top-ups, withdrawals, refunds and payouts through a payment provider."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from marketplace.config import Settings
    from marketplace.payments.gateway import PaymentGateway


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
    from marketplace.payments import outbox

    return outbox.process_due(
        get_session(),
        app.extensions["payment_gateway"],
        outbox.OutboxPolicy.from_settings(app.extensions["settings"]),
        limit=app.extensions["settings"].payments_outbox_batch_max,
    )


def _reconcile(app: Flask) -> object:
    from marketplace.db import get_session
    from marketplace.payments import reconcile

    return reconcile.reconcile(
        session=get_session(),
        gateway=app.extensions["payment_gateway"],
        batch_max=app.extensions["settings"].payments_reconcile_batch_max,
        top_up_expiry_s=app.extensions["settings"].top_up_expiry_s,
    )


def init_app(app: Flask) -> None:
    """Build the payment gateway, register the API and the outbox and reconciliation work."""
    from marketplace import periodic
    from marketplace.payments.views import bp

    config: Settings = app.extensions["settings"]
    app.extensions["payment_gateway"] = make_gateway(config)
    app.register_blueprint(bp)
    periodic.register(app, "payments.outbox", config.payments_outbox_interval_s, _send_due)
    if config.payments == "stripe":
        periodic.register(
            app, "payments.reconcile", config.payments_reconcile_interval_s, _reconcile
        )
