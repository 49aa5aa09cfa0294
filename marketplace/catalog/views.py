"""Catalog API: listings, versions (streaming upload, artifact download), offers, search."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote

from flask import Blueprint, Response, current_app, jsonify, redirect, request
from pydantic import BaseModel, Field
from sqlmodel import Session

from marketplace.accounts.models import Organization
from marketplace.accounts.oauth import current
from marketplace.accounts.scopes import ADMIN, MODELS_READ, MODELS_WRITE
from marketplace.api import API_PREFIX, CONTENT_DIGEST
from marketplace.catalog import catalog_service, schemas, services, upload_context
from marketplace.catalog.errors import (
    InvalidContentDigest,
    ModelTooLarge,
    SampleTooLarge,
    UnsupportedMediaType,
)
from marketplace.catalog.models import LISTING_ACTIVE, LISTING_SUSPENDED
from marketplace.db import get_session
from marketplace.errors import Forbidden, Unauthorized
from marketplace.evaluation.tensors import NPZ_MIME
from marketplace.operation import for_caller, operations
from model_registry.blobstore import CHUNK_BYTES

bp = Blueprint("catalog", __name__, url_prefix=API_PREFIX)

OCTET_STREAM = "application/octet-stream"
LISTING_EXAMPLE = {
    "name": "Rail crack detector 钢轨裂纹检测",
    "summary": "Finds cracks in rail images from track inspection cars.",
    "description_md": "# Rail crack detector\n\nInput: float32 `[batch, 16]`.",
    "task": "anomaly-detection",
    "tags": ["transport", "rail"],
}
OFFER_EXAMPLE = {
    "name": "Pay per inference 按次计费",
    "kind": "per_inference",
    "currency": "CNY",
    "price_minor": 0,
    "royalty_per_1k_minor": 500,
    "trial_calls": 100,
    "trial_days": 14,
    "allow_download": False,
    "commercial_use": True,
    "terms_md": "¥5.00 per 1,000 successful inferences.",
}
# The version a path names is not there (or not the caller's to see).
VERSION_NOT_FOUND = ("model_not_found", "version_not_found")

# Most routes are a vendor's changes to its own listings.
operation = operations(tag="catalog", scope=MODELS_WRITE)
# A vendor's new listing, version or offer.
create = operations(tag="catalog", scope=MODELS_WRITE, status=201)
# Reads anyone may make; with a token, a vendor also sees its own listings that are not active.
public_read = operations(tag="catalog", scope=None, optional_token=True)
# Suspending and reinstating differ only in the status they set.
listing_status_change = operations(tag="catalog", scope=ADMIN, errors=["model_not_found"])


class VersionUploadQuery(BaseModel):
    """The upload's query string; ``services.parse_version`` checks the version itself."""

    version: str = Field(
        description="The new version's number, semantic versioning (versions are immutable)",
        examples=["1.1.0"],
    )


def _viewer_org_id() -> int | None:
    """The organisation of the request's token, or None for an anonymous read."""
    try:
        return current.organization_id
    except Unauthorized:
        return None


def _is_admin(session: Session) -> bool:
    org = session.get(Organization, current.organization_id)
    return org is not None and org.has_role("admin") and ADMIN in current.scopes


# --- listings ------------------------------------------------------------------------------


@bp.post("/models")
@create(
    "Create a model listing (vendor)",
    errors=["not_a_vendor", "validation_failed", "malformed_json"],
    example=LISTING_EXAMPLE,
)
def create_listing(body: schemas.ListingCreate) -> schemas.ListingPublic:
    return for_caller(services.create_listing, request=body)


@bp.get("/models")
@public_read(
    "Search the catalog",
    examples={"q": "weld", "task": "anomaly-detection", "tag": "manufacturing", "vendor": 1},
)
def search_listings(query: schemas.ListingQuery) -> schemas.ListingPage:
    return catalog_service(current_app).search_listings(
        session=get_session(),
        query=query,
        viewer_org_id=_viewer_org_id(),
    )


@bp.get("/models/<int:model_id>")
@public_read("A model listing with its versions and active offers", errors=["model_not_found"])
def get_listing(model_id: int) -> schemas.ListingDetail:
    return services.get_listing_detail(
        session=get_session(), listing_id=model_id, viewer_org_id=_viewer_org_id()
    )


@bp.patch("/models/<int:model_id>")
@operation(
    "Change a listing's description (owner)",
    errors=["model_not_found"],
    example={"summary": "Ultrasonic weld inspection: defect probability from 16 readings."},
)
def update_listing(model_id: int, body: schemas.ListingUpdate) -> schemas.ListingDetail:
    return for_caller(services.update_listing, listing_id=model_id, request=body)


def _listing_changed(listing_id: int) -> None:
    # Caches elsewhere in this process (the evaluate lookup) forget the listing at once; other
    # processes and nodes see the change within their caches' stated bound.
    for listener in current_app.extensions.get("listing_listeners", ()):
        listener(listing_id)


def _set_status(model_id: int, status: str) -> schemas.ListingDetail:
    session = get_session()
    if not _is_admin(session):
        raise Forbidden("Only administrators may suspend or reinstate models.")
    detail = services.set_listing_status(session=session, listing_id=model_id, status=status)
    _listing_changed(model_id)
    return detail


@bp.post("/models/<int:model_id>/suspend")
@listing_status_change("Suspend a listing (administrator)")
def suspend_listing(model_id: int) -> schemas.ListingDetail:
    return _set_status(model_id, LISTING_SUSPENDED)


@bp.post("/models/<int:model_id>/reinstate")
@listing_status_change("Reinstate a suspended listing (administrator)")
def reinstate_listing(model_id: int) -> schemas.ListingDetail:
    return _set_status(model_id, LISTING_ACTIVE)


# --- versions ------------------------------------------------------------------------------


def _declared_sha256(header: str | None) -> str | None:
    """The SHA-256 (hex) from an RFC 9530 ``Content-Digest: sha-256=:BASE64:`` header.

    Optional: with it, the upload is written to the store while it arrives; without it, after.
    Other algorithms in the header are ignored.
    """
    if header is None:
        return None
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name.strip().lower() != "sha-256":
            continue
        value = value.strip()
        try:
            if not (value.startswith(":") and value.endswith(":") and len(value) > 2):
                raise ValueError("not a byte sequence")
            raw = base64.b64decode(value[1:-1], validate=True)
        except ValueError:
            raise InvalidContentDigest("Content-Digest must be sha-256=:BASE64:.") from None
        if len(raw) != 32:
            raise InvalidContentDigest("A sha-256 digest is 32 bytes.")
        return raw.hex()
    return None


@bp.post("/models/<int:model_id>/versions")
@create(
    "Upload a new version: the raw ONNX bytes, streamed (owner)",
    response=schemas.VersionPublic,
    body_media_type=OCTET_STREAM,
    query=VersionUploadQuery,
    headers=[CONTENT_DIGEST],
    errors=[
        "model_not_found",
        "version_exists",
        "length_required",
        "model_too_large",
        "unsupported_media_type",
        "invalid_version",
        "model_rejected",
        "inspection_busy",
        "inspection_unavailable",
        "storage_unavailable",
    ],
    response_headers={"Location": "The new version's URL"},
)
def upload_version(model_id: int) -> Any:
    session = get_session()
    context = upload_context(current_app)
    listing = services.get_owned_listing(
        session=session, listing_id=model_id, organization_id=current.organization_id
    )
    if request.mimetype != OCTET_STREAM:
        raise UnsupportedMediaType(f"Send the model as {OCTET_STREAM}.")
    version = services.parse_version(request.args.get("version"))
    services.ensure_version_free(session=session, listing=listing, version=version)
    if current_app.extensions["model_inspector"].saturated:
        # Refused before a byte is read: the body could not be inspected now anyway.
        raise services.inspection_busy()
    if request.content_length is not None and request.content_length > context.size_max:
        # Refused before a byte is read; the connection closes rather than drain the body.
        raise ModelTooLarge(
            f"Models are limited to {context.size_max} bytes.", headers={"Connection": "close"}
        )
    # request.stream is the unbuffered WSGI input (chunked bodies are de-chunked by the
    # server); request.data or get_data() would hold the whole model in memory. Flask's
    # MAX_CONTENT_LENGTH is for forms and JSON; uploads have their own limit, checked above
    # and while streaming (a chunk past it is still read, hence the extra chunk here).
    request.max_content_length = context.size_max + CHUNK_BYTES
    published = services.publish_version(
        session=session,
        listing=listing,
        version=version,
        body=request.stream,
        context=context,
        declared_sha256=_declared_sha256(request.headers.get("Content-Digest")),
        body_size=request.content_length,
    )
    # The alias ``latest`` now names this version: the lookups cached in this process forget it.
    _listing_changed(model_id)
    response = jsonify(published.model_dump(mode="json"))
    version_path = quote(published.version, safe="")
    response.headers["Location"] = f"{API_PREFIX}/models/{model_id}/versions/{version_path}"
    return response, 201


@bp.get("/models/<int:model_id>/versions")
@public_read("A model's versions", errors=["model_not_found"])
def list_versions(model_id: int) -> schemas.VersionList:
    items = services.list_versions(
        session=get_session(), listing_id=model_id, viewer_org_id=_viewer_org_id()
    )
    return schemas.VersionList(items=items)


@bp.get("/models/<int:model_id>/versions/<version>")
@public_read("One version of a model", errors=VERSION_NOT_FOUND, examples={"version": "latest"})
def get_version(model_id: int, version: str) -> schemas.VersionPublic:
    row = services.get_version(
        session=get_session(), listing_id=model_id, version=version, viewer_org_id=_viewer_org_id()
    )
    return services.version_public(row)


@bp.post("/models/<int:model_id>/versions/<version>/revoke")
@operation(
    "Revoke a version: no more trials, inference or downloads (owner or administrator)",
    scope="any",
    errors=["insufficient_scope", *VERSION_NOT_FOUND],
    examples={"version": "1.0.0"},
)
def revoke_version(model_id: int, version: str) -> schemas.VersionPublic:
    is_admin = _is_admin(get_session())
    if not is_admin and MODELS_WRITE not in current.scopes:
        raise Forbidden("Revoking needs the models:write scope.", code="insufficient_scope")
    revoked = for_caller(
        services.revoke_version, listing_id=model_id, version=version, is_admin=is_admin
    )
    _listing_changed(model_id)
    return revoked


@bp.get("/models/<int:model_id>/versions/<version>/artifact")
@operation(
    "Download the ONNX artifact: 302 to a short-lived URL, or the bytes (owner or licensee)",
    status=302,
    scope=MODELS_READ,
    errors=["download_not_allowed", *VERSION_NOT_FOUND, "version_revoked", "storage_unavailable"],
    examples={"version": "latest"},
    also_success={200: [OCTET_STREAM]},
)
def download_artifact(model_id: int, version: str) -> Any:
    artifact = for_caller(
        services.open_artifact,
        access=current_app.extensions["artifact_access"],
        listing_id=model_id,
        version=version,
    )
    if artifact.url is not None:
        response = redirect(artifact.url, code=302)
    else:
        response = Response(_chunks(artifact.stream), mimetype=OCTET_STREAM)
        response.content_length = artifact.size
        response.headers["Content-Disposition"] = f'attachment; filename="{artifact.filename}"'

    response.headers["Cache-Control"] = "private, no-store"
    return response


def _chunks(stream: BinaryIO | None) -> Iterator[bytes]:
    """The stream in bounded chunks, closed when the response ends (even if cut short)."""
    if stream is None:
        return
    with stream:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk


@bp.put("/models/<int:model_id>/versions/<version>/sample")
@operation(
    "Attach a sample input to a version: an npz matching its input signature (owner)",
    body_media_type=NPZ_MIME,
    errors=[
        *VERSION_NOT_FOUND,
        "version_revoked",
        "sample_too_large",
        "unsupported_media_type",
        "sample_invalid",
    ],
    examples={"version": "1.0.0"},
)
def put_sample(model_id: int, version: str) -> schemas.SamplePublic:
    catalog = catalog_service(current_app)
    if request.mimetype != NPZ_MIME:
        raise UnsupportedMediaType(f"Send the sample as {NPZ_MIME}.")
    limit = catalog.sample_bytes_max
    if request.content_length is not None and request.content_length > limit:
        raise SampleTooLarge(f"Sample inputs are limited to {limit} bytes.")
    request.max_content_length = limit
    data = request.get_data(cache=False)
    return for_caller(catalog.attach_sample, listing_id=model_id, version=version, data=data)


# --- offers --------------------------------------------------------------------------------


@bp.post("/models/<int:model_id>/offers")
@create(
    "Publish an offer (immutable licence terms and a price) for a model (owner)",
    errors=["model_not_found", "validation_failed", "unknown_currency"],
    example=OFFER_EXAMPLE,
)
def create_offer(model_id: int, body: schemas.OfferCreate) -> schemas.OfferPublic:
    return for_caller(services.create_offer, listing_id=model_id, request=body)


@bp.get("/models/<int:model_id>/offers")
@public_read(
    "A model's active offers (its vendor also sees retired ones)", errors=["model_not_found"]
)
def list_offers(model_id: int) -> schemas.OfferList:
    items = services.list_offers(
        session=get_session(),
        listing_id=model_id,
        viewer_org_id=_viewer_org_id(),
        include_retired=True,
    )
    return schemas.OfferList(items=items)


@bp.post("/models/<int:model_id>/offers/<int:offer_id>/retire")
@operation(
    "Retire an offer: no new trials or purchases (owner)",
    errors=["model_not_found", "offer_not_found", "offer_retired"],
    examples={"offer_id": 2},
)
def retire_offer(model_id: int, offer_id: int) -> schemas.OfferPublic:
    return for_caller(services.retire_offer, listing_id=model_id, offer_id=offer_id)


# --- wiring --------------------------------------------------------------------------------
