"""Blob stores: where model artifacts live, behind one small protocol.

Two implementations share one contract suite: :class:`FilesystemBlobStore` (the embedded default;
atomic temp file + rename, not meant for several app nodes) and :class:`S3BlobStore` (any S3
server through the ``minio`` client: MinIO, SeaweedFS, AWS). ``open_blob_store(url)`` picks one
from ``MARKETPLACE_STORAGE_URL``.

Writes stream: the body is hashed and measured as it passes and the size limit is enforced
before the limit is crossed by more than one read, so no store ever holds the whole body in
memory. Artifacts use content-addressed keys (:func:`content_key`), so identical bytes are
stored once. Nothing from ``minio`` or ``urllib3`` escapes this module: failures become the
:mod:`model_registry.errors` types.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from model_registry.errors import (
    BlobNotFound,
    BlobStoreError,
    BlobTooLarge,
    InvalidBlobKey,
    StorageAccessDenied,
    StorageConfigError,
    StorageUnavailable,
)

CHUNK_BYTES = 1 << 20
MiB = 1 << 20
# S3 allows at most this many parts in one multipart upload.
S3_PARTS_MAX = 10_000

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-/]{0,511}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BlobInfo:
    """What a write stored: the SHA-256 (hex) and size of the bytes."""

    sha256: str
    size: int


@dataclass(frozen=True)
class BlobStat:
    """A stored blob as the store sees it."""

    key: str
    size: int
    modified_at: dt.datetime


class BlobStore(Protocol):
    """Where artifacts live. Keys are ``/``-separated, relative, with no ``..`` segment.

    ``put_stream`` reads ``stream`` to its end in bounded chunks, hashing and counting as it
    goes, and raises :class:`BlobTooLarge` (keeping nothing) as soon as more than ``size_max``
    bytes arrive. A caller that has already hashed exactly these bytes passes their digest as
    ``sha256``: the store then only counts (a gigabyte's SHA-256 is seconds of CPU), and the
    returned info carries the given digest. A caller that knows the stream's exact length
    passes it as ``size``: the S3 store then sends parts of known size, sparing the copy of
    every part that looking for the stream's end costs; a stream that ends sooner fails the put
    with ``OSError``. A put either stores the whole body under ``key`` or stores nothing; writing
    the same bytes to an existing key is harmless. ``open`` and ``stat`` raise
    :class:`BlobNotFound` for a missing key; ``delete`` of a missing key does nothing.
    ``presigned_url`` returns a time-limited GET URL, or ``None`` when the store cannot make one
    (then the caller streams ``open(key)`` itself). ``list`` yields what is stored under a
    prefix; ``sweep_incomplete`` removes abandoned partial writes older than ``older_than_s``
    and returns how many it removed.
    """

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        *,
        size_max: int,
        sha256: str | None = None,
        size: int | None = None,
    ) -> BlobInfo: ...

    def open(self, key: str) -> BinaryIO: ...

    def stat(self, key: str) -> BlobStat: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def presigned_url(self, key: str, expires_s: int) -> str | None: ...

    def list(self, prefix: str) -> Iterator[BlobStat]: ...

    def sweep_incomplete(self, older_than_s: int) -> int: ...


def content_key(sha256: str) -> str:
    """The content-addressed key of an ONNX artifact: ``onnx/sha256/ab/cdef...``."""
    if not _SHA256_RE.fullmatch(sha256):
        raise InvalidBlobKey("A content key needs a lower-case hex SHA-256.")
    return f"onnx/sha256/{sha256[:2]}/{sha256[2:]}"


CONTENT_PREFIX = "onnx/sha256/"


def sha256_of_content_key(key: str) -> str | None:
    """The SHA-256 a content key names, or None for any other key."""
    if not key.startswith(CONTENT_PREFIX):
        return None
    rest = key[len(CONTENT_PREFIX) :].replace("/", "")
    return rest if _SHA256_RE.fullmatch(rest) else None


def check_key(key: str) -> str:
    """Refuse keys that could escape a root directory or confuse an S3 path."""
    if not _KEY_RE.fullmatch(key) or any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidBlobKey()
    return key


class _HashingReader:
    """Wraps a stream: hashes and counts what is read, refuses to go past ``size_max``.

    With a ``known`` digest (the caller hashed these bytes already) it only counts.
    """

    def __init__(self, stream: BinaryIO, size_max: int, known: str | None = None) -> None:
        self._stream = stream
        self._size_max = size_max
        self._hash = hashlib.sha256() if known is None else None
        self._known = known
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK_BYTES
        data = self._stream.read(n)
        if data:
            self.size += len(data)
            if self.size > self._size_max:
                raise BlobTooLarge(f"The body is larger than {self._size_max} bytes.")
            if self._hash is not None:
                self._hash.update(data)
        return data

    def info(self) -> BlobInfo:
        digest = self._hash.hexdigest() if self._hash is not None else self._known
        return BlobInfo(digest or "", self.size)


def _exact_size_max(size_max: int, size: int | None) -> int:
    """The cap for a put of declared ``size``: more than ``size_max`` is refused up front."""
    if size is not None and size > size_max:
        raise BlobTooLarge(f"The body is larger than {size_max} bytes.")
    return size_max


# --- the filesystem ------------------------------------------------------------------------


class FilesystemBlobStore:
    """Blobs as files under ``root``; writes go to ``root/.incoming`` and are renamed in place.

    For one machine only: there are no presigned URLs and nothing is shared between nodes.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._incoming = self.root / ".incoming"
        self._incoming.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        *,
        size_max: int,
        sha256: str | None = None,
        size: int | None = None,
    ) -> BlobInfo:
        target = self._path(key)
        reader = _HashingReader(stream, _exact_size_max(size_max, size), sha256)
        temp = self._incoming / f"{uuid.uuid4().hex}.part"
        try:
            with open(temp, "wb") as out:
                while chunk := reader.read(CHUNK_BYTES):
                    out.write(chunk)
                if size is not None and reader.size != size:
                    raise OSError(f"the stream ended after {reader.size} of {size} bytes")
                out.flush()
                os.fsync(out.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return reader.info()

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound() from None

    def stat(self, key: str) -> BlobStat:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound() from None
        if not os.path.isfile(self._path(key)):
            raise BlobNotFound()
        return BlobStat(key, st.st_size, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        return None

    def list(self, prefix: str) -> Iterator[BlobStat]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d != ".incoming"]
            for name in sorted(filenames):
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        yield self.stat(key)
                    except BlobNotFound:
                        continue  # deleted while listing

    def sweep_incomplete(self, older_than_s: int) -> int:
        return remove_stale_files(self._incoming, "*.part", older_than_s)


def remove_stale_files(directory: Path, pattern: str, older_than_s: float) -> int:
    """Delete files in ``directory`` matching ``pattern`` untouched for ``older_than_s``."""
    cutoff = time.time() - older_than_s
    removed = 0
    for path in directory.glob(pattern):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # removed meanwhile by someone else
    return removed


# --- S3 ------------------------------------------------------------------------------------

T = TypeVar("T")


class S3BlobStore:
    """Blobs in one S3 bucket through the ``minio`` client.

    Bodies are sent as multipart uploads of ``part_size`` bytes with ``parallel_uploads`` parts
    in flight, so memory stays near ``(parallel_uploads + 1) * part_size`` whatever the body
    size. A failed or oversized upload is aborted, so no partial object is ever visible;
    uploads abandoned by a crash are removed by :meth:`sweep_incomplete`.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = True,
        region: str = "us-east-1",
        part_size: int = 5 * MiB,
        parallel_uploads: int = 3,
    ) -> None:
        from minio import Minio

        if part_size < 5 * MiB:
            raise StorageConfigError("S3 parts must be at least 5 MiB.")
        self.bucket = bucket
        self.part_size = part_size
        self.parallel_uploads = parallel_uploads
        # A fixed region spares a bucket-location request before every presign.
        self._client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one client call, translating every vendor error into ours."""
        from minio.error import InvalidResponseError, S3Error, ServerError
        from urllib3.exceptions import HTTPError

        try:
            return fn()
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject"}:
                raise BlobNotFound() from None
            if exc.code in {
                "AccessDenied",
                "SignatureDoesNotMatch",
                "InvalidAccessKeyId",
                "InvalidToken",
            }:
                raise StorageAccessDenied(log_detail=f"{exc.code}: {exc.message}") from None
            if exc.code == "NoSuchBucket":
                raise StorageConfigError(
                    "The storage bucket does not exist.", log_detail=exc.message
                ) from None
            raise BlobStoreError(log_detail=f"{exc.code}: {exc.message}") from None
        except (ServerError, InvalidResponseError) as exc:
            raise BlobStoreError(log_detail=str(exc)[:500]) from None
        except HTTPError as exc:
            raise StorageUnavailable(log_detail=str(exc)[:500]) from None

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist yet (tests and first start-up)."""
        if not self._call(lambda: self._client.bucket_exists(self.bucket)):
            self._call(lambda: self._client.make_bucket(self.bucket))

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        *,
        size_max: int,
        sha256: str | None = None,
        size: int | None = None,
    ) -> BlobInfo:
        check_key(key)
        reader = _HashingReader(stream, _exact_size_max(size_max, size), sha256)
        # A known size may need parts larger than ours to fit in S3's part count.
        part_size = (
            self.part_size if size is None else max(self.part_size, -(-size // S3_PARTS_MAX))
        )
        # minio aborts its multipart upload when reading raises (BlobTooLarge included), and
        # when a stream of known size ends early (OSError).
        self._call(
            lambda: self._client.put_object(
                self.bucket,
                key,
                reader,  # type: ignore[arg-type]
                length=-1 if size is None else size,
                part_size=part_size,
                num_parallel_uploads=self.parallel_uploads,
                content_type="application/octet-stream",
            )
        )
        return reader.info()

    def open(self, key: str) -> BinaryIO:
        check_key(key)
        response = self._call(lambda: self._client.get_object(self.bucket, key))
        return _S3Body(response)  # type: ignore[return-value]

    def stat(self, key: str) -> BlobStat:
        check_key(key)
        obj = self._call(lambda: self._client.stat_object(self.bucket, key))
        modified = obj.last_modified or dt.datetime.now(dt.UTC)
        return BlobStat(key, int(obj.size or 0), modified)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except BlobNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        check_key(key)
        self._call(lambda: self._client.remove_object(self.bucket, key))

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        check_key(key)
        return self._call(
            lambda: self._client.presigned_get_object(
                self.bucket, key, expires=dt.timedelta(seconds=expires_s)
            )
        )

    def list(self, prefix: str) -> Iterator[BlobStat]:
        objects = self._call(
            lambda: list(self._client.list_objects(self.bucket, prefix=prefix, recursive=True))
        )
        for obj in objects:
            if obj.object_name is None or obj.is_dir:
                continue
            modified = obj.last_modified or dt.datetime.now(dt.UTC)
            yield BlobStat(obj.object_name, int(obj.size or 0), modified)

    def sweep_incomplete(self, older_than_s: int) -> int:
        # minio exposes no public call for listing multipart uploads; its internal one is
        # stable across 7.x. Servers with lifecycle rules (AbortIncompleteMultipartUpload)
        # make this a no-op.
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than_s)
        result = self._call(
            lambda: self._client._list_multipart_uploads(self.bucket, max_uploads=1000)
        )
        removed = 0
        for upload in result.uploads:
            initiated = upload.initiated_time
            if initiated is not None and initiated < cutoff:
                name, upload_id = upload.object_name, upload.upload_id
                self._call(
                    lambda n=name, u=upload_id: self._client._abort_multipart_upload(  # type: ignore[misc]
                        self.bucket, n, u
                    )
                )
                removed += 1
        return removed


class _S3Body:
    """A GET response as a binary file object that releases its connection when closed."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def read(self, n: int = -1) -> bytes:
        from urllib3.exceptions import HTTPError

        try:
            data: bytes = self._response.read(None if n is None or n < 0 else n)
        except HTTPError as exc:
            raise StorageUnavailable(log_detail=str(exc)[:500]) from None
        return data

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()

    def __enter__(self) -> _S3Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK_BYTES):
            yield chunk


# --- choosing a store ----------------------------------------------------------------------


def open_blob_store(url: str, *, default_root: str | os.PathLike[str]) -> BlobStore:
    """The store ``url`` names: ``s3://KEY:SECRET@host:port/bucket?secure=false`` or
    ``file:///path``; an empty URL means a filesystem store under ``default_root``."""
    if not url:
        return FilesystemBlobStore(default_root)
    parts = urlsplit(url)
    if parts.scheme == "file":
        if not parts.path:
            raise StorageConfigError("A file:// storage URL needs a path.")
        return FilesystemBlobStore(unquote(parts.path))
    if parts.scheme == "s3":
        bucket = parts.path.strip("/")
        if not parts.hostname or not bucket or "/" in bucket:
            raise StorageConfigError("An s3:// storage URL needs a host and one bucket name.")
        if parts.username is None or parts.password is None:
            raise StorageConfigError("An s3:// storage URL needs ACCESS:SECRET credentials.")
        query = parse_qs(parts.query)
        secure = query.get("secure", ["true"])[0].lower() not in {"0", "false", "no", "off"}
        region = query.get("region", ["us-east-1"])[0]
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        return S3BlobStore(
            endpoint=host,
            access_key=unquote(parts.username),
            secret_key=unquote(parts.password),
            bucket=bucket,
            secure=secure,
            region=region,
        )
    raise StorageConfigError("The storage URL must start with s3:// or file://.")
