"""Catalog: listings, versions, offers and search. No Flask here.

Every function takes the session as a keyword argument and owns its unit of work: it commits
what it changed or rolls back and raises a :class:`~marketplace.errors.DomainError`.

Visibility: an active listing is public. A suspended one is visible to its vendor only (others
get 404, as for a listing that does not exist). Changes are for the owning vendor only, and a
vendor that does not own a listing cannot tell it from a missing one (404).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from marketplace.accounts.models import Organization
from marketplace.audit import events as audit_events
from marketplace.catalog.errors import (
    ContentDigestMismatch,
    DownloadNotAllowed,
    InspectionBusy,
    InspectionUnavailable,
    InvalidVersion,
    ListingNotFound,
    ListingSuspended,
    ModelRejected,
    ModelTooLarge,
    NotAVendor,
    OfferNotFound,
    OfferRetired,
    SampleInvalid,
    SampleNotFound,
    SampleTooLarge,
    StorageUnavailable,
    UnknownCurrency,
    VersionExists,
    VersionNotFound,
    VersionRevoked,
)
from marketplace.catalog.markdown import render_model_card
from marketplace.catalog.models import (
    LISTING_ACTIVE,
    LISTING_SUSPENDED,
    Listing,
    ModelVersion,
    Offer,
    VersionSample,
    terms_sha256,
)
from marketplace.catalog.schemas import (
    SEMVER,
    VERSION_CHARS_MAX,
    Facets,
    ListingCreate,
    ListingDetail,
    ListingPage,
    ListingPublic,
    ListingQuery,
    ListingUpdate,
    OfferCreate,
    OfferPublic,
    OfferSummary,
    SamplePublic,
    VendorPublic,
    VersionPublic,
)
from marketplace.db import begin_write, utcnow
from marketplace.errors import Conflict
from marketplace.evaluation.tensors import TensorDecodeError, decode_npz
from marketplace.ledger.models import Currency
from model_registry.blobstore import (
    CONTENT_PREFIX,
    BlobStore,
    sha256_of_content_key,
)
from model_registry.confined import BUSY_RETRY_AFTER_S
from model_registry.errors import BlobStoreError, BlobTooLarge
from model_registry.upload import (
    DigestMismatch,
    Ingested,
    Inspector,
    Spool,
    ingest,
    ingest_declared,
    spool_stream,
)
from sandbox.errors import SandboxBusy, SandboxError

log = logging.getLogger(__name__)

SORTS: dict[str, Any] = {
    "newest": (col(Listing.created_at).desc(), col(Listing.id).desc()),
    "oldest": (col(Listing.created_at).asc(), col(Listing.id).asc()),
    "name": (col(Listing.name).asc(), col(Listing.id).asc()),
    "updated": (col(Listing.updated_at).desc(), col(Listing.id).desc()),
}


# --- presentation ----------------------------------------------------------------------------


def _vendor(session: Session, organization_id: int) -> VendorPublic:
    org = session.get(Organization, organization_id)
    return VendorPublic(id=organization_id, name=org.name if org else "")


def version_public(row: ModelVersion) -> VersionPublic:
    return VersionPublic(
        version=row.version,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        ir_version=row.ir_version,
        opsets=row.opsets,
        inputs=row.inputs,
        outputs=row.outputs,
        stats=row.stats,
        findings=row.findings,
        revoked=row.revoked_at is not None,
        revoked_at=row.revoked_at,
        created_at=row.created_at,
    )


def offer_public(row: Offer) -> OfferPublic:
    assert row.id is not None
    return OfferPublic(
        id=row.id,
        listing_id=row.listing_id,
        name=row.name,
        kind=row.kind,
        currency=row.currency,
        price_minor=row.price_minor,
        royalty_per_1k_minor=row.royalty_per_1k_minor,
        trial_calls=row.trial_calls,
        trial_days=row.trial_days,
        term_days=row.term_days,
        allow_download=row.allow_download,
        commercial_use=row.commercial_use,
        trial_requires_verified_org=row.trial_requires_verified_org,
        terms_md=row.terms_md,
        terms_sha256=row.terms_sha256,
        active=row.retired_at is None,
        retired_at=row.retired_at,
        created_at=row.created_at,
    )


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
    return ListingPublic(
        id=row.id,
        slug=row.slug,
        vendor=_vendor(session, row.organization_id),
        name=row.name,
        summary=row.summary,
        description_md=row.description_md,
        description_html=row.description_html,
        task=row.task,
        tags=row.tag_list,
        filing_number=row.filing_number,
        status=row.status,
        latest_version=_latest_version(session, row.id),
        created_at=row.created_at,
        updated_at=row.updated_at,
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
    return ListingDetail(
        **listing_public(session, row).model_dump(),
        versions=[version_public(v) for v in versions],
        offers=[offer_public(o) for o in offers],
    )


# --- listings --------------------------------------------------------------------------------


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
        row = Listing(
            organization_id=organization_id,
            slug=slug,
            name=request.name,
            summary=request.summary,
            description_md=request.description_md,
            description_html=render_model_card(request.description_md),
            task=request.task,
            tags=_join_tags(request.tags),
            filing_number=request.filing_number,
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


# --- versions --------------------------------------------------------------------------------


def parse_version(text: str | None) -> str:
    """A semantic version string, or 422 ``invalid_version``."""
    text = text or ""
    if not text or len(text) > VERSION_CHARS_MAX or not SEMVER.fullmatch(text):
        raise InvalidVersion("The version must be semantic versioning, such as 1.0.0.")
    return text


def _find_version(session: Session, listing_id: int, version: str) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion).where(
            ModelVersion.listing_id == listing_id, ModelVersion.version == version
        )
    ).first()


def ensure_version_free(*, session: Session, listing: Listing, version: str) -> None:
    """409 ``version_exists`` when the listing already has ``version`` (versions are immutable)."""
    if _find_version(session, listing.id or 0, version) is not None:
        raise VersionExists(f"Version {version} exists; versions are immutable.")
    session.rollback()  # end the read transaction before the long upload


@dataclass(frozen=True)
class UploadContext:
    """What publishing a version needs from its surroundings (built by the web layer)."""

    store: BlobStore
    inspect: Inspector
    spool_dir: Path
    size_max: int


def inspection_busy(retry_after_s: float = BUSY_RETRY_AFTER_S) -> InspectionBusy:
    """503 ``inspection_busy``: the node runs as many inspections as it may."""
    return InspectionBusy(
        "Too many models are being inspected on this server; retry later.",
        headers={"Retry-After": str(max(1, round(retry_after_s))), "Connection": "close"},
    )


def _inspection_problem(
    exc: SandboxError,
) -> ModelRejected | InspectionUnavailable | InspectionBusy:
    if exc.log_detail:
        log.warning("inspection %s: %s", exc.code, exc.log_detail)
    if isinstance(exc, SandboxBusy):
        return inspection_busy(exc.retry_after_s)
    if exc.code == "sandbox_unavailable":
        return InspectionUnavailable("Model inspection is unavailable; retry later.")
    finding = {
        "code": f"inspection_{exc.code}",
        "severity": "error",
        "message": "The model could not be inspected within the limits "
        f"({exc.code.replace('_', ' ')}).",
    }
    return ModelRejected("The model was rejected.", findings=[finding])


def _receive(
    body: IO[bytes], context: UploadContext, declared_sha256: str | None
) -> tuple[Spool, Ingested]:
    """Spool, inspect and store the body, by the declared-digest path when there is one."""
    if declared_sha256 is not None:
        return ingest_declared(
            body,
            sha256=declared_sha256,
            directory=context.spool_dir,
            size_max=context.size_max,
            store=context.store,
            inspect=context.inspect,
        )
    spool = spool_stream(body, directory=context.spool_dir, size_max=context.size_max)
    try:
        return spool, ingest(spool, store=context.store, inspect=context.inspect)
    except BaseException:
        spool.discard()
        raise


def publish_version(
    *,
    session: Session,
    listing: Listing,
    version: str,
    body: IO[bytes],
    context: UploadContext,
    declared_sha256: str | None = None,
) -> VersionPublic:
    """Receive an upload, inspect it, store its bytes once, and record the version.

    The body streams to a local spool (for the inspection) and to the store: after the body
    when its digest is unknown, or while it arrives when the client declared it (the store
    write then completes only if the digest matches and the model is accepted). The blob is
    written before the row, so no row ever points to nothing. If the row cannot be written (a
    concurrent upload took the version), a blob this call wrote and no row uses is deleted;
    the sweeper catches what a crash leaves.
    """
    try:
        spool, ingested = _receive(body, context, declared_sha256)
    except BlobTooLarge:
        raise ModelTooLarge(
            f"Models are limited to {context.size_max} bytes.", headers={"Connection": "close"}
        ) from None
    except DigestMismatch:
        raise ContentDigestMismatch("The body does not match its Content-Digest.") from None
    except SandboxError as exc:
        raise _inspection_problem(exc) from None
    except BlobStoreError as exc:
        log.error("blob store %s: %s", exc.code, exc.log_detail)
        raise StorageUnavailable("The model store is unavailable; retry later.") from None
    try:
        return _record_version(session, listing, version, spool, ingested, context)
    finally:
        spool.discard()


def _record_version(
    session: Session,
    listing: Listing,
    version: str,
    spool: Spool,
    ingested: Ingested,
    context: UploadContext,
) -> VersionPublic:
    report = ingested.report
    if not report.ok:
        raise ModelRejected(
            "The model was rejected; see findings.",
            findings=[f.to_dict() for f in report.findings],
        )
    row = ModelVersion(
        listing_id=listing.id or 0,
        version=version,
        sha256=spool.sha256,
        size_bytes=spool.size,
        blob_key=ingested.key,
        ir_version=report.ir_version,
        opsets=report.opsets,
        inputs=report.inputs,
        outputs=report.outputs,
        stats=report.stats,
        findings=[f.to_dict() for f in report.findings],
    )
    session.add(row)
    try:
        # Everything that can fail runs before the commit (the response is built from the
        # flushed row), so an error never leaves a committed row behind a 4xx or 5xx.
        session.flush()
        published = version_public(row)
        audit_events.version_published(session, row, listing)
        session.commit()
    except IntegrityError:
        session.rollback()
        if ingested.stored_new:
            _delete_if_unreferenced(session, context.store, ingested.key, spool.sha256)
        raise VersionExists(f"Version {version} exists; versions are immutable.") from None
    except BaseException:
        session.rollback()
        if ingested.stored_new:
            _delete_if_unreferenced(session, context.store, ingested.key, spool.sha256)
        raise
    # A concurrent failed upload of the same bytes may have deleted the blob between our
    # existence check and our commit; our row now references it, so put it back.
    try:
        if not context.store.exists(ingested.key):
            with open(spool.path, "rb") as body:
                context.store.put_stream(
                    ingested.key, body, size_max=spool.size, sha256=spool.sha256
                )
    except BlobStoreError as exc:
        log.error("could not re-store blob %s: %s", ingested.key, exc.log_detail)
    return published


def _delete_if_unreferenced(session: Session, store: BlobStore, key: str, sha256: str) -> None:
    used = session.exec(select(ModelVersion.id).where(ModelVersion.sha256 == sha256)).first()
    session.rollback()
    if used is None:
        try:
            store.delete(key)
        except BlobStoreError as exc:
            log.warning("could not delete unreferenced blob %s: %s", key, exc.log_detail)


def list_versions(
    *, session: Session, listing_id: int, viewer_org_id: int | None
) -> list[VersionPublic]:
    get_visible_listing(session=session, listing_id=listing_id, viewer_org_id=viewer_org_id)
    rows = session.exec(
        select(ModelVersion)
        .where(ModelVersion.listing_id == listing_id)
        .order_by(col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc())
    ).all()
    return [version_public(r) for r in rows]


LATEST = "latest"


def resolve_version(*, session: Session, listing_id: int, version: str) -> str:
    """``version``, or for the alias ``latest`` the newest version that is not revoked.

    Versions are semantic version numbers, so the alias can never name a real version.
    """
    if version != LATEST:
        return version
    newest = session.exec(
        select(ModelVersion.version)
        .where(ModelVersion.listing_id == listing_id, col(ModelVersion.revoked_at).is_(None))
        .order_by(col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc())
        .limit(1)
    ).first()
    if newest is None:
        raise VersionNotFound("The model has no version that is not revoked.")
    return newest


def get_version(
    *, session: Session, listing_id: int, version: str, viewer_org_id: int | None
) -> ModelVersion:
    get_visible_listing(session=session, listing_id=listing_id, viewer_org_id=viewer_org_id)
    version = resolve_version(session=session, listing_id=listing_id, version=version)
    row = _find_version(session, listing_id, version)
    if row is None:
        raise VersionNotFound("No such version.")
    return row


def revoke_version(
    *, session: Session, listing_id: int, version: str, organization_id: int, is_admin: bool
) -> VersionPublic:
    """Revoke a version (its vendor or an administrator): no more trials, runs or downloads."""
    begin_write(session)
    listing = _get_listing(session, listing_id)
    if listing.organization_id != organization_id and not is_admin:
        raise ListingNotFound("No such model.")
    row = _find_version(session, listing_id, version)
    if row is None:
        raise VersionNotFound("No such version.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        audit_events.version_revoked(session, row, listing)
        session.commit()
    return version_public(row)


@dataclass(frozen=True)
class Artifact:
    """Where an artifact can be fetched: a presigned URL, or a stream to send."""

    url: str | None
    stream: BinaryIO | None
    filename: str
    size: int


def open_artifact(
    *,
    session: Session,
    store: BlobStore,
    listing_id: int,
    version: str,
    organization_id: int,
    url_ttl_s: int,
) -> Artifact:
    """The artifact for the vendor, or a licensee whose offer allows download."""
    listing = get_visible_listing(
        session=session, listing_id=listing_id, viewer_org_id=organization_id
    )
    version = resolve_version(session=session, listing_id=listing_id, version=version)
    row = _find_version(session, listing_id, version)
    if row is None:
        raise VersionNotFound("No such version.")
    if row.revoked_at is not None:
        raise VersionRevoked("This version has been revoked and cannot be downloaded.")
    if listing.organization_id != organization_id and not _licensed_download(
        session, organization_id, listing_id, row.id or 0
    ):
        raise DownloadNotAllowed("Your licences do not allow downloading this model.")
    filename = f"{listing.slug}-{row.version}.onnx"
    try:
        url = store.presigned_url(row.blob_key, url_ttl_s)
        stream = None if url is not None else store.open(row.blob_key)
    except BlobStoreError as exc:
        log.error("artifact %s: %s %s", row.blob_key, exc.code, exc.log_detail)
        raise StorageUnavailable("The model store is unavailable; retry later.") from None
    finally:
        session.rollback()
    return Artifact(url=url, stream=stream, filename=filename, size=row.size_bytes)


def _licensed_download(
    session: Session, organization_id: int, listing_id: int, version_id: int
) -> bool:
    try:
        from marketplace.licensing.entitlements import may_download
    except ImportError:  # the licensing package is optional for the registry alone
        return False
    return may_download(
        session=session,
        organization_id=organization_id,
        listing_id=listing_id,
        version_id=version_id,
    )


# --- for the evaluator -------------------------------------------------------------------------


def get_version_for_evaluation(
    session: Session, model_id: int, version: str
) -> tuple[ModelVersion, Listing]:
    """The version to evaluate and its listing; 404 if missing, 403 if suspended or revoked."""
    # One query on the evaluate hot path; the second only to tell which 404 it is.
    if version == LATEST:
        version = resolve_version(session=session, listing_id=model_id, version=version)
    found = session.exec(
        select(ModelVersion, Listing)
        .join(Listing, col(Listing.id) == col(ModelVersion.listing_id))
        .where(ModelVersion.listing_id == model_id, ModelVersion.version == version)
    ).first()
    if found is None:
        _get_listing(session, model_id)
        raise VersionNotFound("No such version.")
    row, listing = found
    if listing.status != LISTING_ACTIVE:
        raise ListingSuspended("This model is suspended.")
    if row.revoked_at is not None:
        raise VersionRevoked("This version has been revoked.", status=403)
    return row, listing


def load_model_bytes(blob_store: BlobStore, version: ModelVersion) -> bytes:
    """The artifact's bytes (for the sandbox, which loads models from memory)."""
    with blob_store.open(version.blob_key) as body:
        data = body.read(version.size_bytes + 1)
    if len(data) != version.size_bytes:
        raise StorageUnavailable("The stored artifact does not match its record.")
    return data


# --- offers ----------------------------------------------------------------------------------


def create_offer(
    *, session: Session, listing_id: int, organization_id: int, request: OfferCreate
) -> OfferPublic:
    """A new immutable offer; its ``terms_sha256`` is what buyers accept."""
    begin_write(session)
    get_owned_listing(session=session, listing_id=listing_id, organization_id=organization_id)
    if session.get(Currency, request.currency) is None:
        # The ledger could not post a sale or royalty in it: refuse the offer, not the sale.
        raise UnknownCurrency(f"Currency {request.currency} is not supported.")
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


# --- sample inputs ---------------------------------------------------------------------------


def _check_sample(row: ModelVersion, arrays: dict[str, Any]) -> dict[str, Any]:
    """The sample's tensors against the signature the inspection recorded for the version.

    The sandbox checks every evaluation again against the signature the runtime reports; this
    check only keeps a sample that could never run from being offered to buyers.
    """
    expected = {spec["name"]: spec for spec in row.inputs}
    unknown = sorted(set(arrays) - set(expected))
    missing = sorted(set(expected) - set(arrays))
    if unknown:
        raise SampleInvalid(f"The model has no input {unknown[0][:100]!r}.")
    if missing:
        raise SampleInvalid(f"The sample lacks the input {missing[0][:100]!r}.")
    tensors: dict[str, Any] = {}
    for name, spec in expected.items():
        array = arrays[name]
        label = name[:100]
        if spec.get("dtype") != array.dtype.name:
            raise SampleInvalid(f"Input {label!r} must have dtype {spec.get('dtype')}.")
        shape = spec.get("shape")
        if shape is not None:
            if array.ndim != len(shape):
                raise SampleInvalid(f"Input {label!r} must have rank {len(shape)}.")
            for axis, (got, want) in enumerate(zip(array.shape, shape, strict=True)):
                if isinstance(want, int) and got != want:
                    raise SampleInvalid(f"Input {label!r} must have size {want} on axis {axis}.")
        tensors[name] = {"dtype": array.dtype.name, "shape": list(array.shape)}
    return tensors


def attach_sample(
    *,
    session: Session,
    listing_id: int,
    version: str,
    organization_id: int,
    data: bytes,
    bytes_max: int,
    elements_max: int,
) -> SamplePublic:
    """Attach (or replace) the version's sample input: an npz matching its signature (owner)."""
    begin_write(session)
    get_owned_listing(session=session, listing_id=listing_id, organization_id=organization_id)
    row = _find_version(session, listing_id, version)
    if row is None or row.id is None:
        raise VersionNotFound("No such version.")
    if len(data) > bytes_max:
        raise SampleTooLarge(f"Sample inputs are limited to {bytes_max} bytes.")
    try:
        arrays = decode_npz(data, elements_max=elements_max, bytes_max=bytes_max)
    except TensorDecodeError as exc:
        raise SampleInvalid(str(exc)) from None
    tensors = _check_sample(row, arrays)
    digest = hashlib.sha256(data).hexdigest()
    sample = session.get(VersionSample, row.id)
    if sample is None:
        sample = VersionSample(version_id=row.id, sha256="", size_bytes=0, data=b"")
    sample.sha256, sample.size_bytes, sample.data = digest, len(data), data
    sample.tensors, sample.created_at = tensors, utcnow()
    session.add(sample)
    session.commit()
    return _sample_public(row, sample)


def _sample_public(row: ModelVersion, sample: VersionSample) -> SamplePublic:
    return SamplePublic.model_validate(
        {**sample.model_dump(exclude={"data"}), "version": row.version}
    )


def sample_of(*, session: Session, version: ModelVersion) -> tuple[SamplePublic, bytes]:
    """The version's sample and its bytes; the caller has checked who may have it."""
    sample = session.get(VersionSample, version.id)
    if sample is None:
        raise SampleNotFound("This version has no sample input.")
    return _sample_public(version, sample), sample.data


def samples_of(*, session: Session, listing_id: int) -> dict[str, SamplePublic]:
    """The listing's versions that have a sample, by version (without the bytes)."""
    rows = session.exec(
        select(VersionSample, ModelVersion.version)
        .join(ModelVersion, col(ModelVersion.id) == col(VersionSample.version_id))
        .where(ModelVersion.listing_id == listing_id)
        .options(sa.orm.defer(VersionSample.data))  # type: ignore[arg-type]
    ).all()
    return {
        version: SamplePublic(
            version=version,
            sha256=sample.sha256,
            size_bytes=sample.size_bytes,
            tensors=sample.tensors,
            created_at=sample.created_at,
        )
        for sample, version in rows
    }


# --- housekeeping ----------------------------------------------------------------------------


def sweep_blobs(*, session: Session, store: BlobStore, grace_s: int) -> dict[str, int]:
    """Delete artifacts no version references (older than ``grace_s``, so uploads in flight
    survive) and abandoned partial uploads. Returns counts."""
    cutoff = utcnow().timestamp() - grace_s
    referenced = set(session.exec(select(ModelVersion.sha256).distinct()).all())
    session.rollback()
    deleted = 0
    for stat in store.list(CONTENT_PREFIX):
        digest = sha256_of_content_key(stat.key)
        if digest is None or digest in referenced or stat.modified_at.timestamp() > cutoff:
            continue
        store.delete(stat.key)
        deleted += 1
    incomplete = store.sweep_incomplete(grace_s)
    return {"deleted_blobs": deleted, "aborted_uploads": incomplete}
