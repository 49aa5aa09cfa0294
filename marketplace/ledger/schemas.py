"""Response shapes of the statement API, and what every view of a ledger transaction shows."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

from marketplace.api import CurrencyCode, RequestModel, UtcTime


class StatementQuery(RequestModel):
    currency: CurrencyCode | None = None
    from_: UtcTime | None = Field(default=None, alias="from")
    to: UtcTime | None = None


class TransactionHeader(BaseModel):
    """A ledger transaction without its legs: the ledger's own value object and the auditors'
    platform ledger both extend it, so the two never disagree on a field."""

    id: int
    kind: str
    currency: str
    pending: bool
    resolves_id: int | None
    reverses_id: int | None
    memo: str
    created_at: dt.datetime


class AccountCounters(BaseModel):
    """An account and its four counters: the ledger's balance record and the statement's
    account both extend it."""

    account_id: int
    code: str
    currency: str
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int


class AccountPublic(AccountCounters):
    balance_minor: int = Field(description="credits_posted - debits_posted")


class EntryPublic(BaseModel):
    id: int
    transaction_id: int
    kind: str
    account_id: int
    account_code: str
    currency: str
    side: str
    amount_minor: int
    pending: bool = Field(description="True while the entry is an unresolved hold")
    status: Literal["posted", "pending", "released"] = Field(
        description="posted: moved the balance; pending: a hold still reserving money; "
        "released: a hold that has been resolved (a settled reservation: what it reserved is "
        "charged by its own posted entries)"
    )
    memo: str
    created_at: dt.datetime


class Statement(BaseModel):
    organization_id: int
    currency: str | None
    from_: dt.datetime | None = Field(serialization_alias="from")
    to: dt.datetime | None
    accounts: list[AccountPublic]
    entries: list[EntryPublic]
    truncated: bool = Field(description="True when more entries matched than one page holds")
