"""Money sent back to payers' original payments: withdrawals and the provider side of refunds.

Money that came in through a real provider goes back the way it came; simulated money stays in
the wallet. An amount is spread over the payer's successful, not yet fully refunded top-ups
newest first, one provider refund per top-up, so no payment is ever refunded beyond what it
captured minus what was refunded before (the top-up's ``refunded_minor`` counts every refund
not known to have failed). Each provider refund holds its amount on the wallet until the
provider confirms (posted) or refuses (voided, the wallet has it back).
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from marketplace.db import get_owned, lock_row, utcnow
from marketplace.errors import Conflict, NotFound
from marketplace.ledger import services as ledger
from marketplace.ledger.models import WALLET
from marketplace.payments import holds, outbox, provider_rows
from marketplace.payments.gateway import (
    REFUND_FAILED as PROVIDER_REFUND_FAILED,
)
from marketplace.payments.gateway import (
    REFUND_SUCCEEDED as PROVIDER_REFUND_SUCCEEDED,
)
from marketplace.payments.gateway import (
    PaymentGateway,
    ProviderRefund,
    ProviderRefused,
    RefundRequest,
)
from marketplace.payments.models import (
    OUTBOX_REFUND,
    REFUND_FAILED,
    REFUND_FOR_ORDER,
    REFUND_FOR_WITHDRAWAL,
    REFUND_PENDING,
    REFUND_SUCCEEDED,
    TOP_UP_SUCCEEDED,
    WITHDRAWAL_PARTIAL,
    PaymentRefund,
    TopUp,
    Withdrawal,
    payment_refunds_t,
    top_ups_t,
)
from marketplace.payments.schemas import (
    PaymentRefundPublic,
    WithdrawalPublic,
)

log = logging.getLogger(__name__)


_HOLD_KINDS = {REFUND_FOR_WITHDRAWAL: "withdrawal", REFUND_FOR_ORDER: "refund_to_payment"}


def refundable_top_ups(
    s: Session, *, organization_id: int, currency: str, provider: str, count_max: int
) -> list[TopUp]:
    """The payer's provider-collected top-ups with money left to refund, newest first, locked."""
    return list(
        s.exec(
            select(TopUp)
            .where(
                TopUp.organization_id == organization_id,
                TopUp.currency == currency,
                TopUp.provider == provider,
                TopUp.simulated == sa.false(),
                TopUp.status == TOP_UP_SUCCEEDED,
                TopUp.amount_minor > TopUp.refunded_minor,
            )
            .order_by(top_ups_t.c.created_at.desc(), top_ups_t.c.id.desc())
            .limit(count_max)
            .with_for_update()
        ).all()
    )


def refund_to_payments(
    s: Session,
    *,
    organization_id: int,
    currency: str,
    amount_minor: int,
    provider: str,
    purpose: str,
    count_max: int,
    withdrawal_id: int | None = None,
    order_refund_id: int | None = None,
    require_all: bool = False,
) -> list[PaymentRefund]:
    """Queue provider refunds for up to ``amount_minor`` (inside the caller's transaction).

    Returns the refunds made; with ``require_all`` anything the payments cannot take back is
    refused with 409 instead of being left in the wallet.
    """
    sources = refundable_top_ups(
        s,
        organization_id=organization_id,
        currency=currency,
        provider=provider,
        count_max=count_max,
    )
    refundable = sum(t.amount_minor - t.refunded_minor for t in sources)
    if require_all and amount_minor > refundable:
        raise Conflict(
            f"At most {refundable} minor units can go back to your payments in one request.",
            code="withdrawal_exceeds_refundable",
            extra={"refundable_minor": refundable},
        )
    wallet = ledger.ensure_account(
        s, organization_id=organization_id, code=WALLET, currency=currency
    )
    kind = _HOLD_KINDS[purpose]
    # What every part shares: whose money, why it goes back, and through which provider.
    shared: dict[str, Any] = {
        "organization_id": organization_id,
        "currency": currency,
        "purpose": purpose,
        "withdrawal_id": withdrawal_id,
        "order_refund_id": order_refund_id,
        "provider": provider,
    }
    left = amount_minor
    made: list[PaymentRefund] = []
    for top_up in sources:
        if left == 0:
            break
        part = min(left, top_up.amount_minor - top_up.refunded_minor)
        left -= part
        assert top_up.id is not None
        refund = PaymentRefund(top_up_id=top_up.id, amount_minor=part, **shared)
        holds.queue_outgoing(
            s, refund, kind=kind, from_account=wallet, memo_to=str(top_up.provider_ref)
        )
        top_up.refunded_minor += part
        s.add(top_up)
        made.append(refund)
    return made


def send_now(
    session: Session,
    gateway: PaymentGateway,
    policy: outbox.OutboxPolicy,
    refunds: list[PaymentRefund],
) -> None:
    """Send the refunds' provider calls at once, so the answer can show their outcome."""
    for refund in refunds:
        message = outbox.find(session, kind=OUTBOX_REFUND, subject_id=refund.id)  # type: ignore[arg-type]
        if message is not None and message.id is not None:
            outbox.process_now(session, gateway, policy, message.id)


def refunds_of(
    session: Session, *, withdrawal_id: int | None = None, order_refund_id: int | None = None
) -> list[PaymentRefund]:
    query = (
        select(PaymentRefund)
        .order_by(payment_refunds_t.c.id)
        .execution_options(populate_existing=True)
    )
    if withdrawal_id is not None:
        query = query.where(PaymentRefund.withdrawal_id == withdrawal_id)
    else:
        query = query.where(PaymentRefund.order_refund_id == order_refund_id)
    return list(session.exec(query).all())


def payment_refunds_public(
    refunds: list[PaymentRefund], session: Session
) -> list[PaymentRefundPublic]:
    out = []
    for refund in refunds:
        top_up = session.get(TopUp, refund.top_up_id)
        payment_intent_id = top_up.provider_ref if top_up else None
        out.append(
            PaymentRefundPublic.model_validate(
                {**refund.model_dump(), "payment_intent_id": payment_intent_id}
            )
        )
    return out


def withdrawal_public(session: Session, withdrawal_id: int) -> WithdrawalPublic:
    withdrawal = session.get(Withdrawal, withdrawal_id, populate_existing=True)
    assert withdrawal is not None
    refunds = payment_refunds_public(refunds_of(session, withdrawal_id=withdrawal_id), session)
    return WithdrawalPublic.model_validate({**withdrawal.model_dump(), "refunds": refunds})


def get_withdrawal(
    *, session: Session, organization_id: int, withdrawal_id: int
) -> WithdrawalPublic:
    missing = NotFound("No such withdrawal.", code="withdrawal_not_found")
    get_owned(session, Withdrawal, withdrawal_id, organization_id, missing)
    return withdrawal_public(session, withdrawal_id)


def apply_refund(s: Session, refund_id: int, result: ProviderRefund) -> PaymentRefund:
    """Move a provider refund along what the provider says (inside the caller's transaction).

    pending -> succeeded posts the hold; pending -> failed voids it and frees the payment's
    refundable amount again. Final states never move back.
    """
    refund: PaymentRefund
    refund, own = provider_rows.lock_reported(s, PaymentRefund, refund_id, result.provider_ref)
    if not own:
        return refund
    if refund.status != REFUND_PENDING:
        if refund.status == REFUND_SUCCEEDED and result.status == PROVIDER_REFUND_FAILED:
            # Rare (a bank returns a refund after confirming it); a person decides what follows.
            log.error("refund %s failed after it had succeeded", refund.id)
        s.add(refund)
        return refund
    if result.status == PROVIDER_REFUND_SUCCEEDED:
        if (result.amount_minor, result.currency) != (refund.amount_minor, refund.currency):
            # Never post a hold for other money than went back; it stays pending, for a person,
            # and the reconciliation report lists it (as a top-up of another amount is).
            log.error(
                "refund %s asked %s %s; the provider's refund is %s %s",
                refund.id,
                refund.amount_minor,
                refund.currency,
                result.amount_minor,
                result.currency,
            )
        else:
            _finish(s, refund, REFUND_SUCCEEDED, None)
    elif result.status == PROVIDER_REFUND_FAILED:
        _finish(s, refund, REFUND_FAILED, result.failure_code or "refund_failed")
    s.add(refund)
    return refund


def _finish(s: Session, refund: PaymentRefund, status: str, failure_code: str | None) -> None:
    assert refund.hold_transaction_id is not None
    kind = _HOLD_KINDS[refund.purpose]
    # The top-up before the ledger's balance rows, the order in which withdrawals and refunds
    # lock them: a success that settled first and then touched the top-up deadlocked with them.
    top_up = lock_row(s, TopUp, refund.top_up_id)
    if status == REFUND_SUCCEEDED:
        refund.resolve_transaction_id = holds.settle(
            s, hold_id=refund.hold_transaction_id, kind=kind
        )
    else:
        refund.resolve_transaction_id = holds.release(
            s, hold_id=refund.hold_transaction_id, kind=kind
        )
        top_up.refunded_minor -= refund.amount_minor
        s.add(top_up)
        refund.failure_code = (failure_code or "refund_failed")[:64]
    refund.status = status
    refund.completed_at = utcnow()
    s.add(refund)
    s.flush()
    if refund.withdrawal_id is not None:
        _update_withdrawal(s, refund.withdrawal_id)


def _update_withdrawal(s: Session, withdrawal_id: int) -> None:
    withdrawal = lock_row(s, Withdrawal, withdrawal_id)
    statuses = {r.status for r in refunds_of(s, withdrawal_id=withdrawal_id)}
    if REFUND_PENDING in statuses:
        return
    if statuses == {REFUND_SUCCEEDED}:
        withdrawal.status = REFUND_SUCCEEDED
    elif statuses == {REFUND_FAILED}:
        withdrawal.status = REFUND_FAILED
    else:
        withdrawal.status = WITHDRAWAL_PARTIAL
    withdrawal.completed_at = utcnow()
    s.add(withdrawal)


def refund_metadata(refund: PaymentRefund) -> dict[str, str]:
    return {
        provider_rows.REFUND_ID_KEY: str(refund.id),
        provider_rows.REFERENCE_KEY: refund.reference,
        "jishi_organization_id": str(refund.organization_id),
        "jishi_purpose": refund.purpose,
    }


class RefundHandler:
    """Outbox rows that ask the provider to refund part of a payment."""

    record = staticmethod(apply_refund)

    def prepare(self, session: Session, refund_id: int, key: str, /) -> outbox.ProviderCall:
        refund = session.get(PaymentRefund, refund_id)
        assert refund is not None
        top_up = session.get(TopUp, refund.top_up_id)
        assert top_up is not None and top_up.provider_ref is not None
        request = RefundRequest.of(
            refund,
            idempotency_key=key,
            metadata=refund_metadata(refund),
            payment_ref=top_up.provider_ref,
        )
        return lambda gateway: gateway.create_refund(request)

    def refused(self, session: Session, refund_id: int, error: ProviderRefused, /) -> None:
        refund = lock_row(session, PaymentRefund, refund_id)
        if refund.status == REFUND_PENDING:
            _finish(session, refund, REFUND_FAILED, error.code)
