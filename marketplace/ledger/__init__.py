"""The double-entry ledger: accounts, transfers, balances and statements."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """Register the ledger API."""
    from marketplace.ledger.views import bp

    app.register_blueprint(bp)
