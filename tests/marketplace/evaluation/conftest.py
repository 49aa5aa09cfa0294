"""One sandbox pool for the evaluation API tests, and a way to publish a version to evaluate."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlmodel import Session

from marketplace.catalog.models import Listing, ModelVersion, Offer, terms_sha256
from marketplace.evaluation.services import LazyPool
from model_registry.blobstore import content_key, open_blob_store
from sandbox.pool import PoolConfig, SandboxPool


@pytest.fixture(scope="session")
def shared_pool() -> Iterator[SandboxPool]:
    pool = SandboxPool(
        PoolConfig(
            workers_max=3,
            workers_busy_max=2,
            eval_timeout_s=2.0,
            worker_memory_bytes_max=1024**3,
            # Quarantine and throttling have their own tests (sandbox suite, over HTTP); here
            # rolled-back tests reuse version and organisation ids, so they are off.
            quarantine_callers=100,
            throttle_s=0,
        )
    )
    yield pool
    pool.close()


class _SharedLazyPool(LazyPool):
    """The app's pool handle, pointing at the session's pool; closing the app leaves it running."""

    def __init__(self, pool: SandboxPool) -> None:
        super().__init__(pool.config, factory=lambda _config: pool)

    def close(self) -> None:
        pass


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config["EVAL_TIMEOUT_S"] = 2.0
    return app_config


@pytest.fixture
def app(app, shared_pool):  # type: ignore[no-untyped-def]
    app.extensions["sandbox_pool"] = _SharedLazyPool(shared_pool)
    app.extensions["evaluation"].pool = app.extensions["sandbox_pool"]
    if "blob_store" not in app.extensions:
        settings = app.extensions["settings"]
        app.extensions["blob_store"] = open_blob_store(
            settings.storage_url, default_root="/nonexistent"
        )
    return app


@dataclass
class Published:
    model_id: int
    version: str
    version_id: int


@pytest.fixture
def publish(app, db_session: Session) -> Callable[..., Published]:
    """Put ONNX bytes in the blob store and a version row under a new listing of ``vendor``."""

    counter = iter(range(1, 1_000_000))

    def _publish(vendor: Any, model_bytes: bytes, version: str = "1.0.0") -> Published:
        digest = hashlib.sha256(model_bytes).hexdigest()
        key = content_key(digest)
        app.extensions["blob_store"].put_stream(
            key, io.BytesIO(model_bytes), size_max=len(model_bytes)
        )
        n = next(counter)
        listing = Listing(
            organization_id=vendor.id, slug=f"eval-{vendor.id}-{n}", name=f"Eval {n}", task="test"
        )
        db_session.add(listing)
        db_session.flush()
        row = ModelVersion(
            listing_id=listing.id,
            version=version,
            sha256=digest,
            size_bytes=len(model_bytes),
            blob_key=key,
            ir_version=8,
        )
        db_session.add(row)
        db_session.commit()
        return Published(listing.id, version, row.id)

    return _publish


@pytest.fixture
def offer_for(db_session):
    def _offer(published, **terms):
        fields = dict(
            listing_id=published.model_id,
            name="Standard",
            kind="per_inference",
            currency="CNY",
            price_minor=0,
            royalty_per_1k_minor=2500,
            trial_calls=2,
            trial_days=7,
            term_days=None,
            allow_download=False,
            commercial_use=True,
            terms_md="Use it well.",
        )
        fields.update(terms)
        offer = Offer(**fields, terms_sha256="")
        offer.terms_sha256 = terms_sha256(offer)
        db_session.add(offer)
        db_session.commit()
        return offer

    return _offer
