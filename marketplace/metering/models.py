"""Usage events: one row per successful call on a per-inference licence."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from marketplace.db import UTCDateTime, utcnow


class UsageEvent(SQLModel, table=True):
    __tablename__ = "usage_events"
    # seq is the call's number within its licence (1, 2, ...): settlement charges by ranges of
    # seq, so an event is never counted twice nor skipped, and no event row is ever updated.
    __table_args__ = (sa.UniqueConstraint("license_id", "seq"),)

    id: str = Field(primary_key=True, max_length=32)  # 128 random bits, hex
    license_id: int = Field(foreign_key="licenses.id")  # the licence names the organisation
    # The model version that ran. Deliberately not a foreign key: this is the busiest table
    # of the ledger's neighbourhood, versions are never deleted, and each checked reference
    # costs a lookup per event.
    version_id: int
    seq: int = Field(sa_type=sa.BigInteger, nullable=False)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
