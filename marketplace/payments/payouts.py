"""Vendor payouts: payable balances sent to vendors' connected accounts as provider transfers.

A payout run takes each vendor's available ``vendor_payable`` balance at or above the minimum,
holds it (pending transfer to ``payment_clearing``) and writes the transfer's outbox row in the
same transaction. The transfer carries a ``transfer_group`` naming the payout. When the provider
confirms, the hold is posted (the payout is ``paid``); when it refuses, the hold is voided (the
payout is ``failed`` and the money is payable again, for the next run).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session, select

from marketplace.accounts.models import Organization
from marketplace.audit import events as audit_events
from marketplace.db import lock_row, utcnow
from marketplace.errors import Forbidden, NotFound
from marketplace.ledger import services as ledger
from marketplace.ledger.errors import LimitExceeded
from marketplace.ledger.models import VENDOR_PAYABLE
from marketplace.payments import holds, outbox, provider_rows
from marketplace.payments.gateway import (
    PaymentGateway,
    ProviderRefused,
    ProviderTransfer,
    TransferRequest,
)
from marketplace.payments.models import (
    PAYOUT_FAILED,
    PAYOUT_PAID,
    PAYOUT_PENDING,
    Payout,
    PayoutAccount,
)
from marketplace.payments.schemas import PayoutAccountPublic, PayoutPublic

log = logging.getLogger(__name__)

PAYOUT_KIND = "payout"


def set_payout_account(
    *,
    session: Session,
    gateway: PaymentGateway,
    organization_id: int,
    viewer_organization_id: int,
    account_ref: str,
) -> PayoutAccountPublic:
    """Link (or replace) the vendor's connected account after the provider vouches for it."""
    org = session.get(Organization, organization_id)
    if org is None or organization_id != viewer_organization_id:
        raise NotFound("No such organisation.", code="organization_not_found")
    if not org.has_role("vendor"):
        raise Forbidden("Only vendors are paid out.", code="not_a_vendor")
    session.commit()  # no transaction stays open while the provider is asked
    gateway.check_payout_account(account_ref)

    def work(s: Session) -> PayoutAccount:
        row = s.get(PayoutAccount, organization_id, with_for_update=True)
        if row is None:
            row = PayoutAccount(
                organization_id=organization_id, provider=gateway.name, account_ref=account_ref
            )
        else:
            row.provider = gateway.name
            row.account_ref = account_ref
            row.updated_at = utcnow()
        s.add(row)
        return row

    row = ledger.run_in_transaction(session, work)
    return PayoutAccountPublic.model_validate(row)


def get_payout_account(*, session: Session, organization_id: int) -> PayoutAccount | None:
    return session.get(PayoutAccount, organization_id)


def run_payouts(
    *,
    session: Session,
    gateway: PaymentGateway,
    minimum_minor: int,
    organization_id: int | None = None,
) -> list[Payout]:
    """Hold every linked vendor's available payable balance (at least ``minimum_minor``) and
    queue its transfer; the new payouts (their transfers are sent by the outbox)."""
    accounts = session.exec(select(PayoutAccount).where(PayoutAccount.provider == gateway.name))
    linked = {a.organization_id: a.account_ref for a in accounts}
    if organization_id is not None:
        linked = {k: v for k, v in linked.items() if k == organization_id}
    candidates = [
        b
        for org_id in sorted(linked)
        for b in ledger.balances(session, organization_id=org_id)
        if b.code == VENDOR_PAYABLE and b.available >= max(minimum_minor, 1)
    ]
    created: list[Payout] = []
    for balance in candidates:
        assert balance.organization_id is not None
        destination = linked[balance.organization_id]

        def work(s: Session, balance: Any = balance, dest: str = destination) -> Payout | None:
            # Read again under the ledger's locks: another node's run may have held it since.
            (now,) = ledger.balances(s, account_ids=[balance.account_id])
            if now.available < max(minimum_minor, 1):
                return None
            payout = Payout(
                organization_id=balance.organization_id,
                currency=now.currency,
                amount_minor=now.available,
                status=PAYOUT_PENDING,
                provider=gateway.name,
                simulated=gateway.simulated,
                destination=dest,
            )
            holds.queue_outgoing(
                s,
                payout,
                kind=PAYOUT_KIND,
                from_account=balance.account_id,
                memo_to=dest + (" (simulated)" if gateway.simulated else ""),
            )
            audit_events.payout_changed(s, payout)
            return payout

        try:
            payout = ledger.run_in_transaction(session, work)
        except LimitExceeded:
            # A concurrent run on another node held the same money first.
            continue
        if payout is not None:
            created.append(payout)
    return created


def list_payouts(*, session: Session, organization_id: int, limit: int) -> list[PayoutPublic]:
    rows = session.exec(
        select(Payout)
        .where(Payout.organization_id == organization_id)
        .order_by(Payout.id.desc())  # type: ignore[union-attr]
        .limit(limit)
    ).all()
    return [PayoutPublic.model_validate(p) for p in rows]


def payout_metadata(payout: Payout) -> dict[str, str]:
    return {
        provider_rows.PAYOUT_ID_KEY: str(payout.id),
        provider_rows.REFERENCE_KEY: payout.reference,
        "jishi_organization_id": str(payout.organization_id),
    }


class TransferHandler:
    """Outbox rows that send a payout's transfer."""

    def prepare(self, session: Session, payout_id: int, key: str, /) -> outbox.ProviderCall:
        payout = session.get(Payout, payout_id)
        assert payout is not None
        request = TransferRequest.of(payout, idempotency_key=key, metadata=payout_metadata(payout))
        return lambda gateway: gateway.create_transfer(request)

    def record(self, session: Session, payout_id: int, transfer: ProviderTransfer, /) -> None:
        payout = lock_row(session, Payout, payout_id)
        if payout.status != PAYOUT_PENDING:
            return
        if transfer.amount_minor != payout.amount_minor or transfer.currency != payout.currency:
            # The provider moved what it moved; the reconciliation report shows the difference.
            log.error("payout %s: the transfer %s differs", payout.id, transfer.provider_ref)
        assert payout.hold_transaction_id is not None
        payout.provider_ref = transfer.provider_ref
        payout.resolve_transaction_id = holds.settle(
            session, hold_id=payout.hold_transaction_id, kind=PAYOUT_KIND
        )
        payout.status = PAYOUT_PAID
        payout.completed_at = utcnow()
        session.add(payout)
        audit_events.payout_changed(session, payout)

    def refused(self, session: Session, payout_id: int, error: ProviderRefused, /) -> None:
        payout = lock_row(session, Payout, payout_id)
        if payout.status != PAYOUT_PENDING:
            return
        assert payout.hold_transaction_id is not None
        payout.resolve_transaction_id = holds.release(
            session, hold_id=payout.hold_transaction_id, kind=PAYOUT_KIND
        )
        payout.status = PAYOUT_FAILED
        payout.failure_code = error.code[:64]
        payout.completed_at = utcnow()
        session.add(payout)
        audit_events.payout_changed(session, payout)
