"""The ledger's value objects (what callers pass and get back, never ORM rows) and its tables."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import ConfigDict, TypeAdapter

from marketplace.canonical import canonical_sha256
from marketplace.db import table
from marketplace.ledger.models import (
    CREDIT,
    DEBIT,
    LedgerAccount,
    LedgerBalance,
    LedgerEntry,
    LedgerTransaction,
)
from marketplace.ledger.schemas import AccountCounters, TransactionHeader

accounts_t = table(LedgerAccount)
balances_t = table(LedgerBalance)
transactions_t = table(LedgerTransaction)
entries_t = table(LedgerEntry)

# An entry as the statement and the platform ledger show it, amounts in the API's names.
ENTRY_COLUMNS = (
    entries_t.c.id,
    entries_t.c.transaction_id,
    entries_t.c.account_id,
    entries_t.c.side,
    entries_t.c.amount.label("amount_minor"),
    entries_t.c.pending,
)

R = TypeVar("R")
_adapters: dict[type[Any], TypeAdapter[Any]] = {}


def record_from_row(record: type[R], row: Mapping[str, Any], **rest: Any) -> R:
    """A value object from the row's columns of the same names (others are ignored), with
    ``rest`` for the fields no column holds."""
    adapter: TypeAdapter[R] | None = _adapters.get(record)
    if adapter is None:
        adapter = _adapters[record] = TypeAdapter(record)
    return adapter.validate_python({**row, **rest})


def where_entries_in(
    query: sa.Select, *, currency: str | None, start: dt.datetime | None, end: dt.datetime | None
) -> sa.Select:
    """``query`` (over entries joined to their accounts) kept to one currency and to entries
    made in ``[start, end)``; each bound is optional."""
    if currency is not None:
        query = query.where(accounts_t.c.currency == currency)
    if start is not None:
        query = query.where(entries_t.c.created_at >= start)
    if end is not None:
        query = query.where(entries_t.c.created_at < end)
    return query


@dataclass(frozen=True)
class Leg:
    """One side of a transfer: ``amount`` minor units debited or credited to an account."""

    account_id: int
    side: str
    amount: int

    @classmethod
    def debit(cls, account_id: int, amount: int) -> Leg:
        return cls(account_id, DEBIT, amount)

    @classmethod
    def credit(cls, account_id: int, amount: int) -> Leg:
        return cls(account_id, CREDIT, amount)


@dataclass(frozen=True)
class Transfer:
    """A request to the ledger. Its idempotency key is its identity."""

    idempotency_key: str
    kind: str
    legs: tuple[Leg, ...]
    pending: bool = False
    resolves_id: int | None = None  # post (legs) or void (no legs) this pending transaction
    reverses_id: int | None = None
    memo: str = ""

    def request_hash(self) -> str:
        canonical = {
            "kind": self.kind,
            "legs": sorted([leg.account_id, leg.side, leg.amount] for leg in self.legs),
            "pending": self.pending,
            "resolves_id": self.resolves_id,
            "reverses_id": self.reverses_id,
        }
        return canonical_sha256(canonical)


class PostedTransaction(TransactionHeader):
    """A stored ledger transaction as callers see it (never an ORM row)."""

    model_config = ConfigDict(frozen=True)

    idempotency_key: str
    legs: tuple[Leg, ...]
    replayed: bool = False  # True when the key had been used before and nothing was written

    def amount_on(self, account_id: int, side: str) -> int:
        return sum(
            leg.amount for leg in self.legs if leg.account_id == account_id and leg.side == side
        )


class AccountBalance(AccountCounters):
    model_config = ConfigDict(frozen=True)

    organization_id: int | None
    version: int

    @property
    def posted(self) -> int:
        """Credit-normal balance: what the account holds for its owner."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """What can still be debited from a credit-normal account (pending debits are held)."""
        return self.credits_posted - self.debits_posted - self.debits_pending
