"""Registry fixtures: a store of each kind (the S3 one on the run's SeaweedFS, ``seaweed``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_registry.blobstore import BlobStore, FilesystemBlobStore, S3BlobStore, open_blob_store
from tests.model_registry.seaweed import SeaweedS3


@pytest.fixture(params=["filesystem", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each store implementation in turn, empty at the start of the test."""
    if request.param == "filesystem":
        return FilesystemBlobStore(tmp_path / "blobs")
    return request.getfixturevalue("s3_store")


@pytest.fixture
def s3_store(seaweed: SeaweedS3, tmp_path: Path) -> S3BlobStore:
    """The run's S3 bucket, emptied first (SeaweedFS gives every bucket its own volumes, so
    tests share one bucket rather than create many)."""
    store = open_blob_store(seaweed.storage_url(), default_root=tmp_path)
    assert isinstance(store, S3BlobStore)
    store.ensure_bucket()
    for stat in list(store.list("")):
        store.delete(stat.key)
    store.sweep_incomplete(0)
    return store
