"""Platform-wide ledger views for auditors and administrators: every organisation's
transactions and entries, totals per account code, and the platform's fee revenue. No Flask.

Unlike the statement API, these read every organisation's accounts, so only tokens with
``audit:read`` or ``admin`` reach them.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from marketplace.audit.schemas import (
    AccountCodeTotal,
    LedgerEntryItem,
    LedgerQuery,
    LedgerTransactionItem,
    PlatformLedger,
    RevenuePeriod,
    RevenueReport,
)
from marketplace.db import as_utc
from marketplace.ledger.models import (
    CREDIT,
    DEBIT,
    PLATFORM_REVENUE,
)
from marketplace.ledger.services.records import ENTRY_COLUMNS, where_entries_in
from marketplace.ledger.services.records import accounts_t as _accounts_t
from marketplace.ledger.services.records import entries_t as _entries_t
from marketplace.ledger.services.records import transactions_t as _transactions_t


def _transaction_filter(
    *,
    organization_id: int | None,
    kind: str | None,
    currency: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> list[Any]:
    conditions: list[Any] = []
    if kind is not None:
        conditions.append(_transactions_t.c.kind == kind)
    if currency is not None:
        conditions.append(_transactions_t.c.currency == currency)
    if start is not None:
        conditions.append(_transactions_t.c.created_at >= start)
    if end is not None:
        conditions.append(_transactions_t.c.created_at < end)
    if organization_id is not None:
        touches = (
            sa.select(_entries_t.c.transaction_id)
            .join(_accounts_t, _accounts_t.c.id == _entries_t.c.account_id)
            .where(
                _accounts_t.c.organization_id == organization_id,
                _entries_t.c.transaction_id == _transactions_t.c.id,
            )
        )
        conditions.append(sa.exists(touches))
    return conditions


def ledger_transactions(*, session: Session, query: LedgerQuery, limit: int) -> PlatformLedger:
    """One page (at most ``limit``) of the transactions ``query`` matches, by id, with all their
    entries, and the totals per account code and currency over every matching entry (only the
    organisation's entries when the query names one)."""
    organization_id = query.organization_id
    conditions = _transaction_filter(
        organization_id=organization_id,
        kind=query.kind,
        currency=query.currency,
        start=query.from_,
        end=query.to,
    )
    rows = (
        session.execute(
            sa.select(_transactions_t)
            .where(*conditions, _transactions_t.c.id > query.after_id)
            .order_by(_transactions_t.c.id)
            .limit(limit + 1)
        )
        .mappings()
        .all()
    )
    page = rows[:limit]
    ids = [row["id"] for row in page]
    entries: dict[int, list[LedgerEntryItem]] = defaultdict(list)
    if ids:
        for entry in session.execute(
            sa.select(
                *ENTRY_COLUMNS,
                _accounts_t.c.organization_id,
                _accounts_t.c.code.label("account_code"),
            )
            .join(_accounts_t, _accounts_t.c.id == _entries_t.c.account_id)
            .where(_entries_t.c.transaction_id.in_(ids))
            .order_by(_entries_t.c.id)
        ).mappings():
            entries[entry["transaction_id"]].append(LedgerEntryItem.model_validate(dict(entry)))
    totals_query = (
        sa.select(
            _accounts_t.c.code,
            _accounts_t.c.currency,
            sa.func.coalesce(
                sa.func.sum(sa.case((_entries_t.c.side == DEBIT, _entries_t.c.amount), else_=0)), 0
            ),
            sa.func.coalesce(
                sa.func.sum(sa.case((_entries_t.c.side == CREDIT, _entries_t.c.amount), else_=0)),
                0,
            ),
            sa.func.count(),
        )
        .select_from(_entries_t)
        .join(_accounts_t, _accounts_t.c.id == _entries_t.c.account_id)
        .join(_transactions_t, _transactions_t.c.id == _entries_t.c.transaction_id)
        # Posted entries only, as the balances count them: a hold's entries are a reservation,
        # and its posting (or nothing, when voided) is the movement. Summed with the holds,
        # a posted payout counted twice and a voided one once.
        .where(*conditions, _entries_t.c.pending.is_(False))
        .group_by(_accounts_t.c.code, _accounts_t.c.currency)
        .order_by(_accounts_t.c.code, _accounts_t.c.currency)
    )
    if organization_id is not None:
        totals_query = totals_query.where(_accounts_t.c.organization_id == organization_id)
    totals = [
        AccountCodeTotal(
            account_code=code,
            currency=cur,
            debits_minor=int(debits),
            credits_minor=int(credits),
            net_minor=int(credits) - int(debits),
            entries=int(count),
        )
        for code, cur, debits, credits, count in session.execute(totals_query)
    ]
    return PlatformLedger(
        items=[
            LedgerTransactionItem.model_validate(
                {**row, "created_at": as_utc(row["created_at"]), "entries": entries[row["id"]]}
            )
            for row in page
        ],
        totals=totals,
        next_after_id=ids[-1] if len(rows) > limit else None,
    )


_PERIOD_FORMATS = {
    "day": ("YYYY-MM-DD", "%Y-%m-%d"),
    "month": ("YYYY-MM", "%Y-%m"),
    "year": ("YYYY", "%Y"),
}


def _period_of(session: Session, column: Any, period: str) -> Any:
    postgres_format, sqlite_format = _PERIOD_FORMATS[period]
    if session.get_bind().dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), postgres_format)
    return sa.func.strftime(sqlite_format, column)  # SQLite stores UTC without a zone


def platform_revenue(
    *,
    session: Session,
    currency: str | None,
    period: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> RevenueReport:
    """The platform's fee revenue (its ``platform_revenue`` accounts) per currency and period:
    fees credited by sales and royalties, fees given back by refunds, and the net."""
    bucket = _period_of(session, _entries_t.c.created_at, period).label("bucket")
    query = (
        sa.select(
            bucket,
            _accounts_t.c.currency,
            sa.func.sum(sa.case((_entries_t.c.side == CREDIT, _entries_t.c.amount), else_=0)),
            sa.func.sum(sa.case((_entries_t.c.side == DEBIT, _entries_t.c.amount), else_=0)),
        )
        .select_from(_entries_t)
        .join(_accounts_t, _accounts_t.c.id == _entries_t.c.account_id)
        .where(
            _accounts_t.c.organization_id.is_(None),
            _accounts_t.c.code == PLATFORM_REVENUE,
            _entries_t.c.pending.is_(False),
        )
        .group_by(bucket, _accounts_t.c.currency)
        .order_by(bucket, _accounts_t.c.currency)
    )
    query = where_entries_in(query, currency=currency, start=start, end=end)
    items = []
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for label, cur, credits, debits in session.execute(query):
        items.append(_period(str(label), cur, int(credits), int(debits)))
        totals[cur][0] += int(credits)
        totals[cur][1] += int(debits)
    return RevenueReport(
        period=period,
        items=items,
        totals=[
            _period("total", cur, credits, debits)
            for cur, (credits, debits) in sorted(totals.items())
        ],
    )


def _period(label: str, currency: str, fees: int, refunded: int) -> RevenuePeriod:
    return RevenuePeriod(
        period=label,
        currency=currency,
        fees_minor=fees,
        refunded_minor=refunded,
        net_minor=fees - refunded,
    )
