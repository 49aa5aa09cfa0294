"""Catalog presenters: rows as the public models the API and the pages show."""

from __future__ import annotations

from sqlmodel import Session, col, select

from marketplace.accounts.models import Organization
from marketplace.catalog.models import (
    Listing,
    ModelVersion,
    Offer,
    PublishedReport,
)
from marketplace.catalog.schemas import (
    ListingDetail,
    ListingPublic,
    OfferPublic,
    PublishedReportPublic,
    VendorPublic,
    VersionPublic,
)


def _vendor(session: Session, organization_id: int) -> VendorPublic:
    org = session.get(Organization, organization_id)
    return VendorPublic(id=organization_id, name=org.name if org else "")


def version_public(row: ModelVersion) -> VersionPublic:
    return VersionPublic.model_validate(row)


def offer_public(row: Offer) -> OfferPublic:
    return OfferPublic.model_validate(row)


def _latest_version(session: Session, listing_id: int) -> str | None:
    row = session.exec(
        select(ModelVersion.version)
        .where(ModelVersion.listing_id == listing_id, col(ModelVersion.revoked_at).is_(None))
        .order_by(col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc())
        .limit(1)
    ).first()
    return row


def listing_public(session: Session, row: Listing) -> ListingPublic:
    assert row.id is not None
    return ListingPublic.model_validate(
        {
            **row.model_dump(),
            "tags": row.tag_list,
            "vendor": _vendor(session, row.organization_id),
            "latest_version": _latest_version(session, row.id),
        }
    )


def listing_detail(session: Session, row: Listing) -> ListingDetail:
    versions = session.exec(
        select(ModelVersion)
        .where(ModelVersion.listing_id == row.id)
        .order_by(col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc())
    ).all()
    offers = session.exec(
        select(Offer)
        .where(Offer.listing_id == row.id, col(Offer.retired_at).is_(None))
        .order_by(col(Offer.id))
    ).all()
    reports = session.exec(
        select(PublishedReport, ModelVersion.version)
        .join(ModelVersion, col(ModelVersion.id) == col(PublishedReport.version_id))
        .where(PublishedReport.listing_id == row.id)
        .order_by(col(PublishedReport.published_at).desc(), col(PublishedReport.id).desc())
    ).all()
    return ListingDetail(
        **listing_public(session, row).model_dump(),
        versions=[version_public(v) for v in versions],
        offers=[offer_public(o) for o in offers],
        reports=[
            PublishedReportPublic(
                job_id=report.job_id,
                version=version,
                published_at=report.published_at,
                document=report.document,
            )
            for report, version in reports
        ],
    )
