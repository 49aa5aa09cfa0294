"""Ledger holds for money on its way out through the provider (payouts, refunds, withdrawals).

Each outgoing amount is a two-leg pending transfer from the payer's account (a vendor's payable,
a buyer's wallet) to ``payment_clearing``, posted when the provider confirms and voided when it
refuses, so the money is never spendable twice and never lost. The kinds name the purpose:
``payout``, ``withdrawal``, ``refund_to_payment``, with ``_settled`` and ``_returned`` for the
resolution.
"""

from __future__ import annotations

from dataclasses import replace

from sqlmodel import Session

from marketplace.ledger import services as ledger
from marketplace.ledger.models import PAYMENT_CLEARING
from marketplace.payments import outbox
from marketplace.payments.models import OUTBOX_REFUND, OUTBOX_TRANSFER, PaymentRefund, Payout


def queue_outgoing(
    s: Session,
    row: Payout | PaymentRefund,
    *,
    kind: str,
    from_account: int,
    memo_to: str,
) -> None:
    """Insert ``row``, hold its money from ``from_account`` for the provider and queue its
    provider call (a payout's transfer, a payment refund's refund), in the caller's
    transaction.

    The hold's key and memo name the row's id, so the row is flushed first.
    """
    key_prefix, outbox_kind = (
        ("payout", OUTBOX_TRANSFER)
        if isinstance(row, Payout)
        else ("payment-refund", OUTBOX_REFUND)
    )
    s.add(row)
    s.flush()
    if row.id is None:
        raise RuntimeError("an outgoing payment row has no id after flush")
    clearing = ledger.ensure_account(
        s, organization_id=None, code=PAYMENT_CLEARING, currency=row.currency
    )
    row.hold_transaction_id = ledger.place_hold(
        s,
        idempotency_key=f"{key_prefix}:{row.id}:hold",
        kind=kind,
        from_account=from_account,
        to_account=clearing,
        amount=row.amount_minor,
        memo=f"{kind.replace('_', ' ')} {row.id} to {memo_to}",
    )
    s.add(row)
    outbox.enqueue(s, kind=outbox_kind, subject_id=row.id, reference=row.reference)


def settle(s: Session, *, hold_id: int, kind: str) -> int:
    """The provider confirmed: post the whole hold."""
    transfer = ledger.post_hold_transfer(s, f"{kind}:{hold_id}:settled", hold_id, None)
    (tx,) = ledger.apply_transfers(s, [replace(transfer, kind=f"{kind}_settled")])
    return tx.id


def release(s: Session, *, hold_id: int, kind: str) -> int:
    """The provider refused: void the hold, the money is the payer's again."""
    transfer = ledger.void_transfer(f"{kind}:{hold_id}:returned", hold_id, kind=f"{kind}_returned")
    (tx,) = ledger.apply_transfers(s, [transfer])
    return tx.id
