"""The double-entry ledger: accounts, transfers, balances and statements."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from marketplace.ledger.statements import StatementService


def settle_usage(app: Flask) -> None:
    """Charge every metered licence's unsettled calls (the periodic ``jishi ledger settle``)."""
    from marketplace.db import get_session
    from marketplace.metering.services import settle

    settle(session=get_session())


def statement_service(app: Flask) -> StatementService:
    """Organisations' statements, bounded by the settings (built once by :func:`init_app`)."""
    service: StatementService = app.extensions["statements"]
    return service


def init_app(app: Flask) -> None:
    """The statement service and API, and usage settlement on every node's schedule."""
    from marketplace import periodic
    from marketplace.ledger.statements import StatementService
    from marketplace.ledger.views import bp

    settings = app.extensions["settings"]
    app.extensions["statements"] = StatementService(entries_max=settings.statement_entries_max)
    app.register_blueprint(bp)
    periodic.register(app, "metering.settle", settings.metering_settle_interval_s, settle_usage)
