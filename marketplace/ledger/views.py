"""Statement API: an organisation's own ledger entries and balances."""

from __future__ import annotations

from flask import Blueprint, current_app

from marketplace.accounts.scopes import LEDGER_READ
from marketplace.api import API_PREFIX
from marketplace.ledger import statement_service
from marketplace.ledger.schemas import Statement, StatementQuery
from marketplace.operation import for_caller, operation

bp = Blueprint("ledger", __name__, url_prefix=API_PREFIX)


@bp.get("/ledger/statement")
@operation(
    "Your organisation's ledger entries (from <= time < to) and balances",
    tag="ledger",
    scope=LEDGER_READ,
    examples={"currency": "CNY", "from": "2026-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
)
def get_statement(query: StatementQuery) -> Statement:
    return for_caller(
        statement_service(current_app).statement,
        currency=query.currency,
        start=query.from_,
        end=query.to,
    )
