"""Statement API: an organisation's own ledger entries and balances."""

from __future__ import annotations

from flask import Blueprint, current_app

from marketplace.accounts.oauth import current
from marketplace.api import API_PREFIX, parse_query
from marketplace.db import get_session
from marketplace.ledger import statement_service
from marketplace.ledger.schemas import Statement, StatementQuery
from marketplace.operation import operation

bp = Blueprint("ledger", __name__, url_prefix=API_PREFIX)


@bp.get("/ledger/statement")
@operation(
    "Your organisation's ledger entries (from <= time < to) and balances",
    tag="ledger",
    query=StatementQuery,
    response=Statement,
    scope="ledger:read",
    examples={"currency": "CNY", "from": "2026-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
)
def get_statement() -> Statement:
    query = parse_query(StatementQuery)
    return statement_service(current_app).statement(
        session=get_session(),
        organization_id=current.organization_id,
        currency=query.currency,
        start=query.from_,
        end=query.to,
    )
