"""Licensing: orders, licences, trials and entitlements."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from marketplace.licensing.services import LicensingService


def init_app(app: Flask) -> None:
    """Build the licensing service on the platform's terms (after payments: order refunds go
    back through it); register the licensing API."""
    from marketplace.licensing.services import LicensingService
    from marketplace.licensing.views import bp

    app.extensions["licensing"] = LicensingService.from_settings(
        app.extensions["settings"], app.extensions.get("payments")
    )
    app.register_blueprint(bp)


def licensing_service(app: Flask) -> LicensingService:
    """The licensing use cases that need the platform's terms, built by :func:`init_app`."""
    service: LicensingService = app.extensions["licensing"]
    return service
