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

    id: str = Field(primary_key=True, max_length=32)  # uuid4 hex
    license_id: int = Field(foreign_key="licenses.id")
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    version_id: int = Field(foreign_key="model_versions.id")
    seq: int = Field(sa_type=sa.BigInteger, nullable=False)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
