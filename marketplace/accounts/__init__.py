"""Accounts: users, organisations, OAuth clients and sessions."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """Build registration's per-address limiter and hashing slots; register the blueprint."""
    from marketplace.accounts import services
    from marketplace.accounts.views import bp
    from marketplace.ratelimit import WindowLimiter

    settings = app.extensions["settings"]
    app.extensions["registration_limiter"] = WindowLimiter(
        settings.registrations_per_address_max, settings.registrations_window_s
    )
    app.extensions["password_hashing"] = services.HashingSlots(
        settings.password_hash_concurrency_max, settings.password_hash_wait_s
    )
    app.register_blueprint(bp)
