"""Listings: create, read, update, suspend, search, and the pages' groupings of them."""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from marketplace.accounts.models import Organization
from marketplace.audit import events as audit_events
from marketplace.catalog.errors import (
    ListingNotFound,
    NotAVendor,
)
from marketplace.catalog.markdown import render_model_card
from marketplace.catalog.models import (
    LISTING_ACTIVE,
    LISTING_SUSPENDED,
    Listing,
)
from marketplace.catalog.schemas import (
    Facets,
    ListingCreate,
    ListingDetail,
    ListingPage,
    ListingPublic,
    ListingQuery,
    ListingUpdate,
    VendorPublic,
)
from marketplace.catalog.services.presenters import listing_detail, listing_public
from marketplace.db import begin_write, utcnow
from marketplace.errors import Conflict

SORTS: dict[str, Any] = {
    "newest": (col(Listing.created_at).desc(), col(Listing.id).desc()),
    "oldest": (col(Listing.created_at).asc(), col(Listing.id).asc()),
    "name": (col(Listing.name).asc(), col(Listing.id).asc()),
    "updated": (col(Listing.updated_at).desc(), col(Listing.id).desc()),
}


def _join_tags(tags: Sequence[str]) -> str:
    return "," + ",".join(tags) + ("," if tags else "")


def _slug_base(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:60].strip("-")
    return slug or "model"


def _require_vendor(session: Session, organization_id: int) -> Organization:
    org = session.get(Organization, organization_id)
    if org is None or not org.has_role("vendor"):
        raise NotAVendor("Only a vendor organisation may publish models.")
    return org


def create_listing(
    *, session: Session, organization_id: int, request: ListingCreate
) -> ListingPublic:
    """A new active listing owned by the vendor ``organization_id``."""
    begin_write(session)
    _require_vendor(session, organization_id)
    base = _slug_base(request.name)
    for attempt in range(5):
        slug = base if attempt == 0 else f"{base}-{secrets.token_hex(3)}"
        taken = session.exec(select(Listing.id).where(Listing.slug == slug)).first()
        if taken is not None:
            continue
        row = Listing.model_validate(
            request,
            update={
                "organization_id": organization_id,
                "slug": slug,
                "description_html": render_model_card(request.description_md),
                "tags": _join_tags(request.tags),
            },
        )
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()  # a concurrent listing took the slug; try another
            continue
        return listing_public(session, row)
    raise Conflict("Could not find a free slug; try another name.", code="slug_taken")


def _get_listing(session: Session, listing_id: int) -> Listing:
    row = session.get(Listing, listing_id)
    if row is None:
        raise ListingNotFound("No such model.")
    return row


def get_visible_listing(*, session: Session, listing_id: int, viewer_org_id: int | None) -> Listing:
    """The listing if the viewer may see it (active, or the viewer owns it); 404 otherwise."""
    row = _get_listing(session, listing_id)
    if row.status != LISTING_ACTIVE and row.organization_id != viewer_org_id:
        raise ListingNotFound("No such model.")
    return row


def get_owned_listing(*, session: Session, listing_id: int, organization_id: int) -> Listing:
    """The listing if ``organization_id`` owns it; 404 for everyone else."""
    row = _get_listing(session, listing_id)
    if row.organization_id != organization_id:
        raise ListingNotFound("No such model.")
    _require_vendor(session, organization_id)
    return row


def get_listing_detail(
    *, session: Session, listing_id: int, viewer_org_id: int | None
) -> ListingDetail:
    row = get_visible_listing(session=session, listing_id=listing_id, viewer_org_id=viewer_org_id)
    return listing_detail(session, row)


def update_listing(
    *, session: Session, listing_id: int, organization_id: int, request: ListingUpdate
) -> ListingDetail:
    """Change the listing's descriptive fields (owner only)."""
    begin_write(session)
    row = get_owned_listing(session=session, listing_id=listing_id, organization_id=organization_id)
    changes = request.model_dump(exclude_unset=True)
    for field in ("name", "summary", "task"):
        if changes.get(field) is not None:
            setattr(row, field, changes[field])
    if changes.get("description_md") is not None:
        row.description_md = changes["description_md"]
        row.description_html = render_model_card(row.description_md)
    if changes.get("tags") is not None:
        row.tags = _join_tags(changes["tags"])
    if "filing_number" in changes:
        row.filing_number = changes["filing_number"] or None
    row.updated_at = utcnow()
    session.add(row)
    session.commit()
    return listing_detail(session, row)


def set_listing_status(*, session: Session, listing_id: int, status: str) -> ListingDetail:
    """Suspend or reinstate a listing (administrators)."""
    begin_write(session)
    if status not in (LISTING_ACTIVE, LISTING_SUSPENDED):
        raise ValueError(status)
    row = _get_listing(session, listing_id)
    row.status = status
    row.updated_at = utcnow()
    session.add(row)
    audit_events.listing_status_changed(session, row)
    session.commit()
    return listing_detail(session, row)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_listings(
    *, session: Session, query: ListingQuery, page_size_max: int, viewer_org_id: int | None = None
) -> ListingPage:
    """Active listings (plus the viewer's own) matching ``query``, one page of them."""
    page_size = min(query.page_size, page_size_max)
    conditions: list[Any] = [
        sa.or_(col(Listing.status) == LISTING_ACTIVE, col(Listing.organization_id) == viewer_org_id)
        if viewer_org_id is not None
        else col(Listing.status) == LISTING_ACTIVE
    ]
    if query.q:
        for word in query.q.split()[:8]:
            pattern = f"%{_escape_like(word)}%"
            conditions.append(
                sa.or_(
                    col(Listing.name).ilike(pattern, escape="\\"),
                    col(Listing.summary).ilike(pattern, escape="\\"),
                    col(Listing.tags).ilike(pattern, escape="\\"),
                )
            )
    if query.task:
        conditions.append(Listing.task == query.task.strip().lower())
    if query.tag:
        tag = query.tag.strip().lower()
        conditions.append(col(Listing.tags).like(f"%,{_escape_like(tag)},%", escape="\\"))
    if query.vendor is not None:
        conditions.append(Listing.organization_id == query.vendor)
    where = sa.and_(*conditions)
    total = session.exec(select(func.count()).select_from(Listing).where(where)).one()
    rows = session.exec(
        select(Listing)
        .where(where)
        .order_by(*SORTS[query.sort])
        .offset((query.page - 1) * page_size)
        .limit(page_size)
    ).all()
    return ListingPage(
        items=[listing_public(session, r) for r in rows],
        total=int(total),
        page=query.page,
        page_size=page_size,
    )


def facets(*, session: Session, viewer_org_id: int | None = None) -> Facets:
    """Tasks, tags and vendors of the listings the viewer may see (for the catalog's filters)."""
    visible = (
        sa.or_(col(Listing.status) == LISTING_ACTIVE, col(Listing.organization_id) == viewer_org_id)
        if viewer_org_id is not None
        else col(Listing.status) == LISTING_ACTIVE
    )
    rows = session.exec(select(Listing.task, Listing.tags, Listing.organization_id).where(visible))
    tasks: set[str] = set()
    tags: set[str] = set()
    vendor_ids: set[int] = set()
    for task, tag_text, org_id in rows:
        tasks.add(task)
        tags.update(t for t in tag_text.split(",") if t)
        vendor_ids.add(org_id)
    vendors = session.exec(
        select(Organization).where(col(Organization.id).in_(vendor_ids)).order_by(Organization.name)
    ).all()
    return Facets(
        tasks=sorted(tasks),
        tags=sorted(tags),
        vendors=[VendorPublic(id=v.id or 0, name=v.name) for v in vendors],
    )


def all_listings(*, session: Session, status: str | None, page: int, page_size: int) -> ListingPage:
    """Every listing whatever its status, newest first (administrators)."""
    where = sa.true() if status is None else col(Listing.status) == status
    total = session.exec(select(func.count()).select_from(Listing).where(where)).one()
    rows = session.exec(
        select(Listing)
        .where(where)
        .order_by(*SORTS["newest"])
        .offset((page - 1) * page_size)
        .limit(page_size)
    ).all()
    return ListingPage(
        items=[listing_public(session, r) for r in rows],
        total=int(total),
        page=page,
        page_size=page_size,
    )
