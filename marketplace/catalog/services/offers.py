"""Offers: immutable licence terms of a listing, created and retired, never edited."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from marketplace.audit import events as audit_events
from marketplace.catalog.errors import OfferNotFound, OfferRetired
from marketplace.catalog.models import (
    Listing,
    Offer,
    terms_sha256,
)
from marketplace.catalog.schemas import (
    ListingDetail,
    OfferCreate,
    OfferPublic,
    OfferSummary,
)
from marketplace.catalog.services.listings import get_owned_listing, get_visible_listing
from marketplace.catalog.services.presenters import listing_detail, offer_public
from marketplace.db import begin_write, utcnow
from marketplace.ledger import services as ledger


def create_offer(
    *, session: Session, listing_id: int, organization_id: int, request: OfferCreate
) -> OfferPublic:
    """A new immutable offer; its ``terms_sha256`` is what buyers accept."""
    begin_write(session)
    get_owned_listing(session=session, listing_id=listing_id, organization_id=organization_id)
    # The ledger could not post a sale or royalty in it: refuse the offer, not the sale.
    ledger.require_currency(session, request.currency)
    row = Offer(listing_id=listing_id, terms_sha256="", **request.model_dump())
    row.terms_sha256 = terms_sha256(row)
    session.add(row)
    audit_events.offer_created(session, row)
    session.commit()
    return offer_public(row)


def list_offers(
    *, session: Session, listing_id: int, viewer_org_id: int | None, include_retired: bool
) -> list[OfferPublic]:
    listing = get_visible_listing(
        session=session, listing_id=listing_id, viewer_org_id=viewer_org_id
    )
    statement = select(Offer).where(Offer.listing_id == listing_id)
    if not (include_retired and listing.organization_id == viewer_org_id):
        statement = statement.where(col(Offer.retired_at).is_(None))
    return [offer_public(o) for o in session.exec(statement.order_by(col(Offer.id))).all()]


def retire_offer(
    *, session: Session, listing_id: int, offer_id: int, organization_id: int
) -> OfferPublic:
    """Retire an offer: no new trials or purchases; existing licences keep their terms."""
    begin_write(session)
    get_owned_listing(session=session, listing_id=listing_id, organization_id=organization_id)
    row = session.get(Offer, offer_id)
    if row is None or row.listing_id != listing_id:
        raise OfferNotFound("No such offer.")
    if row.retired_at is not None:
        raise OfferRetired("The offer is already retired.")
    row.retired_at = utcnow()
    session.add(row)
    audit_events.offer_retired(session, row)
    session.commit()
    return offer_public(row)


def offer_summaries(*, session: Session, listing_ids: Sequence[int]) -> dict[int, OfferSummary]:
    """For each listing: its cheapest active offer (lowest price, then royalty) and whether any
    active offer has a trial. Listings without active offers are absent."""
    if not listing_ids:
        return {}
    rows = session.exec(
        select(Offer)
        .where(col(Offer.listing_id).in_(list(listing_ids)), col(Offer.retired_at).is_(None))
        .order_by(col(Offer.price_minor), col(Offer.royalty_per_1k_minor), col(Offer.id))
    ).all()
    out: dict[int, OfferSummary] = {}
    for row in rows:
        trial = row.trial_calls > 0 or row.trial_days > 0
        found = out.get(row.listing_id)
        if found is None:
            out[row.listing_id] = OfferSummary(cheapest=offer_public(row), has_trial=trial)
        elif trial and not found.has_trial:
            found.has_trial = True
    return out


def vendor_listings(*, session: Session, organization_id: int) -> list[ListingDetail]:
    """Every listing of the vendor, suspended ones included, with all offers (retired too)."""
    rows = session.exec(
        select(Listing)
        .where(Listing.organization_id == organization_id)
        .order_by(col(Listing.created_at).desc(), col(Listing.id).desc())
    ).all()
    out = []
    for row in rows:
        detail = listing_detail(session, row)
        detail.offers = list_offers(
            session=session,
            listing_id=row.id or 0,
            viewer_org_id=organization_id,
            include_retired=True,
        )
        out.append(detail)
    return out
