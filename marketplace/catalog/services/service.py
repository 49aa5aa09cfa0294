"""The catalog use cases that need bounds from the settings, bound once by ``init_app``."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session

from marketplace.catalog.schemas import ListingPage, ListingQuery, SamplePublic
from marketplace.catalog.services import listings, versions
from marketplace.config import FromSettings, setting


@dataclass(frozen=True)
class CatalogService(FromSettings):
    """Search pages of at most ``page_size_max`` listings; sample inputs of at most
    ``sample_bytes_max`` bytes and ``sample_elements_max`` elements per tensor. The API and the
    pages call it without handing settings over."""

    page_size_max: int
    sample_bytes_max: int
    # A sample is an evaluation's input: it is held to the same element bound.
    sample_elements_max: int = field(metadata=setting("eval_input_elements_max"))

    def search_listings(
        self, *, session: Session, query: ListingQuery, viewer_org_id: int | None = None
    ) -> ListingPage:
        """Active listings (plus the viewer's own) matching ``query``, one page of them."""
        return listings.search_listings(
            session=session,
            query=query,
            page_size_max=self.page_size_max,
            viewer_org_id=viewer_org_id,
        )

    def attach_sample(
        self, *, session: Session, listing_id: int, version: str, organization_id: int, data: bytes
    ) -> SamplePublic:
        """Attach (or replace) the version's sample input (owner)."""
        return versions.attach_sample(
            session=session,
            listing_id=listing_id,
            version=version,
            organization_id=organization_id,
            data=data,
            bytes_max=self.sample_bytes_max,
            elements_max=self.sample_elements_max,
        )
