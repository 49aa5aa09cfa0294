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

The package is cut along those seams: ``records`` (value objects and tables), ``accounts``,
``transfers`` (validate, lock, plan, write), ``unit_of_work`` (transactions and retries) and
``invariants``; every name is importable from here as before.
"""

from marketplace.ledger.services.accounts import (
    account_key,
    balances,
    currency_exponents,
    ensure_account,
    find_account,
    require_currency,
    sale_legs,
)
from marketplace.ledger.services.invariants import check_invariants
from marketplace.ledger.services.records import AccountBalance, Leg, PostedTransaction, Transfer
from marketplace.ledger.services.transfers import (
    LEGS_MAX,
    MEMO_MAX,
    TransactionHook,
    apply_transfers,
    get_transaction,
    hold_transfer,
    place_hold,
    post_hold_transfer,
    post_pending,
    post_transaction,
    register_transaction_hook,
    reversal_transfer,
    reverse_transaction,
    unregister_transaction_hook,
    void_pending,
    void_transfer,
)
from marketplace.ledger.services.unit_of_work import (
    RETRY_ATTEMPTS_MAX,
    RETRY_BACKOFF_S,
    run_in_transaction,
)

__all__ = [
    "LEGS_MAX",
    "MEMO_MAX",
    "RETRY_ATTEMPTS_MAX",
    "RETRY_BACKOFF_S",
    "AccountBalance",
    "Leg",
    "PostedTransaction",
    "TransactionHook",
    "Transfer",
    "account_key",
    "apply_transfers",
    "balances",
    "check_invariants",
    "currency_exponents",
    "ensure_account",
    "find_account",
    "get_transaction",
    "hold_transfer",
    "place_hold",
    "post_hold_transfer",
    "post_pending",
    "post_transaction",
    "register_transaction_hook",
    "require_currency",
    "reversal_transfer",
    "reverse_transaction",
    "run_in_transaction",
    "sale_legs",
    "unregister_transaction_hook",
    "void_pending",
    "void_transfer",
]
