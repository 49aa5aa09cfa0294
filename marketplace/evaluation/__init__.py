"""Evaluation: the evaluate endpoint and sandbox health.

DESIGN §2 lists no domain for this; it is its own package because it joins three others
(catalog for the version, licensing for the entitlement, the sandbox pool for the run) and
belongs to none of them. It owns no tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """The sandbox pool (started on first use), the node's evaluation cap and the service."""
    from marketplace.evaluation import services
    from marketplace.evaluation.admission import NodeAdmission
    from marketplace.evaluation.batching import NodeWriterLock
    from marketplace.evaluation.views import bp
    from model_registry.blobcache import BlobCache
    from model_registry.blobstore import FilesystemBlobStore

    settings = app.extensions["settings"]
    # The sandbox's zygote starts on the first evaluation, not with every app object.
    pool = services.LazyPool(services.pool_config(settings))
    app.extensions["sandbox_pool"] = pool
    app.extensions["eval_admission"] = NodeAdmission(
        Path(app.instance_path) / "run" / "eval-slots", settings.eval_concurrency_max
    )
    blob_store = app.extensions["blob_store"]
    blob_cache = None
    # A filesystem store is already local: copying its files into a cache would only double them.
    if settings.blob_cache_bytes_max > 0 and not isinstance(blob_store, FilesystemBlobStore):
        blob_cache = BlobCache(
            settings.blob_cache_dir or Path(app.instance_path) / "blob-cache",
            settings.blob_cache_bytes_max,
        )
    service = services.EvaluationService(
        database=app.extensions["db"],
        pool=pool,
        blob_store=blob_store,
        settings=settings,
        blob_cache=blob_cache,
        writer_lock=NodeWriterLock(Path(app.instance_path) / "run" / "sqlite-writer.lock")
        if app.extensions["db"].is_sqlite
        else None,
    )
    app.extensions["evaluation"] = service
    app.extensions.setdefault("listing_listeners", []).append(service.forget_listing)
    app.register_blueprint(bp)
