"""Licences, trials, terms acceptances, orders and refunds."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from marketplace.db import UTCDateTime, utcnow

TRIAL = "trial"
PERPETUAL = "perpetual"
SUBSCRIPTION = "subscription"
PER_INFERENCE = "per_inference"
LICENSE_KINDS = (TRIAL, PERPETUAL, SUBSCRIPTION, PER_INFERENCE)

ORDER_PAID = "paid"
ORDER_PARTIALLY_REFUNDED = "partially_refunded"
ORDER_REFUNDED = "refunded"


def _ledger_transaction_ref() -> Any:
    """A column that may name a ledger transaction.

    A field, not an ``sa_column``: a column declared on a base that several tables share must be
    made anew for each table, which SQLModel does from a field and cannot do from a column.
    """
    return Field(default=None, foreign_key="ledger_transactions.id", sa_type=sa.BigInteger)


class TermsAcceptance(SQLModel, table=True):
    """Who accepted which terms, when, and for what (a trial or a purchase)."""

    __tablename__ = "terms_acceptances"

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    offer_id: int = Field(foreign_key="offers.id", index=True)
    terms_sha256: str = Field(max_length=64)
    purpose: str = Field(max_length=16)  # trial | purchase
    client_id: str = Field(max_length=64)  # the OAuth2 client that accepted
    accepted_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class _Row(SQLModel):
    """What every licensing row but a terms acceptance has: its id and when it was written."""

    id: int | None = Field(default=None, primary_key=True)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class License(_Row, table=True):
    """A buyer organisation's entitlement to a listing, from an offer (or its trial)."""

    __tablename__ = "licenses"

    organization_id: int = Field(foreign_key="organizations.id", index=True)
    offer_id: int = Field(foreign_key="offers.id", index=True)
    listing_id: int = Field(foreign_key="listings.id", index=True)
    vendor_organization_id: int = Field(foreign_key="organizations.id")
    kind: str = Field(max_length=16)
    currency: str = Field(max_length=3)
    # Frozen at issuance: later changes of the platform fee do not touch sold licences.
    royalty_per_1k_minor: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    platform_fee_bps: int = 0
    expires_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    revoked_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    # Trials only: successful calls left (None: unlimited until expires_at).
    calls_remaining: int | None = None
    # Successful calls so far (every kind), and for per_inference licences the watermark of
    # calls already charged and the calls covered by the wallet reservation (the hold in
    # reservation_id): calls_settled <= calls_used <= calls_reserved at every commit.
    calls_used: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    calls_settled: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    calls_reserved: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    reservation_id: int | None = _ledger_transaction_ref()


class Trial(_Row, table=True):
    """One trial per buyer organisation per offer, enforced by the database."""

    __tablename__ = "trials"
    __table_args__ = (sa.UniqueConstraint("organization_id", "offer_id"),)

    organization_id: int = Field(foreign_key="organizations.id")
    offer_id: int = Field(foreign_key="offers.id", index=True)
    license_id: int = Field(foreign_key="licenses.id")


class _LedgerRequest(_Row):
    """An amount moved by one ledger transaction at a request under an idempotency key: what
    orders and refunds both record."""

    amount_minor: int = Field(sa_type=sa.BigInteger, nullable=False)
    currency: str = Field(max_length=3)
    idempotency_key: str = Field(max_length=128)
    request_hash: str = Field(max_length=64)
    ledger_transaction_id: int | None = _ledger_transaction_ref()


class Order(_LedgerRequest, table=True):
    """A purchase of an offer; paid by one ledger transaction."""

    __tablename__ = "orders"
    __table_args__ = (sa.UniqueConstraint("organization_id", "idempotency_key"),)

    organization_id: int = Field(foreign_key="organizations.id", index=True)
    offer_id: int = Field(foreign_key="offers.id", index=True)
    vendor_organization_id: int = Field(foreign_key="organizations.id", index=True)
    status: str = Field(default=ORDER_PAID, max_length=24)
    refunded_minor: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    platform_fee_bps: int
    license_id: int | None = Field(default=None, foreign_key="licenses.id")


class Refund(_LedgerRequest, table=True):
    """A full or partial refund of an order: one reversing ledger transaction."""

    __tablename__ = "refunds"
    __table_args__ = (sa.UniqueConstraint("order_id", "idempotency_key"),)

    order_id: int = Field(foreign_key="orders.id", index=True)
    reason: str = Field(default="", max_length=500)
