"""Licensing: orders, licences, trials and entitlements."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """Register the licensing API."""
    from marketplace.licensing.views import bp

    app.register_blueprint(bp)
