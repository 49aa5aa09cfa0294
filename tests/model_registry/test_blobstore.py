"""One contract suite for every BlobStore, run against the filesystem and a real S3 server."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import requests

from model_registry.blobstore import (
    BlobStore,
    FilesystemBlobStore,
    S3BlobStore,
    check_key,
    content_key,
    open_blob_store,
    sha256_of_content_key,
)
from model_registry.errors import (
    BlobNotFound,
    BlobTooLarge,
    InvalidBlobKey,
    StorageAccessDenied,
    StorageConfigError,
)
from tests.model_registry.seaweed import SeaweedS3
from tests.model_registry.streams import Trickle


def keys(store: BlobStore) -> list[str]:
    return sorted(s.key for s in store.list(""))


def test_round_trip_and_stat(blob_store: BlobStore) -> None:
    data = os.urandom(300_000)
    digest = hashlib.sha256(data).hexdigest()
    key = content_key(digest)
    info = blob_store.put_stream(key, Trickle(data), size_max=len(data))
    assert (info.sha256, info.size) == (digest, len(data))
    with blob_store.open(key) as body:
        assert body.read() == data
    stat = blob_store.stat(key)
    assert (stat.key, stat.size) == (key, len(data))
    assert blob_store.exists(key)
    assert keys(blob_store) == [key]


def test_multipart_body(blob_store: BlobStore) -> None:
    # Larger than one S3 part, so the multipart path runs.
    data = os.urandom(9 * 1024 * 1024 + 17)
    info = blob_store.put_stream("big/one", io.BytesIO(data), size_max=len(data))
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    with blob_store.open("big/one") as body:
        assert hashlib.sha256(body.read()).hexdigest() == info.sha256


def test_a_known_digest_is_not_computed_again_but_the_size_cap_holds(
    blob_store: BlobStore,
) -> None:
    data = os.urandom(200_000)
    digest = hashlib.sha256(data).hexdigest()
    info = blob_store.put_stream("known/one", io.BytesIO(data), size_max=len(data), sha256=digest)
    assert (info.sha256, info.size) == (digest, len(data))
    with blob_store.open("known/one") as body:
        assert body.read() == data
    with pytest.raises(BlobTooLarge):
        blob_store.put_stream("known/two", io.BytesIO(data), size_max=1000, sha256=digest)
    assert not blob_store.exists("known/two")


def test_a_known_size_is_sent_in_whole_parts_and_a_short_stream_keeps_nothing(
    blob_store: BlobStore,
) -> None:
    # Over two S3 parts, read a socket's worth at a time.
    data = os.urandom(11 * 1024 * 1024)
    info = blob_store.put_stream(
        "sized/one", Trickle(data, 65536), size_max=len(data), size=len(data)
    )
    assert (info.sha256, info.size) == (hashlib.sha256(data).hexdigest(), len(data))
    with blob_store.open("sized/one") as body:
        assert body.read() == data
    # A stream that ends before its declared size fails the put, and nothing is stored.
    with pytest.raises(OSError):
        blob_store.put_stream(
            "sized/two", io.BytesIO(data[:-1]), size_max=len(data), size=len(data)
        )
    assert not blob_store.exists("sized/two")
    # A declared size over the cap is refused before a byte is read.
    unread = io.BytesIO(data)
    with pytest.raises(BlobTooLarge):
        blob_store.put_stream("sized/three", unread, size_max=1000, size=len(data))
    assert unread.tell() == 0
    assert not blob_store.exists("sized/three")
    assert keys(blob_store) == ["sized/one"]


def test_delete(blob_store: BlobStore) -> None:
    blob_store.put_stream("a/b", io.BytesIO(b"x"), size_max=10)
    blob_store.delete("a/b")
    assert not blob_store.exists("a/b")
    blob_store.delete("a/b")  # deleting a missing key does nothing


def test_missing_key(blob_store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        blob_store.open("no/such")
    with pytest.raises(BlobNotFound):
        blob_store.stat("no/such")
    assert not blob_store.exists("no/such")


def test_overwrite_with_identical_content(blob_store: BlobStore) -> None:
    data = b"same bytes" * 1000
    first = blob_store.put_stream("dup", io.BytesIO(data), size_max=len(data))
    second = blob_store.put_stream("dup", io.BytesIO(data), size_max=len(data))
    assert first == second
    assert keys(blob_store) == ["dup"]
    with blob_store.open("dup") as body:
        assert body.read() == data


@pytest.mark.parametrize("size", [1001, 6 * 1024 * 1024])
def test_size_cap_keeps_nothing(blob_store: BlobStore, size: int) -> None:
    with pytest.raises(BlobTooLarge) as exc:
        blob_store.put_stream("too/big", Trickle(b"z" * size, 65536), size_max=1000)
    assert exc.value.code == "blob_too_large"
    assert not blob_store.exists("too/big")
    assert keys(blob_store) == []
    assert blob_store.sweep_incomplete(0) == 0 or keys(blob_store) == []


def test_exact_size_is_allowed(blob_store: BlobStore) -> None:
    info = blob_store.put_stream("exact", io.BytesIO(b"a" * 1000), size_max=1000)
    assert info.size == 1000


def test_presign(blob_store: BlobStore) -> None:
    blob_store.put_stream("p/q", io.BytesIO(b"presigned body"), size_max=100)
    url = blob_store.presigned_url("p/q", 60)
    if isinstance(blob_store, FilesystemBlobStore):
        assert url is None
        return
    assert url is not None
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200
    assert resp.content == b"presigned body"
    # The signature covers the key: another key with the same query string is refused.
    tampered = url.replace("/p/q?", "/p/r?")
    assert requests.get(tampered, timeout=10).status_code == 403


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs", "a//b", "", "a/./b", "a\\b"])
def test_hostile_keys_are_refused(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidBlobKey):
        blob_store.put_stream(key, io.BytesIO(b"x"), size_max=10)


def test_content_keys() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    key = content_key(digest)
    assert key == f"onnx/sha256/{digest[:2]}/{digest[2:]}"
    assert sha256_of_content_key(key) == digest
    assert sha256_of_content_key("other/key") is None
    assert check_key(key) == key
    with pytest.raises(InvalidBlobKey):
        content_key("ZZ")


def test_wrong_secret_is_refused_by_the_server(seaweed: SeaweedS3, tmp_path: Path) -> None:
    store = open_blob_store(seaweed.storage_url(secret="not-the-secret"), default_root=tmp_path)
    with pytest.raises(StorageAccessDenied) as exc:
        store.put_stream("x", io.BytesIO(b"x"), size_max=10)
    assert exc.value.code == "storage_access_denied"
    with pytest.raises(StorageAccessDenied):
        store.stat("x")


def test_filesystem_store_leaves_no_temp_file_on_failure(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "b")
    with pytest.raises(BlobTooLarge):
        store.put_stream("k", io.BytesIO(b"x" * 100), size_max=10)
    assert list((tmp_path / "b" / ".incoming").iterdir()) == []
    stale = tmp_path / "b" / ".incoming" / "dead.part"
    stale.write_bytes(b"abandoned")
    os.utime(stale, (0, 0))
    assert store.sweep_incomplete(60) == 1
    assert not stale.exists()


@pytest.mark.parametrize(
    "url",
    ["ftp://x/y", "s3://host/bucket", "s3://a:b@host/", "s3://a:b@/bucket", "file://"],
)
def test_bad_storage_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(StorageConfigError):
        open_blob_store(url, default_root=tmp_path)


def test_storage_url_parsing(tmp_path: Path) -> None:
    assert isinstance(open_blob_store("", default_root=tmp_path), FilesystemBlobStore)
    store = open_blob_store("s3://AK:S%2Fx@127.0.0.1:9000/bkt?secure=false", default_root=tmp_path)
    assert isinstance(store, S3BlobStore)
    assert store.bucket == "bkt"


def test_sweeping_abandoned_s3_uploads(s3_store: S3BlobStore) -> None:
    # A multipart upload left behind by a crashed writer: started, one part, never completed.
    client = s3_store._client
    upload_id = client._create_multipart_upload(s3_store.bucket, "crashed/upload", {})
    client._upload_part(s3_store.bucket, "crashed/upload", b"x" * 5 * 1024 * 1024, None,
                        upload_id, 1)  # fmt: skip
    assert s3_store.sweep_incomplete(3600) == 0  # too recent
    assert s3_store.sweep_incomplete(0) == 1
    assert s3_store.sweep_incomplete(0) == 0
    assert not s3_store.exists("crashed/upload")
