"""Ledger tables: currencies, accounts, transactions, append-only entries and balance counters.

The shape follows TigerBeetle: an account carries limit flags; a transaction is identified by
its idempotency key; entries are immutable (database triggers refuse UPDATE and DELETE); the
balance row caches posted and pending sums per side and is only changed together with the
entries that justify it.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from marketplace.db import UTCDateTime, utcnow

# Integer ids that are BIGINT on PostgreSQL and the rowid alias on SQLite (which only
# autoincrements a column declared exactly INTEGER PRIMARY KEY).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

DEBIT = "debit"
CREDIT = "credit"

# Account codes. Organisation accounts: wallet (a buyer's prepaid money), vendor_payable (what
# the platform owes a vendor). Platform accounts (organization_id NULL): platform_revenue (fees),
# royalty_accrual (counterparty of per-inference reservations), payment_clearing (money in
# flight with payment providers).
WALLET = "wallet"
VENDOR_PAYABLE = "vendor_payable"
PLATFORM_REVENUE = "platform_revenue"
ROYALTY_ACCRUAL = "royalty_accrual"
PAYMENT_CLEARING = "payment_clearing"
ACCOUNT_CODES = (WALLET, VENDOR_PAYABLE, PLATFORM_REVENUE, ROYALTY_ACCRUAL, PAYMENT_CLEARING)


class Currency(SQLModel, table=True):
    __tablename__ = "currencies"

    code: str = Field(primary_key=True, max_length=3)  # ISO 4217
    # Digits after the decimal point: 2 for CNY, 0 for JPY. Amounts are stored in minor units.
    exponent: int


class LedgerAccount(SQLModel, table=True):
    __tablename__ = "ledger_accounts"

    id: int | None = Field(default=None, primary_key=True)
    # "org:<id>:<code>:<currency>" or "platform:<code>:<currency>": one account per owner, code
    # and currency (a unique NULL organisation would not be unique on either engine).
    key: str = Field(max_length=80, sa_column_kwargs={"unique": True}, nullable=False)
    organization_id: int | None = Field(default=None, foreign_key="organizations.id", index=True)
    currency: str = Field(foreign_key="currencies.code", max_length=3)
    code: str = Field(max_length=32)
    debits_must_not_exceed_credits: bool = False
    credits_must_not_exceed_debits: bool = False
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class LedgerBalance(SQLModel, table=True):
    __tablename__ = "ledger_balances"

    account_id: int = Field(foreign_key="ledger_accounts.id", primary_key=True)
    debits_posted: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    credits_posted: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    debits_pending: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    credits_pending: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    # Incremented with every change; readers can detect that a balance moved under them.
    version: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)


class LedgerTransaction(SQLModel, table=True):
    __tablename__ = "ledger_transactions"

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    idempotency_key: str = Field(max_length=160, sa_column_kwargs={"unique": True}, nullable=False)
    # SHA-256 of the canonical request: the same key with another request is refused.
    request_hash: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    currency: str = Field(foreign_key="currencies.code", max_length=3)
    # A pending transaction (a hold) moves only pending counters until a later transaction
    # posts or voids it; that later transaction names it here, at most once.
    pending: bool = False
    resolves_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger, sa.ForeignKey("ledger_transactions.id"), unique=True, nullable=True
        ),
    )
    # Set on a correction: the transaction whose effect this one undoes.
    reverses_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger, sa.ForeignKey("ledger_transactions.id"), index=True, nullable=True
        ),
    )
    memo: str = Field(default="", max_length=200)
    created_at: dt.datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True
    )


class LedgerEntry(SQLModel, table=True):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        sa.CheckConstraint("amount > 0", name="ck_ledger_entries_amount_positive"),
        sa.CheckConstraint("side IN ('debit', 'credit')", name="ck_ledger_entries_side"),
        sa.Index("ix_ledger_entries_account_id_id", "account_id", "id"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    transaction_id: int = Field(
        sa_column=sa.Column(
            sa.BigInteger, sa.ForeignKey("ledger_transactions.id"), index=True, nullable=False
        )
    )
    account_id: int = Field(foreign_key="ledger_accounts.id")
    side: str = Field(max_length=6)
    amount: int = Field(sa_type=sa.BigInteger, nullable=False)
    # Entries of a pending transaction count in the pending counters while it is unresolved.
    pending: bool = False
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
