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
import queue
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from model_registry.blobstore import CHUNK_BYTES, BlobInfo, BlobStore, content_key
from model_registry.errors import BlobTooLarge, RegistryError
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


def spool_stream(
    stream: IO[bytes],
    *,
    directory: Path,
    size_max: int,
    on_chunk: Callable[[bytes], None] | None = None,
) -> Spool:
    """Copy ``stream`` to a new file in ``directory``, hashing it; refuse more than ``size_max``
    bytes (:class:`BlobTooLarge`) as soon as they arrive, leaving no file behind. ``on_chunk``
    sees every accepted chunk too."""
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
                if on_chunk is not None:
                    on_chunk(chunk)
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


# --- streaming straight to the store when the client declares the digest ---------------------

_FEED_CHUNKS_MAX = 8  # chunks buffered between the request and the store upload


class DigestMismatch(RegistryError):
    code = "digest_mismatch"
    default_detail = "The body does not match its declared SHA-256."


class _Refused(Exception):
    """Raised inside the store's reader to make it abandon (abort) the write."""


class _Gate:
    """A stream from the request thread to a store write running in another thread.

    It hands chunks over through a small bounded queue (so a slow store slows the client down
    instead of filling memory) and reports end-of-stream only once the upload is approved:
    until then the store holds its last part back, and a refusal makes the store's write fail,
    which abandons it (an S3 multipart upload is aborted, a temp file deleted). So an object
    appears under its content key only after the bytes were verified and the model accepted.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_FEED_CHUNKS_MAX)
        self._buffer = b""
        self._ended = False
        self._verdict = threading.Event()
        self._approved = False

    def feed(self, chunk: bytes | None, alive: Callable[[], bool]) -> None:
        """Queue ``chunk`` (None: the end); gives up when the store write has stopped."""
        while True:
            try:
                self._queue.put(chunk, timeout=0.5)
                return
            except queue.Full:
                if not alive():
                    return

    def decide(self, approved: bool) -> None:
        self._approved = approved
        self._verdict.set()

    def read(self, n: int = -1) -> bytes:
        n = CHUNK_BYTES if n is None or n < 0 else n
        if self._verdict.is_set() and not self._approved:
            raise _Refused()
        # Collect whole chunks and join once: appending to one bytes object would copy each
        # part over and over.
        pieces = [self._buffer] if self._buffer else []
        have = len(self._buffer)
        while have < n and not self._ended:
            item = self._queue.get()
            if item is None:
                self._ended = True
            else:
                pieces.append(item)
                have += len(item)
        if have == 0:
            self._buffer = b""
            self._verdict.wait()
            if not self._approved:
                raise _Refused()
            return b""
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        out, self._buffer = data[:n], data[n:]
        return out


def ingest_declared(
    stream: IO[bytes],
    *,
    sha256: str,
    directory: Path,
    size_max: int,
    store: BlobStore,
    inspect: Inspector,
) -> tuple[Spool, Ingested]:
    """Receive a body whose SHA-256 the client declared, writing it to the store *while* it
    arrives (and to the spool, for the inspection), and commit the store write only when the
    digest matched and the model was accepted. Returns the spool (the caller discards it).

    Raises :class:`BlobTooLarge` or :class:`DigestMismatch` with nothing stored.
    """
    key = content_key(sha256)
    if store.exists(key):
        spool = spool_stream(stream, directory=directory, size_max=size_max)
        if spool.sha256 != sha256:
            spool.discard()
            raise DigestMismatch()
        return spool, Ingested(key, inspect(spool.path), stored_new=False)
    gate = _Gate()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-upload") as pool:
        upload = pool.submit(store.put_stream, key, gate, size_max=size_max)  # type: ignore[arg-type]

        def alive() -> bool:
            return not upload.done()

        try:
            spool = spool_stream(
                stream,
                directory=directory,
                size_max=size_max,
                on_chunk=lambda chunk: gate.feed(chunk, alive),
            )
        except BaseException:
            gate.decide(False)
            gate.feed(None, alive)
            _settle(upload)
            raise
        gate.feed(None, alive)
        if spool.sha256 != sha256:
            gate.decide(False)
            _settle(upload)
            spool.discard()
            raise DigestMismatch()
        try:
            report = inspect(spool.path)
        except BaseException:
            gate.decide(False)
            _settle(upload)
            spool.discard()
            raise
        gate.decide(report.ok)
        if not report.ok:
            _settle(upload)
            return spool, Ingested(key, report, stored_new=False)
        try:
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


def spool_directory(path: str | os.PathLike[str]) -> Path:
    """The spool directory, created with owner-only permissions."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory
