"""Wallet top-ups through a :class:`PaymentGateway`, and wallet balances. No Flask here."""

from __future__ import annotations

from sqlmodel import Session, select

from marketplace.db import utcnow
from marketplace.errors import Conflict, ValidationFailed
from marketplace.ledger import services as ledger
from marketplace.ledger.idempotency import replay, request_hash
from marketplace.ledger.models import PAYMENT_CLEARING, WALLET, Currency
from marketplace.ledger.money import format_minor
from marketplace.payments.gateway import (
    INTENT_FAILED,
    INTENT_SUCCEEDED,
    PaymentGateway,
    PaymentIntent,
)
from marketplace.payments.models import (
    TOP_UP_FAILED,
    TOP_UP_PENDING,
    TOP_UP_SUCCEEDED,
    TopUp,
)
from marketplace.payments.schemas import (
    PaymentInfo,
    TopUpCreate,
    TopUpPublic,
    WalletBalance,
    WalletPublic,
)


def _public(top_up: TopUp, intent: PaymentIntent | None = None) -> TopUpPublic:
    assert top_up.id is not None
    return TopUpPublic(
        id=top_up.id,
        status=top_up.status,
        amount_minor=top_up.amount_minor,
        currency=top_up.currency,
        created_at=top_up.created_at,
        completed_at=top_up.completed_at,
        payment=PaymentInfo(
            provider=top_up.provider,
            simulated=top_up.simulated,
            client_secret=intent.client_secret if intent else None,
        ),
    )


def create_top_up(
    *,
    session: Session,
    gateway: PaymentGateway,
    organization_id: int,
    request: TopUpCreate,
    idempotency_key: str,
    amount_minor_max: int,
) -> TopUpPublic:
    """Record a top-up, ask the gateway to collect it, and credit the wallet once it succeeds.

    The same idempotency key with the same body returns the same top-up (completing it if a
    crash interrupted it); with another body it is refused with 409.
    """
    if request.amount_minor > amount_minor_max:
        raise ValidationFailed(
            f"A top-up is limited to {amount_minor_max} minor units.", code="top_up_too_large"
        )
    digest = request_hash({"amount_minor": request.amount_minor, "currency": request.currency})

    def record(s: Session) -> TopUp:
        found = s.exec(
            select(TopUp).where(
                TopUp.organization_id == organization_id, TopUp.idempotency_key == idempotency_key
            )
        ).first()
        if (prior := replay(found, digest, "top-up")) is not None:
            return prior
        if s.get(Currency, request.currency) is None:
            raise ValidationFailed(
                f"Currency {request.currency} is not supported.", code="unknown_currency"
            )
        top_up = TopUp(
            organization_id=organization_id,
            amount_minor=request.amount_minor,
            currency=request.currency,
            status=TOP_UP_PENDING,
            provider=gateway.name,
            simulated=gateway.simulated,
            idempotency_key=idempotency_key,
            request_hash=digest,
        )
        s.add(top_up)
        s.flush()
        return top_up

    top_up = ledger.run_in_transaction(session, record)
    if top_up.status != TOP_UP_PENDING:
        return _public(top_up)
    # The gateway call happens outside any database transaction; the reference makes it
    # idempotent at the provider, so a retry after a crash collects once.
    intent = gateway.create_top_up(
        reference=f"top-up-{top_up.id}", amount_minor=top_up.amount_minor, currency=top_up.currency
    )
    top_up_id = top_up.id
    assert top_up_id is not None
    if intent.status == INTENT_SUCCEEDED:
        top_up = complete_top_up(
            session=session, top_up_id=top_up_id, provider_ref=intent.provider_ref
        )
    elif intent.status == INTENT_FAILED:
        top_up = fail_top_up(session=session, top_up_id=top_up_id, provider_ref=intent.provider_ref)
    return _public(top_up, intent)


def complete_top_up(*, session: Session, top_up_id: int, provider_ref: str) -> TopUp:
    """Credit the wallet for a collected top-up; calling it again changes nothing."""

    def work(s: Session) -> TopUp:
        top_up = s.exec(select(TopUp).where(TopUp.id == top_up_id).with_for_update()).one()
        if top_up.status == TOP_UP_SUCCEEDED:
            return top_up
        if top_up.status != TOP_UP_PENDING:
            raise Conflict("The top-up is not pending.", code="top_up_not_pending")
        clearing = ledger.ensure_account(
            s, organization_id=None, code=PAYMENT_CLEARING, currency=top_up.currency
        )
        wallet = ledger.ensure_account(
            s, organization_id=top_up.organization_id, code=WALLET, currency=top_up.currency
        )
        (tx,) = ledger.apply_transfers(
            s,
            [
                ledger.Transfer(
                    idempotency_key=f"top-up:{top_up.id}",
                    kind="top_up",
                    legs=(
                        ledger.Leg.debit(clearing, top_up.amount_minor),
                        ledger.Leg.credit(wallet, top_up.amount_minor),
                    ),
                    memo=f"top-up {top_up.id} via {top_up.provider}"
                    + (" (simulated)" if top_up.simulated else ""),
                )
            ],
        )
        top_up.status = TOP_UP_SUCCEEDED
        top_up.provider_ref = provider_ref
        top_up.ledger_transaction_id = tx.id
        top_up.completed_at = utcnow()
        s.add(top_up)
        return top_up

    return ledger.run_in_transaction(session, work)


def fail_top_up(*, session: Session, top_up_id: int, provider_ref: str) -> TopUp:
    """Mark a top-up the provider refused; nothing reaches the ledger."""

    def work(s: Session) -> TopUp:
        top_up = s.exec(select(TopUp).where(TopUp.id == top_up_id).with_for_update()).one()
        if top_up.status == TOP_UP_PENDING:
            top_up.status = TOP_UP_FAILED
            top_up.provider_ref = provider_ref
            top_up.completed_at = utcnow()
            s.add(top_up)
        return top_up

    return ledger.run_in_transaction(session, work)


def wallet(*, session: Session, organization_id: int) -> WalletPublic:
    """The organisation's wallet balance in every currency it has used."""
    exponents = ledger.currency_exponents(session)
    rows = [
        b for b in ledger.balances(session, organization_id=organization_id) if b.code == WALLET
    ]
    return WalletPublic(
        organization_id=organization_id,
        balances=[
            WalletBalance(
                currency=b.currency,
                exponent=exponents[b.currency],
                balance_minor=b.posted,
                held_minor=b.debits_pending,
                available_minor=b.available,
                display=format_minor(b.available, b.currency, exponents[b.currency]),
            )
            for b in rows
        ],
    )
