"""Reconciliation: ask the provider about open payments and refunds, and compare both sides.

:func:`reconcile` is the safety net for webhooks that never come: it retrieves open payments
and pending refunds (least recently checked first, a bounded batch per pass) and applies what
the provider says through the same monotonic functions the webhooks use.

:func:`report` compares every record of ours with the provider's object, checks the ledger's
invariants, and lists objects at the provider that carry our metadata but have no record of
ours (what a lost commit would leave). An empty ``mismatches`` list means both sides agree.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from marketplace.db import utcnow
from marketplace.ledger import services as ledger
from marketplace.payments import provider_rows, refunds, services
from marketplace.payments.gateway import (
    INTENT_CANCELED,
    INTENT_SUCCEEDED,
    REFUND_FAILED,
    REFUND_PENDING,
    REFUND_SUCCEEDED,
    PaymentGateway,
    ProviderConflict,
    ProviderRefused,
    ProviderUnavailable,
    metadata_id,
)
from marketplace.payments.models import (
    OUTBOX_FAILED,
    PAYOUT_FAILED,
    PAYOUT_PAID,
    TOP_UP_CANCELED,
    TOP_UP_SUCCEEDED,
    PaymentOutbox,
    PaymentRefund,
    Payout,
    TopUp,
    payment_refunds_t,
    top_ups_t,
)

log = logging.getLogger(__name__)


PROVIDER_OBJECTS_MAX = 100_000  # objects listed per kind by one report


@dataclass
class ReconcileResult:
    """One pass: rows the provider answered for, rows whose status that changed, rows it could
    not be asked about (left for the next pass), and top-ups expired unpaid."""

    checked: int = 0
    changed: int = 0
    unavailable: int = 0
    expired: int = 0


def reconcile(
    *,
    session: Session,
    gateway: PaymentGateway,
    batch_max: int,
    top_up_expiry_s: float = 0,
) -> ReconcileResult:
    """Bring open top-ups and pending refunds up to the provider's state, and queue the
    cancellation of top-ups unpaid for ``top_up_expiry_s`` (0: never)."""
    result = ReconcileResult()
    if gateway.simulated:
        return result
    t = top_ups_t.c
    _update(
        session,
        result,
        top_ups_t,
        t.status.in_(services.OPEN_TOP_UP_STATUSES),
        # The least recently asked first, so that every open payment gets its turn.
        order_by=(sa.case((t.checked_at.is_(None), 0), else_=1), t.checked_at, t.id),
        provider=gateway.name,
        limit=batch_max,
        ask=gateway.get_top_up,
        apply=_apply_intent,
    )
    # After the poll, so that a payment made at the last moment is credited, not canceled.
    if top_up_expiry_s > 0:
        result.expired = services.expire_top_ups(
            session=session, provider=gateway.name, expiry_s=top_up_expiry_s, batch_max=batch_max
        )
    r = payment_refunds_t.c
    _update(
        session,
        result,
        payment_refunds_t,
        r.status == REFUND_PENDING,
        order_by=(r.id,),
        provider=gateway.name,
        limit=batch_max,
        ask=gateway.get_refund,
        apply=_apply_refund,
    )
    return result


def _update(
    session: Session,
    result: ReconcileResult,
    rows_t: sa.Table,
    open_state: Any,
    *,
    order_by: tuple[Any, ...],
    provider: str,
    limit: int,
    ask: Callable[[str], Any],
    apply: Callable[[Session, int, Any], str],
) -> None:
    """Ask the provider about up to ``limit`` of its rows in ``rows_t`` that are in
    ``open_state`` and apply each answer in a transaction of its own; a row the provider could
    not be asked about waits for the next pass."""
    c = rows_t.c
    rows = session.execute(
        sa.select(c.id, c.provider_ref, c.status)
        .where(c.provider == provider, open_state, c.provider_ref.is_not(None))
        .order_by(*order_by)
        .limit(limit)
    ).all()
    session.commit()
    what = rows_t.name
    for row_id, provider_ref, status in rows:
        try:
            reported = ask(provider_ref)
        except (ProviderUnavailable, ProviderRefused, ProviderConflict) as exc:
            log.warning("reconcile: %s %s: %s", what, row_id, exc)
            result.unavailable += 1
            continue
        result.checked += 1

        def work(s: Session, row_id: int = row_id, reported: Any = reported) -> str:
            return apply(s, row_id, reported)

        if ledger.run_in_transaction(session, work) != status:
            result.changed += 1


def _apply_intent(s: Session, top_up_id: int, intent: Any) -> str:
    top_up = services.apply_intent(s, top_up_id, intent)
    top_up.checked_at = utcnow()
    s.add(top_up)
    return top_up.status


def _apply_refund(s: Session, refund_id: int, found: Any) -> str:
    return refunds.apply_refund(s, refund_id, found).status


@dataclass
class Report:
    checked: dict[str, int] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.checked.items()))
        out = [f"checked {counts or 'nothing'}"]
        out += [f"in flight: {line}" for line in self.in_flight]
        out += [f"MISMATCH: {line}" for line in self.mismatches]
        out.append(f"{len(self.mismatches)} mismatches")
        return out


def report(*, session: Session, gateway: PaymentGateway) -> Report:
    """Compare our records with the provider's objects; every difference is a mismatch line."""
    rep = Report()
    rep.mismatches += [f"ledger: {p}" for p in ledger.check_invariants(session)]
    for message in session.exec(
        select(PaymentOutbox).where(PaymentOutbox.status == OUTBOX_FAILED)
    ).all():
        rep.mismatches.append(
            f"outbox {message.id} ({message.kind} {message.subject_id}) failed and waits for a "
            f"retry: {message.last_error}"
        )
    if gateway.simulated:
        return rep

    def ask(what: str, fn: Callable[[str], Any], ref: str) -> Any:
        try:
            return fn(ref)
        except (ProviderUnavailable, ProviderRefused, ProviderConflict) as exc:
            rep.mismatches.append(f"{what}: the provider could not be asked: {exc}")
            return None

    top_ups = session.exec(
        select(TopUp).where(TopUp.provider == gateway.name, TopUp.simulated == sa.false())
    ).all()
    rep.checked["top-ups"] = len(top_ups)
    refunded: dict[int, int] = {}
    for refund in session.exec(
        select(PaymentRefund).where(PaymentRefund.provider == gateway.name)
    ).all():
        if refund.status != REFUND_FAILED:
            refunded[refund.top_up_id] = refunded.get(refund.top_up_id, 0) + refund.amount_minor
    for top_up in top_ups:
        what = f"top-up {top_up.id}"
        if refunded.get(top_up.id or 0, 0) != top_up.refunded_minor:
            rep.mismatches.append(
                f"{what}: refunded_minor {top_up.refunded_minor} but its refunds add up to "
                f"{refunded.get(top_up.id or 0, 0)}"
            )
        if top_up.provider_ref is None:
            if top_up.status != TOP_UP_SUCCEEDED and top_up.status != TOP_UP_CANCELED:
                rep.in_flight.append(f"{what}: {top_up.status}, payment not created yet")
            continue
        intent = ask(what, gateway.get_top_up, top_up.provider_ref)
        if intent is None:
            continue
        if (intent.amount_minor, intent.currency) != (top_up.amount_minor, top_up.currency):
            rep.mismatches.append(
                f"{what}: {top_up.amount_minor} {top_up.currency} here, "
                f"{intent.amount_minor} {intent.currency} at the provider"
            )
        paid_there = intent.status == INTENT_SUCCEEDED
        if paid_there != (top_up.status == TOP_UP_SUCCEEDED):
            rep.mismatches.append(
                f"{what}: {top_up.status} here, {intent.status} at the provider "
                f"({intent.provider_ref})"
            )
        elif (intent.status == INTENT_CANCELED) != (top_up.status == TOP_UP_CANCELED):
            rep.mismatches.append(f"{what}: {top_up.status} here, {intent.status} there")
        if top_up.status == TOP_UP_SUCCEEDED and top_up.ledger_transaction_id is None:
            rep.mismatches.append(f"{what}: succeeded without a ledger transaction")

    payouts = session.exec(select(Payout).where(Payout.provider == gateway.name)).all()
    rep.checked["payouts"] = len(payouts)
    for payout in payouts:
        what = f"payout {payout.id}"
        if payout.status == PAYOUT_PAID:
            assert payout.provider_ref is not None
            transfer = ask(what, gateway.get_transfer, payout.provider_ref)
            if transfer is None:
                continue
            if (transfer.amount_minor, transfer.currency, transfer.destination) != (
                payout.amount_minor,
                payout.currency,
                payout.destination,
            ):
                rep.mismatches.append(
                    f"{what}: {payout.amount_minor} {payout.currency} to {payout.destination} "
                    f"here, {transfer.amount_minor} {transfer.currency} to "
                    f"{transfer.destination} at the provider"
                )
            if transfer.reversed_minor:
                rep.mismatches.append(
                    f"{what}: {transfer.reversed_minor} reversed at the provider, not here"
                )
        elif payout.status != PAYOUT_FAILED:
            rep.in_flight.append(f"{what}: {payout.status}")

    payment_refunds = session.exec(
        select(PaymentRefund).where(PaymentRefund.provider == gateway.name)
    ).all()
    rep.checked["refunds"] = len(payment_refunds)
    top_up_refs = {t.id: t.provider_ref for t in top_ups}
    for refund in payment_refunds:
        what = f"refund {refund.id}"
        if refund.provider_ref is None:
            if refund.status == REFUND_PENDING:
                rep.in_flight.append(f"{what}: not sent yet")
            continue
        found = ask(what, gateway.get_refund, refund.provider_ref)
        if found is None:
            continue
        if found.amount_minor != refund.amount_minor:
            rep.mismatches.append(
                f"{what}: {refund.amount_minor} here, {found.amount_minor} at the provider"
            )
        if found.payment_ref != top_up_refs.get(refund.top_up_id):
            rep.mismatches.append(f"{what}: refunds {found.payment_ref} at the provider")
        if found.status != refund.status:
            (rep.in_flight if found.status == REFUND_PENDING else rep.mismatches).append(
                f"{what}: {refund.status} here, {found.status} at the provider"
            )
        elif found.status == REFUND_SUCCEEDED and refund.resolve_transaction_id is None:
            rep.mismatches.append(f"{what}: succeeded without posting its hold")

    _unrecorded(session, gateway, rep)
    return rep


def _refund_made_elsewhere(session: Session, obj: Any, rep: Report) -> None:
    """A refund of one of our payments that we did not ask for (from the provider's dashboard):
    the money went back to the card while the wallet still holds it, and the payment can give
    back less than we record. An operator settles it; until then it is reported."""
    payment = obj.get("payment_intent")
    if not isinstance(payment, str) or obj.get("status") == "failed":
        return
    top_up = session.exec(select(TopUp).where(TopUp.provider_ref == payment)).first()
    if top_up is not None:
        rep.mismatches.append(
            f"refund {obj.get('id')} of {obj.get('amount')} at the provider gave back part of "
            f"top-up {top_up.id} ({payment}) and no refund here records it: the wallet still "
            "holds that money"
        )


def _unrecorded(session: Session, gateway: PaymentGateway, rep: Report) -> None:
    """Provider objects that carry our metadata but that no record of ours points to."""
    list_objects = getattr(gateway, "list_objects", None)
    if list_objects is None:
        return
    oldest = [
        session.exec(select(sa.func.min(model.created_at))).one()  # type: ignore[attr-defined]
        for model in (TopUp, Payout, PaymentRefund)
    ]
    known = [t for t in oldest if t is not None]
    if not known:
        return
    # A day of slack for clocks; the provider's "created" is its own clock.
    since = int((min(known) - dt.timedelta(days=1)).timestamp())
    tables: dict[str, tuple[str, Any]] = {
        "payment_intents": (provider_rows.TOP_UP_ID_KEY, TopUp),
        "transfers": (provider_rows.PAYOUT_ID_KEY, Payout),
        "refunds": (provider_rows.REFUND_ID_KEY, PaymentRefund),
    }
    for kind, (id_key, model) in tables.items():
        try:
            objects = list_objects(kind, created_gte=since, limit_max=PROVIDER_OBJECTS_MAX)
        except (ProviderUnavailable, ProviderRefused, ProviderConflict) as exc:
            rep.mismatches.append(f"{kind}: the provider could not list them: {exc}")
            continue
        rep.checked[f"provider {kind}"] = len(objects)
        for obj in objects:
            metadata = {str(k): str(v) for k, v in dict(obj.get("metadata") or {}).items()}
            if metadata_id(metadata, id_key) is None:
                if kind == "refunds":
                    _refund_made_elsewhere(session, obj, rep)
                continue
            row = provider_rows.row_named(session, model, metadata, id_key)
            if row is None:
                continue  # another installation's object on a shared account
            if row.provider_ref != obj["id"]:
                rep.mismatches.append(
                    f"{kind[:-1].replace('_', ' ')} {obj['id']} at the provider belongs to "
                    f"{model.__tablename__} {row.id}, which records {row.provider_ref}"
                )
