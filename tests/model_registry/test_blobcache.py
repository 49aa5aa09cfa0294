"""The node's local cache of verified models in front of the blob store (S3 on SeaweedFS)."""

from __future__ import annotations

import hashlib
import io
import os
import time

import pytest

from model_registry.blobcache import BlobCache, BlobIntegrityError
from model_registry.blobstore import content_key


def _put(store, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    store.put_stream(content_key(digest), io.BytesIO(data), size_max=len(data))
    return digest


def _refuse():
    raise AssertionError("the store was asked again")


def test_a_second_process_reads_the_local_copy_not_the_store(s3_store, tmp_path):
    data = os.urandom(300_000)
    digest = _put(s3_store, data)
    fetched = []

    def fetch():
        fetched.append(1)
        return s3_store.open(content_key(digest))

    first = BlobCache(tmp_path / "cache", bytes_max=10_000_000)
    assert first.read(digest, len(data), fetch) == data
    assert fetched == [1]
    # A restarted worker or another server process of the node: a new cache on the same root.
    again = BlobCache(tmp_path / "cache", bytes_max=10_000_000)
    assert again.read(digest, len(data), _refuse) == data
    assert again.size_bytes() == len(data)


@pytest.mark.parametrize("damage", ["other-bytes", "short", "long"])
def test_bytes_that_do_not_match_their_hash_are_refused_and_not_kept(s3_store, tmp_path, damage):
    data = os.urandom(50_000)
    digest = hashlib.sha256(data).hexdigest()
    stored = {
        "other-bytes": os.urandom(50_000),
        "short": data[:-1],
        "long": data + b"x",
    }[damage]
    s3_store.put_stream(content_key(digest), io.BytesIO(stored), size_max=len(stored))
    cache = BlobCache(tmp_path / "cache", bytes_max=10_000_000)
    with pytest.raises(BlobIntegrityError):
        cache.read(digest, len(data), lambda: s3_store.open(content_key(digest)))
    assert cache.size_bytes() == 0
    assert not any((tmp_path / "cache" / ".incoming").iterdir())


def test_the_least_recently_used_go_first(tmp_path):
    blobs = [os.urandom(1000) for _ in range(4)]
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    cache = BlobCache(tmp_path / "cache", bytes_max=3000)
    for data, digest in zip(blobs[:3], digests[:3], strict=True):
        cache.read(digest, len(data), lambda data=data: io.BytesIO(data))
        time.sleep(0.01)
    cache.read(digests[0], 1000, _refuse)  # a hit makes the first the most recent
    time.sleep(0.01)
    cache.read(digests[3], 1000, lambda: io.BytesIO(blobs[3]))
    assert cache.size_bytes() == 3000
    assert cache.read(digests[0], 1000, _refuse) == blobs[0]
    assert cache.read(digests[2], 1000, _refuse) == blobs[2]
    fetched = []
    cache.read(digests[1], 1000, lambda: fetched.append(1) or io.BytesIO(blobs[1]))
    assert fetched == [1]  # the least recently used was evicted


def test_a_blob_larger_than_the_cache_is_served_but_not_kept(tmp_path):
    data = os.urandom(5000)
    digest = hashlib.sha256(data).hexdigest()
    cache = BlobCache(tmp_path / "cache", bytes_max=4000)
    assert cache.read(digest, len(data), lambda: io.BytesIO(data)) == data
    assert not (tmp_path / "cache").exists() or cache.size_bytes() == 0


def _counted(data: bytes):
    """The blob's digest, a fetch of it, and the list each fetch appends to."""
    fetched: list[int] = []

    def fetch():
        fetched.append(1)
        return io.BytesIO(data)

    return hashlib.sha256(data).hexdigest(), fetch, fetched


def test_open_gives_a_seekable_local_file_verified_once(tmp_path):
    data = os.urandom(200_000)
    digest, fetch, fetched = _counted(data)

    cache = BlobCache(tmp_path / "cache", bytes_max=1_000_000)
    with cache.open(digest, len(data), fetch) as first:
        first.seek(150_000)
        assert first.read(10) == data[150_000:150_010]
    with cache.open(digest, len(data), _refuse) as again:
        assert again.read() == data
    assert fetched == [1]
    # Larger than the whole cache: served from an unnamed file, nothing kept.
    small = BlobCache(tmp_path / "small", bytes_max=1000)
    with small.open(digest, len(data), fetch) as body:
        assert body.read() == data
    assert small.size_bytes() == 0
    with pytest.raises(BlobIntegrityError):
        BlobCache(tmp_path / "bad", 10**6).open(digest, len(data), lambda: io.BytesIO(b"x" * 5))


def test_a_cached_file_altered_on_disk_is_fetched_anew_never_served(tmp_path):
    """A changed byte in a cached model (same size) was served, run and billed."""
    data = os.urandom(100_000)
    digest, fetch, fetched = _counted(data)
    cache = BlobCache(tmp_path / "cache", bytes_max=1_000_000)
    assert cache.read(digest, len(data), fetch) == data
    cached = tmp_path / "cache" / digest[:2] / digest[2:]
    altered = bytearray(cached.read_bytes())
    altered[500] ^= 0xFF
    cached.write_bytes(bytes(altered))
    # The same process (the file changed since it hashed it) and a new one (never hashed it).
    for reader in (cache, BlobCache(tmp_path / "cache", bytes_max=1_000_000)):
        assert reader.read(digest, len(data), fetch) == data
        cached.write_bytes(bytes(altered))
    assert len(fetched) == 3
    # Unchanged since this process hashed it: served without hashing it again.
    assert cache.read(digest, len(data), fetch) == data
    assert cache.read(digest, len(data), _refuse) == data


def test_fills_left_by_a_killed_process_are_swept(tmp_path):
    """A process killed mid-fetch left its partial file in .incoming for ever."""
    cache = BlobCache(tmp_path / "cache", bytes_max=1_000_000)
    incoming = tmp_path / "cache" / ".incoming"
    incoming.mkdir(parents=True)
    stale, fresh = incoming / "tmp-stale", incoming / "tmp-fresh"
    stale.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"y" * 1000)  # another process's fill in progress
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    data = os.urandom(1000)
    cache.read(hashlib.sha256(data).hexdigest(), len(data), lambda: io.BytesIO(data))
    assert not stale.exists() and fresh.exists()
