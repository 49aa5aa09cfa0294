"""Catalog: listings, their versions (ONNX artifacts) and offers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from marketplace.catalog.services import CatalogService, DownloadPolicy, UploadContext
    from model_registry.inspection import InspectionPolicy


def inspection_policy(settings: Any) -> InspectionPolicy:
    """The inspection limits the settings ask for, beside the standard operator domains."""
    from model_registry.inspection import InspectionPolicy

    extra = tuple(d.strip() for d in settings.inspect_extra_domains.split(",") if d.strip())
    return InspectionPolicy(
        node_count_max=settings.inspect_node_count_max,
        subgraph_depth_max=settings.inspect_subgraph_depth_max,
        initializer_bytes_max=settings.inspect_initializer_bytes_max,
        allowed_domains=(*InspectionPolicy().allowed_domains, *extra),
    )


def init_app(app: Flask, *, download_policy: DownloadPolicy | None = None) -> None:
    """Build the blob store, the confined inspector, uploads and artifact access; add the API.

    ``download_policy`` says who besides the vendor may download an artifact (create_app
    passes licensing's rule); without one only vendors download.
    """
    from marketplace.catalog import services
    from marketplace.catalog.views import bp
    from model_registry.blobstore import open_blob_store
    from model_registry.confined import Inspector

    settings = app.extensions["settings"]
    store = open_blob_store(settings.storage_url, default_root=Path(app.instance_path) / "blobs")
    inspector = Inspector(
        inspection_policy(settings),
        wall_s_max=settings.inspect_timeout_s,
        concurrency_max=settings.inspect_concurrency_max,
        memory_base_bytes=settings.inspect_memory_base_bytes,
        memory_per_model_byte=settings.inspect_memory_per_model_byte,
    )
    app.extensions["blob_store"] = store
    app.extensions["model_inspector"] = inspector
    app.extensions["upload_context"] = services.UploadContext(
        store=store,
        inspect=inspector,
        spool_dir=Path(settings.upload_spool_dir or Path(app.instance_path) / "spool"),
        size_max=settings.model_bytes_max,
    )
    app.extensions["artifact_access"] = services.ArtifactAccess(
        store=store,
        url_ttl_s=settings.artifact_url_ttl_s,
        may_download=download_policy or services.vendor_only,
    )
    app.extensions["catalog"] = services.CatalogService.from_settings(settings)
    app.register_blueprint(bp)


def catalog_service(app: Flask) -> CatalogService:
    """The catalog use cases bounded by the settings (built once by :func:`init_app`)."""
    service: CatalogService = app.extensions["catalog"]
    return service


def upload_context(app: Flask) -> UploadContext:
    """Where and how the app receives uploads (built once by :func:`init_app`)."""
    context: UploadContext = app.extensions["upload_context"]
    return context
