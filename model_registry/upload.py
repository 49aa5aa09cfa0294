"""The streaming upload pipeline: body -> local spool -> (inspection ‖ blob store).

Why a local spool: the artifact's key is its SHA-256, known only once the last byte has
arrived, and the inspection needs the whole file. So the body is streamed, in bounded chunks,
into a spool file on local disk while it is hashed, measured and capped. Then two things run
at once: the confined inspection reads the spool, and (when the content is not stored yet)
the spool is uploaded to its content-addressed key. For large bodies the upload dominates, so
the inspection costs little wall time; for small ones the inspection runs first and nothing
is written unless the model is accepted.

When the client declares the digest (``ingest_declared``), the key is known from the start: the
body goes to the store from memory while it arrives, and the spool, which only the inspection
reads, leaves out the bulk weights (``BulkRanges``).

Nothing stays behind: a refused model's freshly written blob is deleted before the response;
the spool is always deleted by the caller; a crash between the blob write and the database
row leaves an unreferenced blob that the sweeper removes after a grace period.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from model_registry.blobstore import (
    CHUNK_BYTES,
    BlobInfo,
    BlobStore,
    content_key,
    remove_stale_files,
)
from model_registry.errors import BlobTooLarge, RegistryError, StorageUnavailable
from model_registry.inspection import BULK_TENSOR_BYTES_MIN, BulkRanges, Report

# Below this size the inspection runs before any store write (cheap, and a refused model then
# never touches the store); above it the two run in parallel.
PARALLEL_BYTES_MIN = 32 * 1024 * 1024

Inspector = Callable[[Path], Report]


@dataclass(frozen=True)
class Spool:
    """An upload staged on local disk. A spool that is not ``whole`` holds everything the
    inspection reads, with holes where the bulk weights were (see ``BulkRanges``): it must
    never be stored or served as the model."""

    path: Path
    sha256: str
    size: int
    whole: bool = True

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def spool_stream(
    stream: IO[bytes],
    *,
    directory: Path,
    size_max: int,
    path: Path | None = None,
    on_chunk: Callable[[bytes], None] | None = None,
    bulk: BulkRanges | None = None,
) -> Spool:
    """Copy ``stream`` to a new file in ``directory`` (or to ``path``), hashing it; refuse more
    than ``size_max`` bytes (:class:`BlobTooLarge`) as soon as they arrive, leaving no file
    behind. ``on_chunk`` is handed every chunk once it is hashed. With ``bulk``, the bulk
    weights it finds are left out of the file (holes of their length): a spool for the
    inspection only, not ``whole``."""
    path = path or directory / f"upload-{uuid.uuid4().hex}.onnx"
    digest = hashlib.sha256()
    size = 0
    holes = False
    try:
        with _spool_disk(path):
            directory.mkdir(parents=True, exist_ok=True)
            out = open(path, "wb")  # noqa: SIM115 - closed below, its errors mapped like writes
        with out:
            while chunk := stream.read(CHUNK_BYTES):
                size += len(chunk)
                if size > size_max:
                    raise BlobTooLarge(f"The model is larger than {size_max} bytes.")
                digest.update(chunk)
                with _spool_disk(path):
                    kept = 0
                    for start, end in bulk.feed(chunk) if bulk is not None else ():
                        out.write(memoryview(chunk)[kept:start])
                        out.seek(end - start, os.SEEK_CUR)
                        kept, holes = end, True
                    out.write(memoryview(chunk)[kept:] if kept else chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
            if holes:
                with _spool_disk(path):
                    out.truncate(size)  # a hole at the very end still counts in the size
    except BaseException:
        with contextlib.suppress(OSError):  # a spool that could not be made is not there
            path.unlink(missing_ok=True)
        raise
    return Spool(path, digest.hexdigest(), size, whole=not holes)


@contextlib.contextmanager
def _spool_disk(path: Path) -> Iterator[None]:
    """The spool's own disk failing (full, read-only, not a directory) is the node's fault, for
    the client to retry later: not an error of the upload, nor an unexplained crash."""
    try:
        yield
    except OSError as exc:
        raise StorageUnavailable(
            "The node cannot stage uploads now; retry later.",
            log_detail=f"spool {path.parent}: {exc}",
        ) from None


@dataclass(frozen=True)
class Ingested:
    """A spooled upload after inspection: where its bytes are, and whether we wrote them."""

    key: str
    report: Report
    stored_new: bool


def _put(store: BlobStore, key: str, spool: Spool) -> None:
    # The spool was hashed as it was written and only this process writes it, so the store
    # does not hash it a second time (seconds of CPU per gigabyte); its size is still checked.
    with open(spool.path, "rb") as body:
        info = store.put_stream(
            key, body, size_max=spool.size, sha256=spool.sha256, size=spool.size
        )
    if info.size != spool.size:  # the spool changed under us: never store a mislabelled blob
        store.delete(key)
        raise OSError("spooled upload changed while it was stored")


def ingest(
    spool: Spool,
    *,
    store: BlobStore,
    inspect: Inspector,
    parallel_bytes_min: int = PARALLEL_BYTES_MIN,
) -> Ingested:
    """Inspect the spool and, if the model is accepted, make sure its bytes are in ``store``.

    A refused model leaves the store as it was. Exceptions from the inspector (a sandbox
    failure) or the store propagate after any blob this call wrote has been deleted.
    """
    key = content_key(spool.sha256)
    if store.exists(key):
        return Ingested(key, inspect(spool.path), stored_new=False)
    if spool.size < parallel_bytes_min:
        report = inspect(spool.path)
        if report.ok:
            _put(store, key, spool)
        return Ingested(key, report, stored_new=report.ok)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-upload") as pool:
        upload = pool.submit(_put, store, key, spool)
        try:
            report = inspect(spool.path)
        except BaseException:
            _undo(upload, store, key)
            raise
        if not report.ok:
            _undo(upload, store, key)
            return Ingested(key, report, stored_new=False)
        upload.result()
    return Ingested(key, report, stored_new=True)


def _undo(upload: Future[None], store: BlobStore, key: str) -> None:
    """Wait for an upload that is no longer wanted and remove what it wrote."""
    try:
        upload.result()
    except Exception:
        return  # a failed upload wrote nothing
    store.delete(key)


# --- streaming straight to the store when the client declares the digest ---------------------


class DigestMismatch(RegistryError, code="digest_mismatch"):
    """The body does not match its declared SHA-256."""


class _Refused(Exception):
    """Raised inside the store's reader to make it abandon (abort) the write."""


# What the body relay may hold beyond what the store is waiting for.
RELAY_BYTES_MAX = 8 * 1024 * 1024


class _BodyRelay:
    """Hands the body's chunks, as they arrive, to the store write running in another thread.

    The request thread puts each chunk; the store reads whole parts. At most
    ``RELAY_BYTES_MAX`` bytes (or the part the store is waiting for, if larger) are held: a
    store slower than the client slows the client down, and memory stays bounded by the relay
    and the store's own part buffers. The end is handed over only once the upload is
    approved: until then the store holds its last part back, and a refusal makes its write
    fail, which abandons it (an S3 multipart upload is aborted, a temp file deleted). So an
    object appears under its content key only after the bytes were verified and the model
    accepted.

    When the body's length is known (``total``), the store reads parts of known size and never
    asks for an end: the read that would hand over the body's last byte waits for the approval.
    Once the store write has ended (failed, or abandoned), further chunks are dropped, so the
    request goes on to its answer, which reports the store's error.
    """

    def __init__(self, total: int | None = None) -> None:
        self._total = total
        self._chunks: deque[bytes] = deque()
        self._held = 0  # bytes in _chunks
        self._handed = 0  # bytes the store has read
        self._wanted = 0  # bytes the store is waiting for
        self._ended = False
        self._decided = False
        self._approved = False
        self._store_done = False
        self._changed = threading.Condition()

    def put(self, chunk: bytes) -> None:
        with self._changed:
            while not self._store_done and self._held >= max(RELAY_BYTES_MAX, self._wanted):
                self._changed.wait()
            if self._store_done:
                return
            self._chunks.append(chunk)
            self._held += len(chunk)
            self._changed.notify_all()

    def end(self) -> None:
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def decide(self, approved: bool) -> None:
        with self._changed:
            self._decided, self._approved = True, approved
            self._changed.notify_all()

    def store_done(self) -> None:
        """The store write has ended: nothing more will be read."""
        with self._changed:
            self._store_done = True
            self._chunks.clear()
            self._held = 0
            self._changed.notify_all()

    def read(self, n: int = -1) -> bytes:
        """``n`` bytes, waiting until ``n`` have arrived (fewer only at the body's end).

        Whole reads matter: the store builds each part by appending reads to one bytes object,
        so a part read a chunk at a time would be copied over and over, each copy in fresh
        memory."""
        n = CHUNK_BYTES if n is None or n < 0 else n
        with self._changed:
            self._wanted = n
            try:
                while True:
                    if self._decided and not self._approved:
                        raise _Refused()
                    count = min(n, self._held)
                    if (count == n or (self._ended and count)) and (
                        self._decided or not self._completes(count)
                    ):
                        break
                    if self._ended and self._decided and not self._held:
                        return b""  # approved: the store may complete its write now
                    self._changed.wait()
                parts = []
                taken = 0
                while taken < count:
                    chunk = self._chunks.popleft()
                    if taken + len(chunk) > count:
                        cut = count - taken
                        self._chunks.appendleft(chunk[cut:])
                        chunk = chunk[:cut]
                    parts.append(chunk)
                    taken += len(chunk)
                self._held -= count
                self._handed += count
            finally:
                self._wanted = 0
                self._changed.notify_all()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _completes(self, count: int) -> bool:
        """Whether handing over ``count`` more bytes would hand over the whole declared body."""
        return self._total is not None and self._handed + count >= self._total


def ingest_declared(
    stream: IO[bytes],
    *,
    sha256: str,
    directory: Path,
    size_max: int,
    store: BlobStore,
    inspect: Inspector,
    size: int | None = None,
) -> tuple[Spool, Ingested]:
    """Receive a body whose SHA-256 the client declared, writing it to the store *while* it
    arrives (and to the spool, for the inspection), and commit the store write only when the
    digest matched and the model was accepted. Returns the spool (the caller discards it).

    ``size`` is the body's declared length (its Content-Length), when there is one: the store
    then writes parts of known size. A body that ends short of it does not match what was
    declared, whatever its digest.

    Raises :class:`BlobTooLarge` or :class:`DigestMismatch` with nothing stored.
    """
    key = content_key(sha256)
    if store.exists(key):
        spool = spool_stream(stream, directory=directory, size_max=size_max)
        if spool.sha256 != sha256 or (size is not None and spool.size != size):
            spool.discard()
            raise DigestMismatch()
        return spool, Ingested(key, inspect(spool.path), stored_new=False)
    relay = _BodyRelay(size)

    def store_write() -> BlobInfo:
        # The spool's own hash verifies the declared digest before the store write may
        # complete, so the store does not hash the body again.
        try:
            return store.put_stream(
                key,
                relay,  # type: ignore[arg-type]
                size_max=size_max,
                sha256=sha256,
                size=size,
            )
        finally:
            relay.store_done()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-upload") as pool:
        upload = pool.submit(store_write)
        try:
            try:
                # The store gets the body from memory; the spool is for the inspection alone,
                # so it leaves the bulk weights out (a gigabyte's write to disk spared).
                spool = spool_stream(
                    stream,
                    directory=directory,
                    size_max=size_max,
                    on_chunk=relay.put,
                    bulk=BulkRanges(BULK_TENSOR_BYTES_MIN),
                )
            finally:
                relay.end()
            if spool.sha256 != sha256 or (size is not None and spool.size != size):
                spool.discard()
                raise DigestMismatch()
        except BaseException:
            relay.decide(False)
            _settle(upload)
            raise
        try:
            report = inspect(spool.path)
        except BaseException:
            relay.decide(False)
            _settle(upload)
            spool.discard()
            raise
        relay.decide(report.ok)
        try:
            if not report.ok:
                _settle(upload)
                return spool, Ingested(key, report, stored_new=False)
            upload.result()
        except BaseException:
            spool.discard()
            raise
    return spool, Ingested(key, report, stored_new=True)


def _settle(upload: Future[BlobInfo]) -> None:
    """Wait for a refused store write to finish abandoning itself."""
    try:
        upload.result()
    except (_Refused, RegistryError):
        return


def sweep_spool(directory: Path, older_than_s: int) -> int:
    """Delete spool files a crashed process left behind; returns how many."""
    return remove_stale_files(directory, "upload-*.onnx", older_than_s)
