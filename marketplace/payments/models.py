"""Wallet top-ups: money a buyer pays in through a payment gateway."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from marketplace.db import UTCDateTime, utcnow

TOP_UP_PENDING = "pending"
TOP_UP_SUCCEEDED = "succeeded"
TOP_UP_FAILED = "failed"


class TopUp(SQLModel, table=True):
    __tablename__ = "top_ups"
    __table_args__ = (sa.UniqueConstraint("organization_id", "idempotency_key"),)

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    amount_minor: int = Field(sa_type=sa.BigInteger, nullable=False)
    currency: str = Field(foreign_key="currencies.code", max_length=3)
    status: str = Field(default=TOP_UP_PENDING, max_length=16)
    provider: str = Field(max_length=16)
    # True when no real money moved (the offline gateway); shown on every record and page.
    simulated: bool
    provider_ref: str | None = Field(default=None, max_length=255)
    idempotency_key: str = Field(max_length=128)
    request_hash: str = Field(max_length=64)
    ledger_transaction_id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.BigInteger, sa.ForeignKey("ledger_transactions.id"), nullable=True),
    )
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    completed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
