"""Trials, purchases, licences and refunds. No Flask here; each function owns its unit of work.

What needs the platform's terms (the fee, page bounds, the payment provider) is a method of
:class:`LicensingService`, which ``init_app`` builds; the rest are plain functions.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from marketplace.accounts.errors import OrganizationNotVerified
from marketplace.accounts.models import Organization
from marketplace.audit import events as audit_events
from marketplace.catalog.errors import ListingSuspended
from marketplace.catalog.models import LISTING_ACTIVE, Listing, Offer
from marketplace.config import build_from_settings
from marketplace.db import epoch_hour, get_owned, hour_start, utcnow
from marketplace.errors import Conflict, NotFound, ValidationFailed
from marketplace.ledger import services as ledger
from marketplace.ledger.idempotency import replay, request_hash
from marketplace.ledger.money import royalty_due, split_fee, split_increment
from marketplace.licensing.models import (
    ORDER_PARTIALLY_REFUNDED,
    ORDER_REFUNDED,
    PER_INFERENCE,
    PERPETUAL,
    SUBSCRIPTION,
    TRIAL,
    License,
    Order,
    Refund,
    TermsAcceptance,
    Trial,
)
from marketplace.licensing.schemas import (
    HourlyAmount,
    LicensePublic,
    LicenseUsage,
    OrderListItem,
    OrderPage,
    OrderPublic,
    OrderQuery,
    RefundCreate,
    RefundPublic,
)
from marketplace.payments import refunds as payment_refunds

if TYPE_CHECKING:
    from marketplace.config import Settings
    from marketplace.payments.services import PaymentsService


def _offer_for_sale(session: Session, offer_id: int, organization_id: int) -> tuple[Offer, Listing]:
    offer = session.get(Offer, offer_id)
    listing = session.get(Listing, offer.listing_id) if offer is not None else None
    if offer is None or listing is None:
        raise NotFound("No such offer.", code="offer_not_found")
    if offer.retired_at is not None:
        raise Conflict("The offer is retired.", code="offer_retired")
    if listing.status != LISTING_ACTIVE:
        raise ListingSuspended("The listing is suspended.")
    if listing.organization_id == organization_id:
        raise Conflict("An organisation cannot license its own offer.", code="own_offer")
    return offer, listing


def _lock_purchases(session: Session, organization_id: int) -> None:
    """Take the lock that puts an organisation's purchases one after another (FOR NO KEY
    UPDATE of its row: rows that merely reference the organisation are not blocked)."""
    session.exec(
        select(Organization.id)
        .where(Organization.id == organization_id)
        .with_for_update(key_share=True)
    ).one()


def _check_terms(offer: Offer, accept_terms_sha256: str) -> None:
    if accept_terms_sha256 != offer.terms_sha256:
        raise Conflict(
            "The accepted terms are not the offer's current terms; fetch the offer again.",
            code="terms_mismatch",
            extra={"terms_sha256": offer.terms_sha256},
        )


def _accept(
    session: Session, organization_id: int, offer: Offer, purpose: str, client_id: str
) -> None:
    assert offer.id is not None
    acceptance = TermsAcceptance(
        organization_id=organization_id,
        offer_id=offer.id,
        terms_sha256=offer.terms_sha256,
        purpose=purpose,
        client_id=client_id,
    )
    session.add(acceptance)
    audit_events.terms_accepted(session, acceptance)


def license_status(lic: License, now: dt.datetime | None = None) -> str:
    now = now or utcnow()
    if lic.revoked_at is not None:
        return "revoked"
    if lic.expires_at is not None and lic.expires_at <= now:
        return "expired"
    if lic.kind == TRIAL and lic.calls_remaining is not None and lic.calls_remaining <= 0:
        return "exhausted"
    return "active"


def license_public(lic: License) -> LicensePublic:
    r = lic.royalty_per_1k_minor
    usage = LicenseUsage(
        calls_used=lic.calls_used,
        calls_settled=lic.calls_settled,
        calls_unsettled=lic.calls_used - lic.calls_settled,
        royalty_per_1k_minor=r,
        accrued_minor=royalty_due(lic.calls_used, r),
        settled_minor=royalty_due(lic.calls_settled, r),
        unsettled_minor=royalty_due(lic.calls_used, r) - royalty_due(lic.calls_settled, r),
    )
    return LicensePublic.model_validate(
        {**lic.model_dump(), "status": license_status(lic), "usage": usage}
    )


# --- Trials -----------------------------------------------------------------------------------


def start_trial(
    *,
    session: Session,
    organization_id: int,
    offer_id: int,
    accept_terms_sha256: str,
    client_id: str,
) -> LicensePublic:
    """Grant the offer's trial (``trial_calls`` calls, ``trial_days`` days) once per organisation."""

    def work(s: Session) -> License:
        offer, listing = _offer_for_sale(s, offer_id, organization_id)
        _check_terms(offer, accept_terms_sha256)
        if offer.trial_calls <= 0 and offer.trial_days <= 0:
            raise Conflict("This offer has no trial.", code="no_trial")
        if offer.trial_requires_verified_org:
            org = s.get(Organization, organization_id)
            if org is None or not org.verified:
                raise OrganizationNotVerified(
                    "This offer's trial is for organisations the platform has verified."
                )
        taken = s.exec(
            select(Trial).where(
                Trial.organization_id == organization_id, Trial.offer_id == offer_id
            )
        ).first()
        if taken is not None:
            raise Conflict("Your organisation already had this offer's trial.", code="trial_taken")
        now = utcnow()
        lic = License(
            organization_id=organization_id,
            offer_id=offer_id,
            listing_id=listing.id,  # type: ignore[arg-type]
            vendor_organization_id=listing.organization_id,
            kind=TRIAL,
            currency=offer.currency,
            expires_at=now + dt.timedelta(days=offer.trial_days) if offer.trial_days > 0 else None,
            calls_remaining=offer.trial_calls if offer.trial_calls > 0 else None,
            created_at=now,
        )
        s.add(lic)
        s.flush()
        assert lic.id is not None
        s.add(Trial(organization_id=organization_id, offer_id=offer_id, license_id=lic.id))
        _accept(s, organization_id, offer, "trial", client_id)
        s.flush()  # the unique (organisation, offer) constraint settles a race of two requests
        audit_events.trial_started(s, lic)
        return lic

    return license_public(ledger.run_in_transaction(session, work))


# --- Purchases --------------------------------------------------------------------------------


# --- Licences ---------------------------------------------------------------------------------


def list_licenses(*, session: Session, organization_id: int) -> list[LicensePublic]:
    rows = session.exec(
        select(License).where(License.organization_id == organization_id).order_by(License.id)  # type: ignore[arg-type]
    ).all()
    return [license_public(lic) for lic in rows]


def licensed_listing_names(*, session: Session, organization_id: int) -> dict[int, str]:
    """Names of the listings the organisation holds (or held) licences for, by listing id."""
    rows = session.exec(
        select(Listing.id, Listing.name)
        .join(License, col(License.listing_id) == col(Listing.id))
        .where(License.organization_id == organization_id)
        .distinct()
    ).all()
    return {int(i or 0): name for i, name in rows}


def suspended_for_licensee(
    *, session: Session, organization_id: int, listing_id: int
) -> str | None:
    """The name of the listing when it is suspended and the organisation holds or held a licence
    for it (so it may learn why its calls are refused), else None.

    Everyone else learns nothing of a suspended listing, as the catalog's visibility rule says.
    """
    found = session.exec(
        select(Listing.name, Listing.status)
        .join(License, col(License.listing_id) == col(Listing.id))
        .where(Listing.id == listing_id, License.organization_id == organization_id)
    ).first()
    if found is None or found[1] == LISTING_ACTIVE:
        return None
    return str(found[0])


def get_license(*, session: Session, organization_id: int, license_id: int) -> LicensePublic:
    """One of the organisation's licences; another organisation's id is simply not found."""
    missing = NotFound("No such licence.", code="license_not_found")
    return license_public(get_owned(session, License, license_id, organization_id, missing))


# --- Orders ---------------------------------------------------------------------------------


def sales_by_hour(
    *, session: Session, vendor_organization_id: int, since: dt.datetime
) -> list[HourlyAmount]:
    """The vendor's sales per hour since ``since``: order count and gross amount, per currency."""
    hour = epoch_hour(col(Order.created_at))
    rows = session.exec(
        select(hour, Order.currency, sa.func.count(), sa.func.sum(Order.amount_minor))
        .where(
            Order.vendor_organization_id == vendor_organization_id,
            col(Order.created_at) >= since,
        )
        .group_by(hour, Order.currency)
        .order_by(hour)
    ).all()
    return [
        HourlyAmount(hour=hour_start(h), currency=c, count=int(n), amount_minor=int(total or 0))
        for h, c, n, total in rows
    ]


# --- Refunds ----------------------------------------------------------------------------------


def _rechain_subscription(session: Session, organization_id: int, offer_id: int) -> None:
    """Recompute the expiries of an organisation's standing subscription terms of one offer.

    A renewal bought before the current term ends starts where that term ends, so expiries
    chain. When a term is refunded (its licence revoked) the terms after it move up: each
    standing licence runs ``term_days`` from the later of its purchase and the end of the
    standing term before it. Only licences not yet revoked count.
    """
    offer = session.get(Offer, offer_id)
    if offer is None or not offer.term_days:
        return
    term = dt.timedelta(days=offer.term_days)
    # A renewal bought meanwhile waits, then chains onto the recomputed terms.
    _lock_purchases(session, organization_id)
    standing = session.exec(
        select(License)
        .where(
            License.organization_id == organization_id,
            License.offer_id == offer_id,
            License.kind == SUBSCRIPTION,
            License.revoked_at.is_(None),  # type: ignore[union-attr]
        )
        .order_by(License.created_at, License.id)  # type: ignore[arg-type]
    ).all()
    previous_end: dt.datetime | None = None
    for lic in standing:
        start = lic.created_at if previous_end is None else max(lic.created_at, previous_end)
        if lic.expires_at != start + term:
            lic.expires_at = start + term
            session.add(lic)
        previous_end = lic.expires_at


@dataclass(frozen=True)
class LicensingService:
    """Purchases, order lists and refunds on the platform's terms, built once by ``init_app``.

    ``platform_fee_bps`` is the platform's share of a sale; ``page_size_max`` bounds a page of
    orders; ``payments`` sends refunded money back to the buyer's payments (without it, all of
    it stays in the wallet). The API and the pages call it without handing settings over.
    """

    platform_fee_bps: int
    page_size_max: int
    payments: PaymentsService | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, payments: PaymentsService | None
    ) -> LicensingService:
        return build_from_settings(cls, settings, payments=payments)

    def purchase(
        self,
        *,
        session: Session,
        organization_id: int,
        offer_id: int,
        accept_terms_sha256: str,
        idempotency_key: str,
        client_id: str,
    ) -> tuple[OrderPublic, bool]:
        """Buy an offer: one ledger transaction moves the price from the buyer's wallet to the
        vendor's payable and the platform's revenue, and the licence is issued with the order.

        Returns the order and whether it was created now (False: the key was seen before).
        """
        digest = request_hash({"offer_id": offer_id, "accept_terms_sha256": accept_terms_sha256})
        platform_fee_bps = self.platform_fee_bps

        def work(s: Session) -> tuple[Order, bool]:
            # One purchase per buyer at a time: a twin request with the same key waits here for
            # the first to commit and then finds its order, instead of racing it into checks such
            # as "already licensed" that the first one's licence would fail.
            _lock_purchases(s, organization_id)
            found = s.exec(
                select(Order).where(
                    Order.organization_id == organization_id,
                    Order.idempotency_key == idempotency_key,
                )
            ).first()
            if (prior := replay(found, digest, "purchase")) is not None:
                return prior, False
            offer, listing = _offer_for_sale(s, offer_id, organization_id)
            _check_terms(offer, accept_terms_sha256)
            now = utcnow()
            expires_at = None
            if offer.kind in (PERPETUAL, PER_INFERENCE):
                held = s.exec(
                    select(License.id).where(
                        License.organization_id == organization_id,
                        License.offer_id == offer_id,
                        License.kind == offer.kind,
                        License.revoked_at.is_(None),  # type: ignore[union-attr]
                    )
                ).first()
                if held is not None:
                    raise Conflict(
                        "Your organisation already holds this licence.", code="already_licensed"
                    )
            elif offer.kind == SUBSCRIPTION:
                if not offer.term_days or offer.term_days <= 0:
                    raise ValidationFailed("The subscription has no term.", code="offer_invalid")
                # A renewal bought before the current term ends extends it.
                latest = s.exec(
                    select(sa.func.max(License.expires_at)).where(
                        License.organization_id == organization_id,
                        License.offer_id == offer_id,
                        License.revoked_at.is_(None),  # type: ignore[union-attr]
                    )
                ).one()
                start = max(now, latest) if latest is not None else now
                expires_at = start + dt.timedelta(days=offer.term_days)
            else:
                raise ValidationFailed(f"Unknown offer kind {offer.kind!r}.", code="offer_invalid")

            transaction_id = None
            if offer.price_minor > 0:
                legs = ledger.sale_legs(
                    s,
                    buyer_organization_id=organization_id,
                    vendor_organization_id=listing.organization_id,
                    currency=offer.currency,
                    split=split_fee(offer.price_minor, platform_fee_bps),
                )
                (tx,) = ledger.apply_transfers(
                    s,
                    [
                        ledger.Transfer(
                            idempotency_key=f"order:{organization_id}:{idempotency_key}",
                            kind="purchase",
                            legs=legs,
                            memo=f"offer {offer_id}",
                        )
                    ],
                )
                transaction_id = tx.id
            # What the licence and its order both record of the sale.
            sale: dict[str, Any] = {
                "organization_id": organization_id,
                "offer_id": offer_id,
                "vendor_organization_id": listing.organization_id,
                "currency": offer.currency,
                "platform_fee_bps": platform_fee_bps,
                "created_at": now,
            }
            lic = License(
                **sale,
                listing_id=listing.id,  # type: ignore[arg-type]
                kind=offer.kind,
                royalty_per_1k_minor=offer.royalty_per_1k_minor
                if offer.kind == PER_INFERENCE
                else 0,
                expires_at=expires_at,
            )
            s.add(lic)
            s.flush()
            order = Order(
                **sale,
                amount_minor=offer.price_minor,
                idempotency_key=idempotency_key,
                request_hash=digest,
                ledger_transaction_id=transaction_id,
                license_id=lic.id,
            )
            s.add(order)
            _accept(s, organization_id, offer, "purchase", client_id)
            s.flush()
            audit_events.license_granted(s, lic, order)
            return order, True

        order, created = ledger.run_in_transaction(session, work)
        return OrderPublic.model_validate(order), created

    def list_orders(
        self, *, session: Session, organization_id: int, query: OrderQuery
    ) -> OrderPage:
        """The organisation's purchases (``role=buyer``), sales (``vendor``) or both, newest first.

        Only orders the organisation is a party to are read: its own purchases, and sales of its
        own offers.
        """
        page_size = min(query.page_size, self.page_size_max)
        bought = col(Order.organization_id) == organization_id
        sold = col(Order.vendor_organization_id) == organization_id
        where = {"buyer": bought, "vendor": sold, None: sa.or_(bought, sold)}[query.role]
        total = session.exec(select(sa.func.count()).select_from(Order).where(where)).one()
        rows = session.exec(
            select(Order, Listing.id, Listing.name)
            .join(Offer, col(Offer.id) == col(Order.offer_id))
            .join(Listing, col(Listing.id) == col(Offer.listing_id))
            .where(where)
            .order_by(col(Order.created_at).desc(), col(Order.id).desc())
            .offset((query.page - 1) * page_size)
            .limit(page_size)
        ).all()
        items = [
            OrderListItem.model_validate(
                {
                    **order.model_dump(),
                    "role": "buyer" if order.organization_id == organization_id else "vendor",
                    "listing_id": listing_id or 0,
                    "listing_name": listing_name,
                    "buyer_organization_id": order.organization_id,
                }
            )
            for order, listing_id, listing_name in rows
        ]
        return OrderPage(items=items, total=int(total), page=query.page, page_size=page_size)

    def refund_order(
        self, *, session: Session, order_id: int, request: RefundCreate, idempotency_key: str
    ) -> tuple[RefundPublic, bool]:
        """Refund all or part of an order by a reversing ledger transaction; the refund, and
        whether this call made it (False: a replay of the same key and body).

        Refunds are split with the same largest-remainder rule on the cumulative amount refunded,
        so a full refund in any number of parts returns exactly the original vendor share and fee.
        A full refund revokes the licence. Vendor money already paid out cannot be refunded (409).

        With a gateway that moves real money, the refunded amount then goes back to the buyer's
        payments (newest first, never beyond what each captured minus its earlier refunds) in the
        same transaction; whatever they cannot take back stays in the wallet.
        """
        digest = request_hash({"amount_minor": request.amount_minor, "reason": request.reason})

        def work(s: Session) -> tuple[Refund, bool]:
            order = s.get(Order, order_id, with_for_update=True, populate_existing=True)
            if order is None:
                raise NotFound("No such order.", code="order_not_found")
            found = s.exec(
                select(Refund).where(
                    Refund.order_id == order_id, Refund.idempotency_key == idempotency_key
                )
            ).first()
            if (prior := replay(found, digest, "refund")) is not None:
                return prior, False
            left = order.amount_minor - order.refunded_minor
            amount = left if request.amount_minor is None else request.amount_minor
            if amount <= 0 or amount > left:
                raise Conflict(
                    f"At most {left} minor units of this order can be refunded.",
                    code="refund_exceeds_order",
                )
            if self.payments is not None:
                self.payments.lock_refundable_payments(
                    s, organization_id=order.organization_id, currency=order.currency
                )
            legs = ledger.sale_legs(
                s,
                buyer_organization_id=order.organization_id,
                vendor_organization_id=order.vendor_organization_id,
                currency=order.currency,
                # Split the running refunded total so that the parts of a full refund in several
                # steps add up to exactly the original vendor share and fee.
                split=split_increment(
                    order.refunded_minor, order.refunded_minor + amount, order.platform_fee_bps
                ),
                refund=True,
            )
            (tx,) = ledger.apply_transfers(
                s,
                [
                    ledger.Transfer(
                        idempotency_key=f"refund:{order_id}:{idempotency_key}",
                        kind="refund",
                        legs=legs,
                        reverses_id=order.ledger_transaction_id,
                        memo=(request.reason or f"refund of order {order_id}")[:200],
                    )
                ],
            )
            order.refunded_minor += amount
            order.status = (
                ORDER_REFUNDED
                if order.refunded_minor == order.amount_minor
                else ORDER_PARTIALLY_REFUNDED
            )
            s.add(order)
            if order.status == ORDER_REFUNDED and order.license_id is not None:
                lic = s.get(License, order.license_id)
                if lic is not None and lic.revoked_at is None:
                    lic.revoked_at = utcnow()
                    s.add(lic)
                    if lic.kind == SUBSCRIPTION:
                        _rechain_subscription(s, lic.organization_id, lic.offer_id)
            refund = Refund(
                order_id=order_id,
                amount_minor=amount,
                currency=order.currency,
                reason=request.reason,
                idempotency_key=idempotency_key,
                request_hash=digest,
                ledger_transaction_id=tx.id,
            )
            s.add(refund)
            s.flush()
            if self.payments is not None:
                assert refund.id is not None
                self.payments.refund_order_to_payments(
                    s,
                    organization_id=order.organization_id,
                    currency=order.currency,
                    amount_minor=amount,
                    refund_id=refund.id,
                )
            audit_events.refund_issued(s, refund, order)
            return refund, True

        refund, created = ledger.run_in_transaction(session, work)
        assert refund.id is not None
        sent = payment_refunds.refunds_of(session, order_refund_id=refund.id)
        if self.payments is not None and sent:
            self.payments.send_refunds(session, sent)
            sent = payment_refunds.refunds_of(session, order_refund_id=refund.id)
        order = session.get(Order, order_id, populate_existing=True)
        assert order is not None
        public = RefundPublic.model_validate(
            {
                **refund.model_dump(),
                "order": OrderPublic.model_validate(order),
                "payment_refunds": payment_refunds.payment_refunds_public(sent, session),
                "to_wallet_minor": refund.amount_minor - sum(r.amount_minor for r in sent),
            }
        )
        return public, created
