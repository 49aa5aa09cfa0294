"""Statement API: an organisation's own ledger entries and balances."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, current_app, jsonify

from marketplace.accounts.oauth import current, require_oauth
from marketplace.api import API_PREFIX, openapi, parse_query
from marketplace.db import as_utc, get_session
from marketplace.ledger.schemas import Statement, StatementQuery
from marketplace.ledger.statements import statement

bp = Blueprint("ledger", __name__, url_prefix=API_PREFIX)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else as_utc(value).astimezone(dt.UTC)


@bp.get("/ledger/statement")
@openapi(
    "Your organisation's ledger entries (from <= time < to) and balances",
    tag="ledger",
    query=StatementQuery,
    response=Statement,
    scope="ledger:read",
    examples={"currency": "CNY", "from": "2026-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
)
@require_oauth("ledger:read")
def get_statement() -> Any:
    query = parse_query(StatementQuery)
    result = statement(
        session=get_session(),
        organization_id=current.organization_id,
        currency=query.currency,
        start=_utc(query.from_),
        end=_utc(query.to),
        entries_max=current_app.extensions["settings"].statement_entries_max,
    )
    return jsonify(result.model_dump(mode="json", by_alias=True))
