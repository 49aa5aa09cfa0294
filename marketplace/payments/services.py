"""Wallet top-ups through a :class:`PaymentGateway`, wallet balances, and
:class:`PaymentsService`, the payments use cases with their provider and bounds. No Flask here.

A top-up is recorded together with its outbox row; the request then sends that row at once so
that the payer gets the provider's ``client_secret`` in the answer. The wallet is credited only
when the provider says the payment succeeded: in that same answer (offline), by a signed webhook,
or by reconciliation, whichever comes first; the others then change nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import Session, select

from marketplace.accounts.models import Organization
from marketplace.config import build_from_settings, setting
from marketplace.db import get_owned, lock_row, utcnow
from marketplace.errors import Conflict, NotFound, ValidationFailed
from marketplace.ledger import services as ledger
from marketplace.ledger.idempotency import replay, request_hash
from marketplace.ledger.models import PAYMENT_CLEARING, WALLET
from marketplace.payments import outbox, payouts, provider_rows, refunds, webhooks
from marketplace.payments import reconcile as reconciliation
from marketplace.payments.gateway import (
    INTENT_CANCELED,
    INTENT_FAILED,
    INTENT_PENDING,
    INTENT_SUCCEEDED,
    PaymentGateway,
    PaymentIntent,
    ProviderRefused,
    TopUpRequest,
)
from marketplace.payments.models import (
    OUTBOX_PENDING,
    OUTBOX_TOP_UP,
    OUTBOX_TOP_UP_CANCEL,
    OUTBOX_TRANSFER,
    REFUND_FOR_ORDER,
    REFUND_FOR_WITHDRAWAL,
    TOP_UP_CANCELED,
    TOP_UP_FAILED,
    TOP_UP_PENDING,
    TOP_UP_REQUIRES_PAYMENT,
    TOP_UP_SUCCEEDED,
    PaymentRefund,
    Payout,
    TopUp,
    Withdrawal,
    new_reference,
)
from marketplace.payments.schemas import (
    PaymentInfo,
    PayoutAccountPublic,
    PayoutPublic,
    TopUpCreate,
    TopUpPublic,
    WalletBalance,
    WalletPublic,
    WithdrawalCreate,
    WithdrawalPublic,
)
from marketplace.ttlcache import TTLCache

if TYPE_CHECKING:
    from marketplace.config import Settings

log = logging.getLogger(__name__)
# How long a process keeps an unpaid top-up's client secret for replays of its request.
CLIENT_SECRET_TTL_S = 300.0

# States from which the provider may still report a successful payment.
OPEN_TOP_UP_STATUSES = (TOP_UP_PENDING, TOP_UP_REQUIRES_PAYMENT, TOP_UP_FAILED)


def top_up_public(top_up: TopUp, client_secret: str | None = None) -> TopUpPublic:
    """The top-up as the payer sees it; ``client_secret`` only in the answer that creates it."""
    row = {**top_up.model_dump(), "client_secret": client_secret}
    return TopUpPublic.model_validate({**row, "payment": PaymentInfo.model_validate(row)})


def top_up_metadata(top_up: TopUp) -> dict[str, str]:
    """What the provider's payment carries back to us (in webhooks and lists)."""
    return {
        provider_rows.TOP_UP_ID_KEY: str(top_up.id),
        provider_rows.REFERENCE_KEY: str(top_up.reference),
        "jishi_organization_id": str(top_up.organization_id),
    }


def _reload(session: Session, top_up_id: int) -> TopUp:
    found = session.get(TopUp, top_up_id, populate_existing=True)
    assert found is not None
    return found


def get_top_up(*, session: Session, organization_id: int, top_up_id: int) -> TopUpPublic:
    """One of the organisation's top-ups; another organisation's id is simply not found."""
    missing = NotFound("No such top-up.", code="top_up_not_found")
    return top_up_public(get_owned(session, TopUp, top_up_id, organization_id, missing))


def apply_intent(s: Session, top_up_id: int, intent: PaymentIntent) -> TopUp:
    """Move a top-up along what the provider says about its payment (inside the caller's
    transaction). Monotonic: a stale or repeated report never undoes a later state."""
    top_up: TopUp
    top_up, own = provider_rows.lock_reported(s, TopUp, top_up_id, intent.provider_ref)
    if not own:
        return top_up
    if intent.amount_minor != top_up.amount_minor or intent.currency != top_up.currency:
        # Never credit an amount we did not ask for; the reconciliation report lists it.
        log.error(
            "top-up %s asked %s %s; the provider's payment is %s %s",
            top_up.id,
            top_up.amount_minor,
            top_up.currency,
            intent.amount_minor,
            intent.currency,
        )
        s.add(top_up)
        return top_up
    if top_up.status in (TOP_UP_SUCCEEDED, TOP_UP_CANCELED):
        pass  # final
    elif intent.status == INTENT_SUCCEEDED:
        _credit(s, top_up)
    elif intent.status == INTENT_CANCELED:
        top_up.status = TOP_UP_CANCELED
        top_up.completed_at = utcnow()
    elif intent.status == INTENT_FAILED:
        top_up.status = TOP_UP_FAILED
        top_up.failure_code = (intent.failure_code or "payment_failed")[:64]
    elif intent.status == INTENT_PENDING and top_up.status == TOP_UP_PENDING:
        top_up.status = TOP_UP_REQUIRES_PAYMENT
    s.add(top_up)
    return top_up


def _credit(s: Session, top_up: TopUp) -> None:
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
                + (" (simulated)" if top_up.simulated else f" {top_up.provider_ref}"),
            )
        ],
    )
    top_up.status = TOP_UP_SUCCEEDED
    top_up.failure_code = None
    top_up.ledger_transaction_id = tx.id
    top_up.completed_at = utcnow()


class TopUpCancelHandler:
    """Outbox rows that cancel an abandoned top-up's payment at the provider."""

    record = staticmethod(apply_intent)

    def prepare(self, session: Session, top_up_id: int, key: str, /) -> outbox.ProviderCall:
        top_up = _reload(session, top_up_id)
        assert top_up.provider_ref is not None
        ref = top_up.provider_ref
        return lambda gateway: gateway.cancel_top_up(idempotency_key=key, provider_ref=ref)

    def refused(self, session: Session, top_up_id: int, error: ProviderRefused, /) -> None:
        # Paid meanwhile (or canceled already): the next reconciliation applies what happened.
        log.info("top-up %s could not be canceled: %s", top_up_id, error.code)


def expire_top_ups(*, session: Session, provider: str, expiry_s: float, batch_max: int) -> int:
    """Queue the cancellation of top-ups left unpaid for ``expiry_s``; how many were queued.

    Unpaid payments would otherwise be polled for ever and count against the payer's open
    top-ups.
    """
    cutoff = utcnow() - dt.timedelta(seconds=expiry_s)

    def work(s: Session) -> int:
        stale = s.exec(
            select(TopUp)
            .where(
                TopUp.provider == provider,
                TopUp.status.in_((TOP_UP_REQUIRES_PAYMENT, TOP_UP_FAILED)),  # type: ignore[attr-defined]
                TopUp.provider_ref.is_not(None),  # type: ignore[union-attr]
                TopUp.created_at < cutoff,
            )
            .order_by(TopUp.id)  # type: ignore[arg-type]
            .limit(batch_max)
        ).all()
        queued = 0
        for top_up in stale:
            assert top_up.id is not None and top_up.reference is not None
            if outbox.find(s, kind=OUTBOX_TOP_UP_CANCEL, subject_id=top_up.id) is None:
                outbox.enqueue(
                    s, kind=OUTBOX_TOP_UP_CANCEL, subject_id=top_up.id, reference=top_up.reference
                )
                queued += 1
        return queued

    return ledger.run_in_transaction(session, work)


class TopUpHandler:
    """Outbox rows that create the provider's payment for a top-up."""

    record = staticmethod(apply_intent)

    def prepare(self, session: Session, top_up_id: int, key: str, /) -> outbox.ProviderCall:
        top_up = _reload(session, top_up_id)
        request = TopUpRequest.of(top_up, idempotency_key=key, metadata=top_up_metadata(top_up))
        return lambda gateway: gateway.create_top_up(request)

    def refused(self, session: Session, top_up_id: int, error: ProviderRefused, /) -> None:
        top_up = lock_row(session, TopUp, top_up_id)
        if top_up.status == TOP_UP_PENDING:
            top_up.status = TOP_UP_FAILED
            top_up.failure_code = error.code[:64]
            top_up.completed_at = utcnow()
            session.add(top_up)


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
            )
            for b in rows
        ],
    )


@dataclass(frozen=True)
class PaymentsService:
    """The payments use cases with their provider and bounds, built once by ``init_app``.

    The API, the pages, the CLI and licensing's order refunds call it and never hand settings
    over. ``gateway`` moves the money; ``policy`` paces the provider calls, which a request
    sends at once so that its answer can show their outcome.
    """

    gateway: PaymentGateway
    policy: outbox.OutboxPolicy = field(metadata=setting(outbox.OutboxPolicy.from_settings))
    top_up_amount_minor_max: int
    top_ups_open_max: int | None
    # Payments one withdrawal or order refund is spread over.
    refunds_max: int = field(metadata=setting("withdrawal_refunds_max"))
    payout_minimum_minor: int
    page_size_max: int
    outbox_batch_max: int = field(metadata=setting("payments_outbox_batch_max"))
    reconcile_batch_max: int = field(metadata=setting("payments_reconcile_batch_max"))
    top_up_expiry_s: float
    webhook_secrets: tuple[str, ...] = field(metadata=setting(lambda s: tuple(s.webhook_secrets)))
    webhook_tolerance_s: int = field(metadata=setting("stripe_webhook_tolerance_s"))
    # Client secrets of unpaid top-ups this process has handed out, for replays of the same
    # request: asking the provider on every replay let one buyer spend the platform's provider
    # request quota. In this process's memory only, for CLIENT_SECRET_TTL_S; never stored.
    client_secrets: TTLCache[int, str] = field(
        default_factory=lambda: TTLCache(CLIENT_SECRET_TTL_S), compare=False
    )

    @classmethod
    def from_settings(cls, settings: Settings, gateway: PaymentGateway) -> PaymentsService:
        return build_from_settings(cls, settings, gateway=gateway)

    # --- money in ---------------------------------------------------------------------------

    def create_top_up(
        self, *, session: Session, organization_id: int, request: TopUpCreate, idempotency_key: str
    ) -> tuple[TopUpPublic, bool]:
        """Record a top-up and ask the provider for the payment; the top-up and whether it is
        new.

        The same idempotency key with the same body returns the same top-up (sending its
        provider call if a crash or an outage left it unsent); with another body it is refused
        with 409.
        """
        gateway, amount_minor_max, open_max = (
            self.gateway,
            self.top_up_amount_minor_max,
            self.top_ups_open_max,
        )
        if request.amount_minor > amount_minor_max:
            raise ValidationFailed(
                f"A top-up is limited to {amount_minor_max} minor units.", code="top_up_too_large"
            )
        digest = request_hash({"amount_minor": request.amount_minor, "currency": request.currency})

        def record(s: Session) -> tuple[TopUp, bool]:
            found = s.exec(
                select(TopUp).where(
                    TopUp.organization_id == organization_id,
                    TopUp.idempotency_key == idempotency_key,
                )
            ).first()
            if (prior := replay(found, digest, "top-up")) is not None:
                return prior, False
            ledger.require_currency(s, request.currency)
            # Each open top-up is a payment at the provider that reconciliation polls; a
            # simulated one completes at once and is no such payment.
            if open_max is not None and not gateway.simulated:
                # One organisation's top-ups are counted and added one at a time: counted
                # concurrently, 60 requests opened 13 against a limit of 10 on PostgreSQL.
                lock_row(s, Organization, organization_id)
                open_count = s.exec(
                    select(sa.func.count())
                    .select_from(TopUp)
                    .where(
                        TopUp.organization_id == organization_id,
                        TopUp.status.in_(OPEN_TOP_UP_STATUSES),  # type: ignore[attr-defined]
                    )
                ).one()
                if open_count >= open_max:
                    raise Conflict(
                        f"Your organisation has {open_count} unpaid top-ups; pay or wait for "
                        "them to expire first.",
                        code="too_many_open_top_ups",
                    )
            top_up = TopUp(
                organization_id=organization_id,
                amount_minor=request.amount_minor,
                currency=request.currency,
                status=TOP_UP_PENDING,
                provider=gateway.name,
                simulated=gateway.simulated,
                reference=new_reference(),
                idempotency_key=idempotency_key,
                request_hash=digest,
            )
            s.add(top_up)
            s.flush()
            assert top_up.id is not None and top_up.reference is not None
            outbox.enqueue(s, kind=OUTBOX_TOP_UP, subject_id=top_up.id, reference=top_up.reference)
            return top_up, True

        top_up, created = ledger.run_in_transaction(session, record)
        top_up_id = top_up.id
        assert top_up_id is not None
        client_secret = None
        message = outbox.find(session, kind=OUTBOX_TOP_UP, subject_id=top_up_id)
        if message is not None and message.status == OUTBOX_PENDING:
            assert message.id is not None
            sent = outbox.process_now(session, gateway, self.policy, message.id)
            if sent is not None and isinstance(sent.result, PaymentIntent):
                client_secret = sent.result.client_secret
            top_up = _reload(session, top_up_id)
        if (
            client_secret is None
            and top_up.status in (TOP_UP_REQUIRES_PAYMENT, TOP_UP_FAILED)
            and top_up.provider_ref
        ):
            # A repeated request, or another node sent the call first: the payer still needs
            # the secret to pay.
            client_secret = self.client_secrets.get(top_up_id)
            if client_secret is None:
                client_secret = gateway.get_top_up(top_up.provider_ref).client_secret
        if client_secret is not None:
            self.client_secrets.put(top_up_id, client_secret)
        return top_up_public(top_up, client_secret), created

    def apply_webhook(
        self, session: Session, payload: bytes, signature: str | None
    ) -> webhooks.Applied:
        """Check a delivery's signature against the configured secrets; apply its event once."""
        event = webhooks.verify(
            payload, signature, list(self.webhook_secrets), self.webhook_tolerance_s
        )
        return webhooks.apply_event(session, event)

    # --- money back to payers -----------------------------------------------------------------

    def withdraw(
        self,
        *,
        session: Session,
        organization_id: int,
        request: WithdrawalCreate,
        idempotency_key: str,
    ) -> tuple[WithdrawalPublic, bool]:
        """Send unused wallet money back to the buyer's payments, newest first."""
        digest = request_hash({"amount_minor": request.amount_minor, "currency": request.currency})
        if self.gateway.simulated:
            raise Conflict(
                "Simulated money cannot be withdrawn; it never left a bank.",
                code="withdrawal_unavailable",
            )

        def work(s: Session) -> tuple[Withdrawal, bool]:
            found = s.exec(
                select(Withdrawal).where(
                    Withdrawal.organization_id == organization_id,
                    Withdrawal.idempotency_key == idempotency_key,
                )
            ).first()
            if (prior := replay(found, digest, "withdrawal")) is not None:
                return prior, False
            ledger.require_currency(s, request.currency)
            withdrawal = Withdrawal(
                organization_id=organization_id,
                currency=request.currency,
                amount_minor=request.amount_minor,
                idempotency_key=idempotency_key,
                request_hash=digest,
            )
            s.add(withdrawal)
            s.flush()
            refunds.refund_to_payments(
                s,
                organization_id=organization_id,
                currency=request.currency,
                amount_minor=request.amount_minor,
                provider=self.gateway.name,
                purpose=REFUND_FOR_WITHDRAWAL,
                count_max=self.refunds_max,
                withdrawal_id=withdrawal.id,
                require_all=True,
            )
            return withdrawal, True

        withdrawal, created = ledger.run_in_transaction(session, work)
        assert withdrawal.id is not None
        self.send_refunds(session, refunds.refunds_of(session, withdrawal_id=withdrawal.id))
        return refunds.withdrawal_public(session, withdrawal.id), created

    def lock_refundable_payments(self, s: Session, *, organization_id: int, currency: str) -> None:
        """Lock the payer's refundable payments now, before any ledger balance: the order in
        which a withdrawal takes them (payments, then the wallet's balance). Taken the other
        way round by a refund, the two deadlocked on PostgreSQL."""
        if not self.gateway.simulated:
            refunds.refundable_top_ups(
                s,
                organization_id=organization_id,
                currency=currency,
                provider=self.gateway.name,
                count_max=self.refunds_max,
            )

    def refund_order_to_payments(
        self, s: Session, *, organization_id: int, currency: str, amount_minor: int, refund_id: int
    ) -> list[PaymentRefund]:
        """Queue provider refunds of an order refund (inside the caller's transaction); none
        when the money was simulated. Whatever the payments cannot take back stays in the
        wallet."""
        if self.gateway.simulated:
            return []
        return refunds.refund_to_payments(
            s,
            organization_id=organization_id,
            currency=currency,
            amount_minor=amount_minor,
            provider=self.gateway.name,
            purpose=REFUND_FOR_ORDER,
            count_max=self.refunds_max,
            order_refund_id=refund_id,
        )

    def send_refunds(self, session: Session, sent: list[PaymentRefund]) -> None:
        """Send the refunds' provider calls now."""
        refunds.send_now(session, self.gateway, self.policy, sent)

    # --- money out to vendors -----------------------------------------------------------------

    def set_payout_account(
        self,
        *,
        session: Session,
        organization_id: int,
        viewer_organization_id: int,
        account_ref: str,
    ) -> PayoutAccountPublic:
        """Link (or replace) the vendor's connected account after the provider vouches for it."""
        return payouts.set_payout_account(
            session=session,
            gateway=self.gateway,
            organization_id=organization_id,
            viewer_organization_id=viewer_organization_id,
            account_ref=account_ref,
        )

    def pay_out(
        self, *, session: Session, organization_id: int | None = None
    ) -> list[PayoutPublic]:
        """Run payouts (balances of at least ``payout_minimum_minor``) and send their transfers
        now; the payouts as they stand afterwards."""
        created = payouts.run_payouts(
            session=session,
            gateway=self.gateway,
            minimum_minor=self.payout_minimum_minor,
            organization_id=organization_id,
        )
        out = []
        for payout in created:
            assert payout.id is not None
            message = outbox.find(session, kind=OUTBOX_TRANSFER, subject_id=payout.id)
            if message is not None and message.id is not None:
                outbox.process_now(session, self.gateway, self.policy, message.id)
            fresh = session.get(Payout, payout.id, populate_existing=True) or payout
            out.append(PayoutPublic.model_validate(fresh))
        return out

    def list_payouts(self, *, session: Session, organization_id: int) -> list[PayoutPublic]:
        """The organisation's payouts, newest first, one page of ``page_size_max``."""
        return payouts.list_payouts(
            session=session, organization_id=organization_id, limit=self.page_size_max
        )

    # --- provider calls -----------------------------------------------------------------------

    def retry_call(self, session: Session, message_id: int) -> outbox.Sent | None:
        """An administrator sends a failed provider call again (same key), at once."""
        outbox.retry(session, message_id)
        return outbox.process_now(session, self.gateway, self.policy, message_id)

    def send_due(self, session: Session) -> dict[str, int]:
        """Send the due provider calls, ``outbox_batch_max`` at most; counts of outcomes."""
        return outbox.process_due(session, self.gateway, self.policy, limit=self.outbox_batch_max)

    def reconcile(self, session: Session) -> reconciliation.ReconcileResult:
        """Bring open payments and refunds up to the provider's state; cancel stale ones."""
        return reconciliation.reconcile(
            session=session,
            gateway=self.gateway,
            batch_max=self.reconcile_batch_max,
            top_up_expiry_s=self.top_up_expiry_s,
        )
