"""Catalog: listings, versions, offers and search. No Flask here.

Every function takes the session as a keyword argument and owns its unit of work: it commits
what it changed or rolls back and raises a :class:`~marketplace.errors.DomainError`.

Visibility: an active listing is public. A suspended one is visible to its vendor only (others
get 404, as for a listing that does not exist). Changes are for the owning vendor only, and a
vendor that does not own a listing cannot tell it from a missing one (404).

The package is cut along its seams: ``listings``, ``versions`` (uploads, artifacts, samples),
``offers`` and ``presenters`` (rows as public models), and ``service``: what needs bounds from
the settings, built once by ``init_app``. Every name is importable from here.
"""

from __future__ import annotations

from marketplace.catalog.services.listings import (
    SORTS,
    all_listings,
    create_listing,
    facets,
    get_listing_detail,
    get_owned_listing,
    get_visible_listing,
    search_listings,
    set_listing_status,
    update_listing,
)
from marketplace.catalog.services.offers import (
    create_offer,
    list_offers,
    offer_summaries,
    retire_offer,
    vendor_listings,
)
from marketplace.catalog.services.presenters import (
    listing_detail,
    listing_public,
    offer_public,
    version_public,
)
from marketplace.catalog.services.service import CatalogService
from marketplace.catalog.services.versions import (
    LATEST,
    Artifact,
    ArtifactAccess,
    DownloadPolicy,
    UploadContext,
    attach_sample,
    ensure_version_free,
    get_version,
    get_version_for_evaluation,
    inspection_busy,
    list_versions,
    load_model_bytes,
    open_artifact,
    parse_version,
    publish_version,
    resolve_version,
    revoke_version,
    sample_of,
    samples_of,
    sweep_blobs,
    vendor_only,
)

__all__ = [
    "LATEST",
    "SORTS",
    "Artifact",
    "ArtifactAccess",
    "CatalogService",
    "DownloadPolicy",
    "UploadContext",
    "all_listings",
    "attach_sample",
    "create_listing",
    "create_offer",
    "ensure_version_free",
    "facets",
    "get_listing_detail",
    "get_owned_listing",
    "get_version",
    "get_version_for_evaluation",
    "get_visible_listing",
    "inspection_busy",
    "list_offers",
    "list_versions",
    "listing_detail",
    "listing_public",
    "load_model_bytes",
    "offer_public",
    "offer_summaries",
    "open_artifact",
    "parse_version",
    "publish_version",
    "resolve_version",
    "retire_offer",
    "revoke_version",
    "sample_of",
    "samples_of",
    "search_listings",
    "set_listing_status",
    "sweep_blobs",
    "update_listing",
    "vendor_listings",
    "vendor_only",
    "version_public",
]
