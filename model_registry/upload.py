"""The streaming upload pipeline: body -> local spool -> (inspection ‖ blob store).

Why a local spool: the artifact's key is its SHA-256, known only once the last byte has
arrived, and the inspection needs the whole file. So the body is streamed, in bounded chunks,
into a spool file on local disk while it is hashed, measured and capped. Then two things run
at once: the confined inspection reads the spool, and (when the content is not stored yet)
the spool is uploaded to its content-addressed key. For large bodies the upload dominates, so
the inspection costs little wall time; for small ones the inspection runs first and nothing
is written unless the model is accepted.

Nothing stays behind: a refused model's freshly written blob is deleted before the response;
the spool is always deleted by the caller; a crash between the blob write and the database
row leaves an unreferenced blob that the sweeper removes after a grace period.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from model_registry.blobstore import CHUNK_BYTES, BlobStore, content_key
from model_registry.errors import BlobTooLarge
from model_registry.inspection import Report

# Below this size the inspection runs before any store write (cheap, and a refused model then
# never touches the store); above it the two run in parallel.
PARALLEL_BYTES_MIN = 32 * 1024 * 1024

Inspector = Callable[[Path], Report]


@dataclass(frozen=True)
class Spool:
    """An upload staged on local disk."""

    path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def spool_stream(stream: IO[bytes], *, directory: Path, size_max: int) -> Spool:
    """Copy ``stream`` to a new file in ``directory``, hashing it; refuse more than ``size_max``
    bytes (:class:`BlobTooLarge`) as soon as they arrive, leaving no file behind."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"upload-{uuid.uuid4().hex}.onnx"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "wb") as out:
            while chunk := stream.read(CHUNK_BYTES):
                size += len(chunk)
                if size > size_max:
                    raise BlobTooLarge(f"The model is larger than {size_max} bytes.")
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Spool(path, digest.hexdigest(), size)


@dataclass(frozen=True)
class Ingested:
    """A spooled upload after inspection: where its bytes are, and whether we wrote them."""

    key: str
    report: Report
    stored_new: bool


def _put(store: BlobStore, key: str, spool: Spool) -> None:
    with open(spool.path, "rb") as body:
        info = store.put_stream(key, body, size_max=spool.size)
    if info.sha256 != spool.sha256:  # the spool changed under us: never store a mislabelled blob
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


def spool_directory(path: str | os.PathLike[str]) -> Path:
    """The spool directory, created with owner-only permissions."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory
