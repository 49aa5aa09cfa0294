"""Statement API: an organisation's own ledger entries and balances."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, current_app

from marketplace.accounts.oauth import current
from marketplace.api import API_PREFIX, parse_query
from marketplace.db import as_utc, get_session
from marketplace.ledger.schemas import Statement, StatementQuery
from marketplace.ledger.statements import statement
from marketplace.operation import operation

bp = Blueprint("ledger", __name__, url_prefix=API_PREFIX)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else as_utc(value).astimezone(dt.UTC)


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
    return statement(
        session=get_session(),
        organization_id=current.organization_id,
        currency=query.currency,
        start=_utc(query.from_),
        end=_utc(query.to),
        entries_max=current_app.extensions["settings"].statement_entries_max,
    )
