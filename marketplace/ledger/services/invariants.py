"""The ledger's invariants, checked by replaying the journal."""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from sqlmodel import Session

from marketplace.ledger.models import CREDIT, DEBIT
from marketplace.ledger.services.accounts import balances
from marketplace.ledger.services.records import accounts_t, entries_t, transactions_t


def check_invariants(session: Session) -> list[str]:
    """Every problem found by replaying the journal; an empty list means the ledger is sound.

    Checks: each transaction's debits equal its credits; all debits equal all credits; every
    cached counter equals the sum of its entries (pending entries count while their hold is
    unresolved); no account breaks its limit flags.
    """
    problems: list[str] = []
    per_tx = session.execute(
        sa.select(
            entries_t.c.transaction_id,
            sa.func.sum(sa.case((entries_t.c.side == DEBIT, entries_t.c.amount), else_=0)),
            sa.func.sum(sa.case((entries_t.c.side == CREDIT, entries_t.c.amount), else_=0)),
        ).group_by(entries_t.c.transaction_id)
    ).all()
    for tx_id, debits, credits in per_tx:
        if debits != credits:
            problems.append(f"transaction {tx_id}: debits {debits} != credits {credits}")
    total_debits = sum(d for _t, d, _c in per_tx)
    total_credits = sum(c for _t, _d, c in per_tx)
    if total_debits != total_credits:
        problems.append(f"journal: debits {total_debits} != credits {total_credits}")

    resolved = sa.select(transactions_t.c.resolves_id).where(
        transactions_t.c.resolves_id.is_not(None)
    )
    replay: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    rows = session.execute(
        sa.select(
            entries_t.c.account_id,
            entries_t.c.side,
            entries_t.c.pending,
            entries_t.c.transaction_id.in_(resolved).label("resolved"),
            sa.func.sum(entries_t.c.amount),
        ).group_by(
            entries_t.c.account_id,
            entries_t.c.side,
            entries_t.c.pending,
            entries_t.c.transaction_id.in_(resolved),
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
                accounts_t.c.id,
                accounts_t.c.debits_must_not_exceed_credits,
                accounts_t.c.credits_must_not_exceed_debits,
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
