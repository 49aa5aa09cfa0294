"""The double-entry ledger: one way in (:func:`apply_transfers`), one unit of work with retries.

Every money movement is a :class:`Transfer`: balanced legs in one currency, identified by its
idempotency key. :func:`apply_transfers` does, inside the caller's database transaction:

1. lock the balance rows of every account involved, in ascending id order (``SELECT ... FOR
   UPDATE`` on PostgreSQL; on SQLite the unit of work opened with ``BEGIN IMMEDIATE`` already
   holds the database's write lock), so concurrent writers queue instead of deadlocking;
2. look the idempotency keys up: the same key with the same request hash returns the stored
   transaction and writes nothing; the same key with another request is refused;
3. check each account's limit flags against the new counters;
4. insert the transaction rows, their entries, and the new counters with ``version + 1``;
5. run the registered transaction hooks (the audit chain appends its records there).

:func:`run_in_transaction` wraps work in one database transaction and retries it on
serialization failures, deadlocks, SQLite's "database is locked" and unique-key races;
:func:`post_transaction` is the one-transfer convenience built from both.

Holds are two-phase: a pending transfer moves only the pending counters; a later transfer with
``resolves_id`` posts up to the held amount per leg (the rest is released) or voids it (no
legs). Entries and transactions are never changed; corrections are reversing transactions.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import Session, select

from marketplace.canonical import canonical_sha256
from marketplace.db import as_utc, begin_write, utcnow
from marketplace.ledger import bulk
from marketplace.ledger.errors import (
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidTransaction,
    LimitExceeded,
    PendingResolved,
)
from marketplace.ledger.models import (
    ACCOUNT_CODES,
    CREDIT,
    DEBIT,
    PAYMENT_CLEARING,
    PLATFORM_REVENUE,
    VENDOR_PAYABLE,
    WALLET,
    Currency,
    LedgerAccount,
    LedgerBalance,
    LedgerEntry,
    LedgerTransaction,
)
from marketplace.ledger.money import Split

log = logging.getLogger(__name__)

T = TypeVar("T")

LEGS_MAX = 16  # legs per transfer; a sale has three
RETRY_ATTEMPTS_MAX = 12
RETRY_BACKOFF_S = 0.002

_accounts_t = LedgerAccount.__table__  # type: ignore[attr-defined]
_balances_t = LedgerBalance.__table__  # type: ignore[attr-defined]
_transactions_t = LedgerTransaction.__table__  # type: ignore[attr-defined]
_entries_t = LedgerEntry.__table__  # type: ignore[attr-defined]
_TRANSACTION_COLUMNS = (
    "idempotency_key",
    "request_hash",
    "kind",
    "currency",
    "pending",
    "resolves_id",
    "reverses_id",
    "memo",
    "created_at",
)
_ENTRY_COLUMNS = ("transaction_id", "account_id", "side", "amount", "pending", "created_at")


# --- Value objects ---------------------------------------------------------------------------


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


@dataclass(frozen=True)
class PostedTransaction:
    """A stored ledger transaction as callers see it (never an ORM row)."""

    id: int
    idempotency_key: str
    kind: str
    currency: str
    pending: bool
    resolves_id: int | None
    reverses_id: int | None
    memo: str
    created_at: dt.datetime
    legs: tuple[Leg, ...]
    replayed: bool = False  # True when the key had been used before and nothing was written

    def amount_on(self, account_id: int, side: str) -> int:
        return sum(
            leg.amount for leg in self.legs if leg.account_id == account_id and leg.side == side
        )


@dataclass(frozen=True)
class AccountBalance:
    account_id: int
    organization_id: int | None
    code: str
    currency: str
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    version: int

    @property
    def posted(self) -> int:
        """Credit-normal balance: what the account holds for its owner."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """What can still be debited from a credit-normal account (pending debits are held)."""
        return self.credits_posted - self.debits_posted - self.debits_pending


# --- Hooks ------------------------------------------------------------------------------------

TransactionHook = Callable[[Session, Sequence[PostedTransaction]], None]
_transaction_hooks: list[TransactionHook] = []


def register_transaction_hook(hook: TransactionHook) -> None:
    """Run ``hook`` inside the database transaction of every newly written ledger transaction.

    This is where the audit chain appends its records, so that a ledger transaction and its
    journal record commit or roll back together.
    """
    if hook not in _transaction_hooks:
        _transaction_hooks.append(hook)


def unregister_transaction_hook(hook: TransactionHook) -> None:
    """Stop running ``hook`` (a no-op when it is not registered)."""
    if hook in _transaction_hooks:
        _transaction_hooks.remove(hook)


# --- Accounts ---------------------------------------------------------------------------------

_LIMIT_FLAGS: dict[str, tuple[bool, bool]] = {
    # code: (debits_must_not_exceed_credits, credits_must_not_exceed_debits)
    WALLET: (True, False),
    VENDOR_PAYABLE: (True, False),
    PLATFORM_REVENUE: (True, False),
    "royalty_accrual": (False, False),
    # Money arrives from payment providers as debits here; more cannot leave than came in.
    PAYMENT_CLEARING: (False, True),
}


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
    found = session.execute(sa.select(_accounts_t.c.id).where(_accounts_t.c.key == key)).scalar()
    if found is not None:
        return int(found)
    if session.get(Currency, currency) is None:
        raise InvalidTransaction(f"Unknown currency {currency!r}.", code="unknown_currency")
    debit_limited, credit_limited = _LIMIT_FLAGS[code]
    try:
        with session.begin_nested():
            account_id = session.execute(
                sa.insert(_accounts_t)
                .values(
                    key=key,
                    organization_id=organization_id,
                    currency=currency,
                    code=code,
                    debits_must_not_exceed_credits=debit_limited,
                    credits_must_not_exceed_debits=credit_limited,
                    created_at=utcnow(),
                )
                .returning(_accounts_t.c.id)
            ).scalar_one()
            session.execute(sa.insert(_balances_t).values(account_id=account_id))
    except IntegrityError:
        # Another transaction created it first; it has committed, so it is visible now.
        account_id = session.execute(
            sa.select(_accounts_t.c.id).where(_accounts_t.c.key == key)
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
    found = session.execute(sa.select(_accounts_t.c.id).where(_accounts_t.c.key == key)).scalar()
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
    query = sa.select(_accounts_t, _balances_t).join(
        _balances_t, _balances_t.c.account_id == _accounts_t.c.id
    )
    if account_ids is not None:
        query = query.where(_accounts_t.c.id.in_(list(account_ids)))
    elif platform:
        query = query.where(_accounts_t.c.organization_id.is_(None))
    else:
        query = query.where(_accounts_t.c.organization_id == organization_id)
    if currency is not None:
        query = query.where(_accounts_t.c.currency == currency)
    rows = session.execute(query.order_by(_accounts_t.c.id)).mappings().all()
    return [_balance_of(row) for row in rows]


def _balance_of(row: Any) -> AccountBalance:
    return AccountBalance(
        account_id=row["account_id"],
        organization_id=row["organization_id"],
        code=row["code"],
        currency=row["currency"],
        debits_posted=row["debits_posted"],
        credits_posted=row["credits_posted"],
        debits_pending=row["debits_pending"],
        credits_pending=row["credits_pending"],
        version=row["version"],
    )


# --- The unit of work -------------------------------------------------------------------------


def _is_retryable(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    if isinstance(exc, IntegrityError):
        # Two writers raced for the same idempotency key or account; the retry sees the winner.
        text = str(orig)
        return "UNIQUE constraint failed" in text or getattr(orig, "sqlstate", None) == "23505"
    if isinstance(exc, OperationalError | DBAPIError):
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate in {"40001", "40P01"}:  # serialization_failure, deadlock_detected
            return True
        if isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig):
            return True
    return False


def run_in_transaction(
    session: Session, work: Callable[[Session], T], *, attempts_max: int = RETRY_ATTEMPTS_MAX
) -> T:
    """Run ``work`` in one database transaction and commit; retry transient conflicts."""
    for attempt in range(1, attempts_max + 1):
        try:
            begin_write(session)
            result = work(session)
            session.commit()
            return result
        except Exception as exc:
            session.rollback()
            if attempt == attempts_max or not _is_retryable(exc):
                raise
            log.debug("retrying ledger unit of work after %s (attempt %d)", type(exc), attempt)
            time.sleep(random.uniform(0, RETRY_BACKOFF_S * 2 ** min(attempt, 6)))
    raise AssertionError("unreachable")


# --- Applying transfers -----------------------------------------------------------------------


@dataclass
class _Counters:
    account_id: int
    organization_id: int | None
    code: str
    currency: str
    debits_must_not_exceed_credits: bool
    credits_must_not_exceed_debits: bool
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    version: int
    dirty: bool = False

    def snapshot(self) -> tuple[int, int, int, int]:
        return (self.debits_posted, self.credits_posted, self.debits_pending, self.credits_pending)


@dataclass
class _Plan:
    transfer: Transfer
    currency: str
    request_hash: str
    resolved_pending: list[tuple[int, str, int]] = field(default_factory=list)


def _check_shape(transfer: Transfer) -> None:
    if not transfer.idempotency_key or len(transfer.idempotency_key) > 160:
        raise InvalidTransaction("The idempotency key must have 1 to 160 characters.")
    if len(transfer.legs) > LEGS_MAX:
        raise InvalidTransaction(f"A transfer has at most {LEGS_MAX} legs.")
    if transfer.pending and transfer.resolves_id is not None:
        raise InvalidTransaction("A transfer cannot both hold and resolve a hold.")
    if not transfer.legs and transfer.resolves_id is None:
        raise InvalidTransaction("A transfer needs legs.")
    debits = credits = 0
    for leg in transfer.legs:
        if type(leg.amount) is not int or leg.amount <= 0:
            raise InvalidTransaction("Every leg's amount must be a positive integer.")
        if leg.side == DEBIT:
            debits += leg.amount
        elif leg.side == CREDIT:
            credits += leg.amount
        else:
            raise InvalidTransaction(f"Unknown side {leg.side!r}.")
    if debits != credits:
        raise InvalidTransaction(
            f"Debits ({debits}) and credits ({credits}) must be equal.", code="unbalanced"
        )


def _lock_counters(session: Session, account_ids: set[int]) -> dict[int, _Counters]:
    query = (
        sa.select(_balances_t, _accounts_t)
        .join(_accounts_t, _accounts_t.c.id == _balances_t.c.account_id)
        .where(_balances_t.c.account_id.in_(sorted(account_ids)))
        .order_by(_balances_t.c.account_id)
        # FOR UPDATE OF the balance rows only, taken in ascending id order. SQLite ignores it;
        # there the unit of work already holds the write lock (BEGIN IMMEDIATE).
        .with_for_update(of=_balances_t)
    )
    out: dict[int, _Counters] = {}
    for row in session.execute(query).mappings():
        out[row["account_id"]] = _Counters(
            account_id=row["account_id"],
            organization_id=row["organization_id"],
            code=row["code"],
            currency=row["currency"],
            debits_must_not_exceed_credits=row["debits_must_not_exceed_credits"],
            credits_must_not_exceed_debits=row["credits_must_not_exceed_debits"],
            debits_posted=row["debits_posted"],
            credits_posted=row["credits_posted"],
            debits_pending=row["debits_pending"],
            credits_pending=row["credits_pending"],
            version=row["version"],
        )
    missing = account_ids - out.keys()
    if missing:
        raise InvalidTransaction(f"Unknown ledger accounts: {sorted(missing)}.")
    return out


def _load_transactions(session: Session, where: Any) -> dict[int, tuple[Any, list[Leg]]]:
    rows = session.execute(sa.select(_transactions_t).where(where)).mappings().all()
    if not rows:
        return {}
    ids = [row["id"] for row in rows]
    legs: dict[int, list[Leg]] = defaultdict(list)
    for entry in session.execute(
        sa.select(
            _entries_t.c.transaction_id,
            _entries_t.c.account_id,
            _entries_t.c.side,
            _entries_t.c.amount,
        )
        .where(_entries_t.c.transaction_id.in_(ids))
        .order_by(_entries_t.c.id)
    ):
        legs[entry.transaction_id].append(Leg(entry.account_id, entry.side, entry.amount))
    return {row["id"]: (row, legs[row["id"]]) for row in rows}


def _posted(row: Any, legs: Sequence[Leg], *, replayed: bool) -> PostedTransaction:
    return PostedTransaction(
        id=row["id"],
        idempotency_key=row["idempotency_key"],
        kind=row["kind"],
        currency=row["currency"],
        pending=row["pending"],
        resolves_id=row["resolves_id"],
        reverses_id=row["reverses_id"],
        memo=row["memo"],
        created_at=as_utc(row["created_at"]),
        legs=tuple(legs),
        replayed=replayed,
    )


def get_transaction(session: Session, transaction_id: int) -> PostedTransaction | None:
    found = _load_transactions(session, _transactions_t.c.id == transaction_id)
    if not found:
        return None
    row, legs = found[transaction_id]
    return _posted(row, legs, replayed=False)


def _apply_leg(counters: _Counters, side: str, amount: int, *, pending: bool) -> None:
    if side == DEBIT:
        if pending:
            counters.debits_pending += amount
        else:
            counters.debits_posted += amount
    elif pending:
        counters.credits_pending += amount
    else:
        counters.credits_posted += amount
    counters.dirty = True


def _check_limits(counters: _Counters) -> None:
    c = counters
    if c.debits_must_not_exceed_credits:
        excess = c.debits_posted + c.debits_pending - c.credits_posted
        if excess > 0:
            if c.code == WALLET:
                raise InsufficientFunds(
                    account_id=c.account_id, currency=c.currency, missing_minor=excess
                )
            raise LimitExceeded(
                f"The {c.code} account cannot be debited by {excess} more than it holds."
            )
    if c.credits_must_not_exceed_debits:
        excess = c.credits_posted + c.credits_pending - c.debits_posted
        if excess > 0:
            raise LimitExceeded(
                f"The {c.code} account cannot be credited by {excess} more than it received."
            )


def apply_transfers(session: Session, transfers: Sequence[Transfer]) -> list[PostedTransaction]:
    """Apply ``transfers`` in order inside the caller's database transaction (no commit).

    Either every transfer is applied (or replayed) or an error is raised and the caller rolls
    back. Use it inside :func:`run_in_transaction` when ledger writes must commit together with
    other rows (an order and its licence, a settlement and its usage watermark).
    """
    if not transfers:
        return []
    for transfer in transfers:
        _check_shape(transfer)
    keys = [t.idempotency_key for t in transfers]
    if len(set(keys)) != len(keys):
        raise InvalidTransaction("Idempotency keys within one batch must differ.")

    # Holds being resolved: their legs decide which accounts and amounts are involved.
    resolve_ids = {t.resolves_id for t in transfers if t.resolves_id is not None}
    holds = (
        _load_transactions(session, _transactions_t.c.id.in_(sorted(resolve_ids)))
        if resolve_ids
        else {}
    )
    account_ids = {leg.account_id for t in transfers for leg in t.legs}
    for _row, legs in holds.values():
        account_ids.update(leg.account_id for leg in legs)
    counters = _lock_counters(session, account_ids)

    # Idempotency, read after the locks so that a racing twin's commit is visible.
    existing = _load_transactions(
        session, bulk.in_list(session, _transactions_t.c.idempotency_key, keys)
    )
    by_key = {row["idempotency_key"]: (row, legs) for row, legs in existing.values()}
    # Holds already resolved by a committed transaction.
    resolved_already = (
        set(
            session.execute(
                sa.select(_transactions_t.c.resolves_id).where(
                    _transactions_t.c.resolves_id.in_(sorted(resolve_ids))
                )
            ).scalars()
        )
        if resolve_ids
        else set()
    )

    results: list[PostedTransaction | None] = []
    plans: list[_Plan] = []
    for transfer in transfers:
        request_hash = transfer.request_hash()
        if transfer.idempotency_key in by_key:
            row, legs = by_key[transfer.idempotency_key]
            if row["request_hash"] != request_hash:
                raise IdempotencyKeyReused("This idempotency key was used for a different request.")
            results.append(_posted(row, legs, replayed=True))
            continue
        currencies = {counters[leg.account_id].currency for leg in transfer.legs}
        plan = _Plan(transfer=transfer, currency="", request_hash=request_hash)
        if transfer.resolves_id is not None:
            hold = holds.get(transfer.resolves_id)
            if hold is None or not hold[0]["pending"]:
                raise PendingResolved("The transaction to resolve is not a hold.")
            if transfer.resolves_id in resolved_already:
                raise PendingResolved("The hold was already posted or voided.")
            resolved_already.add(transfer.resolves_id)
            held: dict[tuple[int, str], int] = defaultdict(int)
            for leg in hold[1]:
                held[(leg.account_id, leg.side)] += leg.amount
                plan.resolved_pending.append((leg.account_id, leg.side, leg.amount))
            posting: dict[tuple[int, str], int] = defaultdict(int)
            for leg in transfer.legs:
                posting[(leg.account_id, leg.side)] += leg.amount
            for slot, amount in posting.items():
                if amount > held.get(slot, 0):
                    raise InvalidTransaction(
                        "A post cannot exceed the hold on any account.", code="exceeds_hold"
                    )
            currencies.add(hold[0]["currency"])
        if len(currencies) != 1:
            raise InvalidTransaction(
                "All legs of a transfer must be in one currency.", code="currency_mismatch"
            )
        plan.currency = currencies.pop()
        # Release what the hold reserved, then apply the new legs, then check every limit the
        # transfer touched (releasing alone never breaks one, so only the final state counts).
        touched = set()
        for account_id, side, amount in plan.resolved_pending:
            _apply_leg(counters[account_id], side, -amount, pending=True)
            touched.add(account_id)
        for leg in transfer.legs:
            _apply_leg(counters[leg.account_id], leg.side, leg.amount, pending=transfer.pending)
            touched.add(leg.account_id)
        for account_id in sorted(touched):
            _check_limits(counters[account_id])
        plans.append(plan)
        results.append(None)

    if plans:
        now = utcnow()
        tx_rows = [
            (
                p.transfer.idempotency_key,
                p.request_hash,
                p.transfer.kind,
                p.currency,
                p.transfer.pending,
                p.transfer.resolves_id,
                p.transfer.reverses_id,
                p.transfer.memo,
                now,
            )
            for p in plans
        ]
        if bulk.use_copy(session, len(plans)):
            new_ids = bulk.next_ids(session, _transactions_t, len(plans))
            bulk.insert_rows(
                session,
                _transactions_t,
                ("id", *_TRANSACTION_COLUMNS),
                [(tx_id, *row) for tx_id, row in zip(new_ids, tx_rows, strict=True)],
            )
        else:
            new_ids = list(
                session.execute(
                    sa.insert(_transactions_t).returning(
                        _transactions_t.c.id, sort_by_parameter_order=True
                    ),
                    [dict(zip(_TRANSACTION_COLUMNS, row, strict=True)) for row in tx_rows],
                ).scalars()
            )
        bulk.insert_rows(
            session,
            _entries_t,
            _ENTRY_COLUMNS,
            [
                (tx_id, leg.account_id, leg.side, leg.amount, p.transfer.pending, now)
                for p, tx_id in zip(plans, new_ids, strict=True)
                for leg in p.transfer.legs
            ],
        )
        _write_counters(session, [c for c in counters.values() if c.dirty])
        fresh = iter(
            PostedTransaction(
                id=tx_id,
                idempotency_key=p.transfer.idempotency_key,
                kind=p.transfer.kind,
                currency=p.currency,
                pending=p.transfer.pending,
                resolves_id=p.transfer.resolves_id,
                reverses_id=p.transfer.reverses_id,
                memo=p.transfer.memo,
                created_at=now,
                legs=p.transfer.legs,
            )
            for p, tx_id in zip(plans, new_ids, strict=True)
        )
        results = [r if r is not None else next(fresh) for r in results]
        written = [r for r in results if r is not None and not r.replayed]
        for hook in _transaction_hooks:
            hook(session, written)
    return [r for r in results if r is not None]


_update_counters = (
    sa.update(_balances_t)
    .where(_balances_t.c.account_id == sa.bindparam("b_account_id"))
    .where(_balances_t.c.version == sa.bindparam("b_version"))
    .values(
        debits_posted=sa.bindparam("b_debits_posted"),
        credits_posted=sa.bindparam("b_credits_posted"),
        debits_pending=sa.bindparam("b_debits_pending"),
        credits_pending=sa.bindparam("b_credits_pending"),
        version=_balances_t.c.version + 1,
    )
)


def _write_counters(session: Session, dirty: list[_Counters]) -> None:
    if not dirty:
        return
    result = session.connection().execute(
        _update_counters,
        [
            {
                "b_account_id": c.account_id,
                "b_version": c.version,
                "b_debits_posted": c.debits_posted,
                "b_credits_posted": c.credits_posted,
                "b_debits_pending": c.debits_pending,
                "b_credits_pending": c.credits_pending,
            }
            for c in dirty
        ],
    )
    # The rows are locked, so the versions cannot have moved; if they did, the lock is broken
    # and committing would lose an update.
    if result.rowcount not in (-1, len(dirty)):
        raise RuntimeError("ledger balance rows changed under their lock")


# --- Conveniences -----------------------------------------------------------------------------


def post_transaction(
    session: Session,
    *,
    idempotency_key: str,
    kind: str,
    legs: Sequence[Leg],
    pending: bool = False,
    memo: str = "",
) -> PostedTransaction:
    """Post one transfer in its own unit of work (committed, retried on conflicts)."""
    transfer = Transfer(
        idempotency_key=idempotency_key, kind=kind, legs=tuple(legs), pending=pending, memo=memo
    )
    return run_in_transaction(session, lambda s: apply_transfers(s, [transfer])[0])


def post_pending(
    session: Session, *, idempotency_key: str, pending_id: int, amount: int | None = None
) -> PostedTransaction:
    """Post a two-leg hold for ``amount`` (default: all of it); the rest is released."""

    def work(s: Session) -> PostedTransaction:
        return apply_transfers(s, [post_hold_transfer(s, idempotency_key, pending_id, amount)])[0]

    return run_in_transaction(session, work)


def void_pending(session: Session, *, idempotency_key: str, pending_id: int) -> PostedTransaction:
    """Release a hold entirely."""
    transfer = Transfer(
        idempotency_key=idempotency_key, kind="void", legs=(), resolves_id=pending_id
    )
    return run_in_transaction(session, lambda s: apply_transfers(s, [transfer])[0])


def post_hold_transfer(
    session: Session, idempotency_key: str, pending_id: int, amount: int | None
) -> Transfer:
    """The transfer that posts ``amount`` of a two-leg hold (all of it when None)."""
    hold = get_transaction(session, pending_id)
    if hold is None or not hold.pending:
        raise PendingResolved("The transaction to resolve is not a hold.")
    if len(hold.legs) != 2 and amount is not None:
        raise InvalidTransaction("Partial posts of multi-leg holds need explicit legs.")
    legs = hold.legs if amount is None else tuple(replace(leg, amount=amount) for leg in hold.legs)
    if amount == 0:
        legs = ()
    return Transfer(
        idempotency_key=idempotency_key,
        kind="post" if legs else "void",
        legs=legs,
        resolves_id=pending_id,
    )


def reversal_transfer(
    session: Session, idempotency_key: str, transaction_id: int, memo: str = ""
) -> Transfer:
    """The transfer that undoes a posted transaction: the same legs with sides swapped."""
    original = get_transaction(session, transaction_id)
    if original is None:
        raise InvalidTransaction("No such transaction.", code="transaction_not_found")
    if original.pending:
        raise InvalidTransaction("A hold is voided, not reversed.", code="reverse_pending")
    if not original.legs:
        raise InvalidTransaction("A void has nothing to reverse.", code="reverse_void")
    already = session.execute(
        sa.select(_transactions_t.c.id).where(_transactions_t.c.reverses_id == transaction_id)
    ).first()
    if already is not None:
        raise PendingResolved("The transaction was already reversed.", code="already_reversed")
    return Transfer(
        idempotency_key=idempotency_key,
        kind="reversal",
        legs=tuple(
            Leg(leg.account_id, CREDIT if leg.side == DEBIT else DEBIT, leg.amount)
            for leg in original.legs
        ),
        reverses_id=transaction_id,
        memo=memo or f"reverses transaction {transaction_id}",
    )


def reverse_transaction(
    session: Session, *, idempotency_key: str, transaction_id: int, memo: str = ""
) -> PostedTransaction:
    """Undo a posted transaction with a new, opposite one (the original stays as it was)."""

    def work(s: Session) -> PostedTransaction:
        return apply_transfers(s, [reversal_transfer(s, idempotency_key, transaction_id, memo)])[0]

    return run_in_transaction(session, work)


# --- Invariants -------------------------------------------------------------------------------


def check_invariants(session: Session) -> list[str]:
    """Every problem found by replaying the journal; an empty list means the ledger is sound.

    Checks: each transaction's debits equal its credits; all debits equal all credits; every
    cached counter equals the sum of its entries (pending entries count while their hold is
    unresolved); no account breaks its limit flags.
    """
    problems: list[str] = []
    per_tx = session.execute(
        sa.select(
            _entries_t.c.transaction_id,
            sa.func.sum(sa.case((_entries_t.c.side == DEBIT, _entries_t.c.amount), else_=0)),
            sa.func.sum(sa.case((_entries_t.c.side == CREDIT, _entries_t.c.amount), else_=0)),
        ).group_by(_entries_t.c.transaction_id)
    ).all()
    for tx_id, debits, credits in per_tx:
        if debits != credits:
            problems.append(f"transaction {tx_id}: debits {debits} != credits {credits}")
    total_debits = sum(d for _t, d, _c in per_tx)
    total_credits = sum(c for _t, _d, c in per_tx)
    if total_debits != total_credits:
        problems.append(f"journal: debits {total_debits} != credits {total_credits}")

    resolved = sa.select(_transactions_t.c.resolves_id).where(
        _transactions_t.c.resolves_id.is_not(None)
    )
    replay: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    rows = session.execute(
        sa.select(
            _entries_t.c.account_id,
            _entries_t.c.side,
            _entries_t.c.pending,
            _entries_t.c.transaction_id.in_(resolved).label("resolved"),
            sa.func.sum(_entries_t.c.amount),
        ).group_by(
            _entries_t.c.account_id,
            _entries_t.c.side,
            _entries_t.c.pending,
            _entries_t.c.transaction_id.in_(resolved),
        )
    ).all()
    for account_id, side, pending, was_resolved, amount in rows:
        if pending and was_resolved:
            continue  # a resolved hold's reservation no longer counts
        slot = (0 if side == DEBIT else 1) + (2 if pending else 0)
        replay[account_id][slot] += int(amount)
    flags = {
        row.id: (row.debits_must_not_exceed_credits, row.credits_must_not_exceed_debits)
        for row in session.execute(
            sa.select(
                _accounts_t.c.id,
                _accounts_t.c.debits_must_not_exceed_credits,
                _accounts_t.c.credits_must_not_exceed_debits,
            )
        )
    }
    for bal in balances(session, account_ids=flags):
        expected = replay.get(bal.account_id, [0, 0, 0, 0])
        cached = [bal.debits_posted, bal.credits_posted, bal.debits_pending, bal.credits_pending]
        if cached != expected:
            problems.append(f"account {bal.account_id}: cached {cached} != replayed {expected}")
        debit_limited, credit_limited = flags[bal.account_id]
        if debit_limited and bal.debits_posted + bal.debits_pending > bal.credits_posted:
            problems.append(f"account {bal.account_id}: debits exceed credits")
        if credit_limited and bal.credits_posted + bal.credits_pending > bal.debits_posted:
            problems.append(f"account {bal.account_id}: credits exceed debits")
    return problems
