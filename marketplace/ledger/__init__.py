"""The double-entry ledger: accounts, transfers, balances and statements."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def settle_usage(app: Flask) -> None:
    """Charge every metered licence's unsettled calls (the periodic ``jishi ledger settle``)."""
    from marketplace.db import get_session
    from marketplace.metering.services import settle

    settle(session=get_session())


def init_app(app: Flask) -> None:
    """The statement API, and usage settlement on every node's schedule."""
    from marketplace import periodic
    from marketplace.ledger.views import bp

    app.register_blueprint(bp)
    settings = app.extensions["settings"]
    periodic.register(app, "metering.settle", settings.metering_settle_interval_s, settle_usage)
