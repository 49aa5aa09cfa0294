"""Transfers: the ledger's one way in, :func:`apply_transfers`, and its conveniences."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from marketplace.db import utcnow
from marketplace.ledger import bulk
from marketplace.ledger.errors import (
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidTransaction,
    LimitExceeded,
    PendingResolved,
)
from marketplace.ledger.models import CREDIT, DEBIT, WALLET
from marketplace.ledger.services.records import (
    Leg,
    PostedTransaction,
    Transfer,
    accounts_t,
    balances_t,
    entries_t,
    record_from_row,
    transactions_t,
)
from marketplace.ledger.services.unit_of_work import run_in_transaction

LEGS_MAX = 16  # legs per transfer; a sale has three
MEMO_MAX = 200  # characters, as the transactions table's memo column
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
        sa.select(balances_t, accounts_t)
        .join(accounts_t, accounts_t.c.id == balances_t.c.account_id)
        .where(balances_t.c.account_id.in_(sorted(account_ids)))
        .order_by(balances_t.c.account_id)
        # FOR UPDATE OF the balance rows only, taken in ascending id order. SQLite ignores it;
        # there the unit of work already holds the write lock (BEGIN IMMEDIATE).
        .with_for_update(of=balances_t)
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
    rows = session.execute(sa.select(transactions_t).where(where)).mappings().all()
    if not rows:
        return {}
    ids = [row["id"] for row in rows]
    legs: dict[int, list[Leg]] = defaultdict(list)
    for entry in session.execute(
        sa.select(
            entries_t.c.transaction_id,
            entries_t.c.account_id,
            entries_t.c.side,
            entries_t.c.amount,
        )
        .where(entries_t.c.transaction_id.in_(ids))
        .order_by(entries_t.c.id)
    ):
        legs[entry.transaction_id].append(Leg(entry.account_id, entry.side, entry.amount))
    return {row["id"]: (row, legs[row["id"]]) for row in rows}


def _posted(row: Any, legs: Sequence[Leg], *, replayed: bool) -> PostedTransaction:
    return record_from_row(PostedTransaction, row, legs=tuple(legs), replayed=replayed)


def get_transaction(session: Session, transaction_id: int) -> PostedTransaction | None:
    found = _load_transactions(session, transactions_t.c.id == transaction_id)
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
    other rows (an order and its licence, a settlement and its usage watermark). Four steps:
    validate the requests, lock the accounts they touch, plan the new counters (replaying
    repeated keys and checking every limit), write what the plan holds.
    """
    if not transfers:
        return []
    _validate(transfers)
    locked = _lock(session, transfers)
    results, plans = _plan(session, transfers, locked)
    if plans:
        fresh = iter(_write(session, plans, locked.counters))
        results = [r if r is not None else next(fresh) for r in results]
        written = [r for r in results if r is not None and not r.replayed]
        for hook in _transaction_hooks:
            hook(session, written)
    return [r for r in results if r is not None]


def _validate(transfers: Sequence[Transfer]) -> None:
    """Refuse a malformed transfer, or a batch that repeats an idempotency key."""
    for transfer in transfers:
        _check_shape(transfer)
    keys = [t.idempotency_key for t in transfers]
    if len(set(keys)) != len(keys):
        raise InvalidTransaction("Idempotency keys within one batch must differ.")


@dataclass
class _Locked:
    """The counters of every account involved, locked, and the holds being resolved."""

    counters: dict[int, _Counters]
    holds: dict[int, tuple[Any, list[Leg]]]
    resolve_ids: set[int]


def _lock(session: Session, transfers: Sequence[Transfer]) -> _Locked:
    """Lock the balance rows of every account the transfers (and the holds they resolve) touch."""
    # Holds being resolved: their legs decide which accounts and amounts are involved.
    resolve_ids = {t.resolves_id for t in transfers if t.resolves_id is not None}
    holds = (
        _load_transactions(session, transactions_t.c.id.in_(sorted(resolve_ids)))
        if resolve_ids
        else {}
    )
    account_ids = {leg.account_id for t in transfers for leg in t.legs}
    for _row, legs in holds.values():
        account_ids.update(leg.account_id for leg in legs)
    return _Locked(_lock_counters(session, account_ids), holds, resolve_ids)


def _plan(
    session: Session, transfers: Sequence[Transfer], locked: _Locked
) -> tuple[list[PostedTransaction | None], list[_Plan]]:
    """Replays for repeated keys (in place) and a plan for each new transfer (None in place).

    The counters are moved as planned and every limit a transfer touches is checked, so the
    write step only stores what passed.
    """
    counters, holds = locked.counters, locked.holds
    keys = [t.idempotency_key for t in transfers]
    # Idempotency, read after the locks so that a racing twin's commit is visible.
    existing = _load_transactions(
        session, bulk.in_list(session, transactions_t.c.idempotency_key, keys)
    )
    by_key = {row["idempotency_key"]: (row, legs) for row, legs in existing.values()}
    # Holds already resolved by a committed transaction.
    resolved_already = (
        set(
            session.execute(
                sa.select(transactions_t.c.resolves_id).where(
                    transactions_t.c.resolves_id.in_(sorted(locked.resolve_ids))
                )
            ).scalars()
        )
        if locked.resolve_ids
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
    return results, plans


def _write(
    session: Session, plans: list[_Plan], counters: dict[int, _Counters]
) -> list[PostedTransaction]:
    """Insert the planned transactions and entries and store the moved counters."""
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
        new_ids = bulk.next_ids(session, transactions_t, len(plans))
        bulk.insert_rows(
            session,
            transactions_t,
            ("id", *_TRANSACTION_COLUMNS),
            [(tx_id, *row) for tx_id, row in zip(new_ids, tx_rows, strict=True)],
        )
    else:
        new_ids = list(
            session.execute(
                sa.insert(transactions_t).returning(
                    transactions_t.c.id, sort_by_parameter_order=True
                ),
                [dict(zip(_TRANSACTION_COLUMNS, row, strict=True)) for row in tx_rows],
            ).scalars()
        )
    bulk.insert_rows(
        session,
        entries_t,
        _ENTRY_COLUMNS,
        [
            (tx_id, leg.account_id, leg.side, leg.amount, p.transfer.pending, now)
            for p, tx_id in zip(plans, new_ids, strict=True)
            for leg in p.transfer.legs
        ],
    )
    _write_counters(session, [c for c in counters.values() if c.dirty])
    # What was written is the request as it came (its fields are the transaction's of the same
    # names) with what the write gave it.
    return [
        record_from_row(
            PostedTransaction, vars(p.transfer), id=tx_id, currency=p.currency, created_at=now
        )
        for p, tx_id in zip(plans, new_ids, strict=True)
    ]


_update_counters = (
    sa.update(balances_t)
    .where(balances_t.c.account_id == sa.bindparam("b_account_id"))
    .where(balances_t.c.version == sa.bindparam("b_version"))
    .values(
        debits_posted=sa.bindparam("b_debits_posted"),
        credits_posted=sa.bindparam("b_credits_posted"),
        debits_pending=sa.bindparam("b_debits_pending"),
        credits_pending=sa.bindparam("b_credits_pending"),
        version=balances_t.c.version + 1,
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
    transfer = void_transfer(idempotency_key, pending_id)
    return run_in_transaction(session, lambda s: apply_transfers(s, [transfer])[0])


def place_hold(
    session: Session,
    *,
    idempotency_key: str,
    kind: str,
    from_account: int,
    to_account: int,
    amount: int,
    memo: str = "",
) -> int:
    """Hold ``amount`` from one account for another, inside the caller's transaction; the
    hold's transaction id. The memo is cut to fit its column."""
    transfer = hold_transfer(idempotency_key, kind, from_account, to_account, amount, memo)
    (posted,) = apply_transfers(session, [transfer])
    return posted.id


def hold_transfer(
    idempotency_key: str, kind: str, from_account: int, to_account: int, amount: int, memo: str
) -> Transfer:
    """The two-leg hold :func:`place_hold` applies, for a caller applying it with others."""
    return Transfer(
        idempotency_key=idempotency_key,
        kind=kind,
        legs=(Leg.debit(from_account, amount), Leg.credit(to_account, amount)),
        pending=True,
        memo=memo[:MEMO_MAX],
    )


def void_transfer(idempotency_key: str, pending_id: int, kind: str = "void") -> Transfer:
    """The transfer that releases a hold entirely: no legs, resolving ``pending_id``."""
    return Transfer(idempotency_key=idempotency_key, kind=kind, legs=(), resolves_id=pending_id)


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
        sa.select(transactions_t.c.id).where(transactions_t.c.reverses_id == transaction_id)
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
