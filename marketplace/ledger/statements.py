"""An organisation's view of its own ledger accounts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlmodel import Session

from marketplace.db import epoch_hour, hour_start
from marketplace.ledger import services as ledger
from marketplace.ledger.models import CREDIT
from marketplace.ledger.schemas import AccountPublic, EntryPublic, Statement
from marketplace.ledger.services.records import ENTRY_COLUMNS, where_entries_in
from marketplace.ledger.services.records import accounts_t as _accounts_t
from marketplace.ledger.services.records import entries_t as _entries_t
from marketplace.ledger.services.records import transactions_t as _transactions_t


def _entry_status(
    pending: bool, resolved_by: int | None
) -> Literal["posted", "pending", "released"]:
    # Entries are append-only, so a hold's entries keep pending=True in the table; whether the
    # hold still reserves money is told by the transaction that resolved it.
    if not pending:
        return "posted"
    return "pending" if resolved_by is None else "released"


@dataclass(frozen=True)
class StatementService:
    """Organisations' statements, of at most ``entries_max`` entries each; built once by
    ``init_app`` so that the API and the pages never hand the bound over."""

    entries_max: int

    def statement(
        self,
        *,
        session: Session,
        organization_id: int,
        currency: str | None,
        start: dt.datetime | None,
        end: dt.datetime | None,
    ) -> Statement:
        """Balances and entries (oldest first, ``start <= created_at < end``) of the org's accounts.

        Only accounts whose ``organization_id`` is the caller's are read, so no organisation can
        see another's rows through this path. At most ``entries_max`` entries; ``truncated`` says
        whether more matched.
        """
        entries_max = self.entries_max
        accounts = ledger.balances(session, organization_id=organization_id, currency=currency)
        resolver = _transactions_t.alias("resolver")
        query = (
            sa.select(
                *ENTRY_COLUMNS,
                _entries_t.c.created_at,
                _transactions_t.c.kind,
                _transactions_t.c.memo,
                _accounts_t.c.code.label("account_code"),
                _accounts_t.c.currency,
                resolver.c.id.label("resolved_by"),
            )
            .join(_transactions_t, _transactions_t.c.id == _entries_t.c.transaction_id)
            .join(_accounts_t, _accounts_t.c.id == _entries_t.c.account_id)
            .outerjoin(resolver, resolver.c.resolves_id == _transactions_t.c.id)
            .where(_accounts_t.c.organization_id == organization_id)
        )
        query = where_entries_in(query, currency=currency, start=start, end=end)
        rows = (
            session.execute(query.order_by(_entries_t.c.id).limit(entries_max + 1)).mappings().all()
        )
        return Statement(
            organization_id=organization_id,
            currency=currency,
            from_=start,
            to=end,
            accounts=[
                AccountPublic.model_validate({**b.model_dump(), "balance_minor": b.posted})
                for b in accounts
            ],
            entries=[
                EntryPublic.model_validate(
                    {
                        **row,
                        "pending": row["pending"] and row["resolved_by"] is None,
                        "status": _entry_status(row["pending"], row["resolved_by"]),
                    }
                )
                for row in rows[:entries_max]
            ],
            truncated=len(rows) > entries_max,
        )


def credits_by_hour(
    *, session: Session, organization_id: int, code: str, kind: str, since: dt.datetime
) -> list[tuple[dt.datetime, str, int]]:
    """Posted credits per hour (UTC start) and currency to the org's ``code`` accounts from
    transactions of ``kind`` since ``since`` (a vendor's royalties, for instance)."""
    hour = epoch_hour(_entries_t.c.created_at)
    rows = session.execute(
        sa.select(hour, _accounts_t.c.currency, sa.func.sum(_entries_t.c.amount))
        .join(_transactions_t, _transactions_t.c.id == _entries_t.c.transaction_id)
        .join(_accounts_t, _accounts_t.c.id == _entries_t.c.account_id)
        .where(
            _accounts_t.c.organization_id == organization_id,
            _accounts_t.c.code == code,
            _transactions_t.c.kind == kind,
            _entries_t.c.side == CREDIT,
            _entries_t.c.pending.is_(False),
            _entries_t.c.created_at >= since,
        )
        .group_by(hour, _accounts_t.c.currency)
        .order_by(hour)
    ).all()
    return [(hour_start(h), currency, int(total)) for h, currency, total in rows]
