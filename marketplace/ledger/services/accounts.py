"""Ledger accounts: one per owner, code and currency, created on first use; their balances."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from marketplace.db import utcnow
from marketplace.ledger.errors import InvalidTransaction, UnknownCurrency
from marketplace.ledger.models import (
    ACCOUNT_CODES,
    PAYMENT_CLEARING,
    PLATFORM_REVENUE,
    ROYALTY_ACCRUAL,
    VENDOR_PAYABLE,
    WALLET,
    Currency,
)
from marketplace.ledger.money import Split
from marketplace.ledger.services.records import (
    AccountBalance,
    Leg,
    accounts_t,
    balances_t,
    record_from_row,
)


class _LimitFlags(NamedTuple):
    """An account's limits, named as its columns: which side may never outgrow the other."""

    debits_must_not_exceed_credits: bool
    credits_must_not_exceed_debits: bool


_LIMIT_FLAGS: dict[str, _LimitFlags] = {
    WALLET: _LimitFlags(True, False),
    VENDOR_PAYABLE: _LimitFlags(True, False),
    PLATFORM_REVENUE: _LimitFlags(True, False),
    ROYALTY_ACCRUAL: _LimitFlags(False, False),
    # Money arrives from payment providers as debits here; more cannot leave than came in.
    PAYMENT_CLEARING: _LimitFlags(False, True),
}


def require_currency(session: Session, currency: str) -> None:
    """Refuse a request in a currency the ledger does not hold (422 ``unknown_currency``)."""
    if session.get(Currency, currency) is None:
        raise UnknownCurrency(f"Currency {currency} is not supported.")


def account_key(organization_id: int | None, code: str, currency: str) -> str:
    owner = "platform" if organization_id is None else f"org:{organization_id}"
    return f"{owner}:{code}:{currency}"


def ensure_account(
    session: Session, *, organization_id: int | None, code: str, currency: str
) -> int:
    """The id of the owner's account with ``code`` in ``currency``, created on first use."""
    if code not in ACCOUNT_CODES:
        raise InvalidTransaction(f"Unknown account code {code!r}.")
    key = account_key(organization_id, code, currency)
    found = session.execute(sa.select(accounts_t.c.id).where(accounts_t.c.key == key)).scalar()
    if found is not None:
        return int(found)
    if session.get(Currency, currency) is None:
        raise InvalidTransaction(f"Unknown currency {currency!r}.", code="unknown_currency")
    flags = _LIMIT_FLAGS[code]
    try:
        with session.begin_nested():
            account_id = session.execute(
                sa.insert(accounts_t)
                .values(
                    key=key,
                    organization_id=organization_id,
                    currency=currency,
                    code=code,
                    **flags._asdict(),
                    created_at=utcnow(),
                )
                .returning(accounts_t.c.id)
            ).scalar_one()
            session.execute(sa.insert(balances_t).values(account_id=account_id))
    except IntegrityError:
        # Another transaction created it first; it has committed, so it is visible now.
        account_id = session.execute(
            sa.select(accounts_t.c.id).where(accounts_t.c.key == key)
        ).scalar_one()
    return int(account_id)


def sale_legs(
    session: Session,
    *,
    buyer_organization_id: int,
    vendor_organization_id: int,
    currency: str,
    split: Split,
    refund: bool = False,
) -> tuple[Leg, ...]:
    """The legs of a sale: the buyer's wallet pays the vendor's share and the platform's fee.

    With ``refund`` the sides are swapped: vendor and platform give their parts back.
    """
    payer, payee = (Leg.credit, Leg.debit) if refund else (Leg.debit, Leg.credit)
    legs = [
        payer(
            ensure_account(
                session, organization_id=buyer_organization_id, code=WALLET, currency=currency
            ),
            split.gross,
        )
    ]
    if split.vendor:
        vendor = ensure_account(
            session, organization_id=vendor_organization_id, code=VENDOR_PAYABLE, currency=currency
        )
        legs.append(payee(vendor, split.vendor))
    if split.platform:
        platform = ensure_account(
            session, organization_id=None, code=PLATFORM_REVENUE, currency=currency
        )
        legs.append(payee(platform, split.platform))
    return tuple(legs)


def find_account(
    session: Session, *, organization_id: int | None, code: str, currency: str
) -> int | None:
    """The account's id, or None when it was never used."""
    key = account_key(organization_id, code, currency)
    found = session.execute(sa.select(accounts_t.c.id).where(accounts_t.c.key == key)).scalar()
    return None if found is None else int(found)


def currency_exponents(session: Session) -> dict[str, int]:
    return {c.code: c.exponent for c in session.exec(select(Currency)).all()}


def balances(
    session: Session,
    *,
    organization_id: int | None = None,
    account_ids: Iterable[int] | None = None,
    platform: bool = False,
    currency: str | None = None,
) -> list[AccountBalance]:
    """Balances of an organisation's accounts (or the platform's, or the given accounts)."""
    query = sa.select(accounts_t, balances_t).join(
        balances_t, balances_t.c.account_id == accounts_t.c.id
    )
    if account_ids is not None:
        query = query.where(accounts_t.c.id.in_(list(account_ids)))
    elif platform:
        query = query.where(accounts_t.c.organization_id.is_(None))
    else:
        query = query.where(accounts_t.c.organization_id == organization_id)
    if currency is not None:
        query = query.where(accounts_t.c.currency == currency)
    rows = session.execute(query.order_by(accounts_t.c.id)).mappings().all()
    return [_balance_of(row) for row in rows]


def _balance_of(row: Any) -> AccountBalance:
    return record_from_row(AccountBalance, row)
