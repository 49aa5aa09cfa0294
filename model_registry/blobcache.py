"""Verified artifacts on local disk, by content hash: the node's cache in front of the store.

A model is fetched from the blob store once per node, not once per server process, worker
restart or cold start: the first reader streams it into ``root/.incoming``, hashing as it
goes, and only bytes whose SHA-256 and size match what the caller expects are renamed into
``root/ab/cdef...``. Readers after that read the local file, whose hash is checked again before
a process first uses it and whenever the file has changed since it last did (a file altered on
disk is dropped and fetched anew, never run). The cache holds at most
``bytes_max`` bytes; when a fill would pass it, the least recently used files (by modification
time, which every hit refreshes) are deleted first. Several processes may share one root:
files appear by atomic rename, and deleting a file another process is reading is harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from model_registry.errors import BlobStoreError

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1 << 20
# A fill in ``.incoming`` untouched this long was left by a process that died mid-fetch.
INCOMING_STALE_S = 3600.0


# The store returned bytes that do not match the artifact's recorded hash or size.
class BlobIntegrityError(BlobStoreError, code="blob_integrity_error"):
    """The stored artifact does not match its record."""


class BlobCache:
    """Local copies of verified blobs under ``root``, at most ``bytes_max`` bytes in all."""

    def __init__(self, root: str | os.PathLike[str], bytes_max: int) -> None:
        self.root = Path(root)
        self.bytes_max = bytes_max
        self._incoming = self.root / ".incoming"
        # Files this process has hashed, by what a change to them would change: device, inode,
        # size and change time (which no one can set back). Checked before each use.
        self._verified: dict[str, tuple[int, int, int, int]] = {}

    def _path(self, sha256: str) -> Path:
        if not _SHA256_RE.fullmatch(sha256):
            raise ValueError("a cache key is a lower-case hex SHA-256")
        return self.root / sha256[:2] / sha256[2:]

    def read(self, sha256: str, size: int, fetch: Callable[[], BinaryIO]) -> bytes:
        """The blob's bytes, from the cache, or fetched, verified and kept."""
        with self.open(sha256, size, fetch) as body:
            return body.read(size)

    def open(self, sha256: str, size: int, fetch: Callable[[], BinaryIO]) -> BinaryIO:
        """The blob as an open, seekable local file, from the cache, or fetched, verified and
        kept; never held in memory. A blob larger than the whole cache is fetched to an
        unnamed file that goes away when it is closed."""
        path = self._path(sha256)
        try:
            cached = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        except FileNotFoundError:
            pass
        else:
            if self._intact(sha256, cached, size):
                with contextlib.suppress(OSError):
                    os.utime(path)
                self._verified[sha256] = _identity(os.fstat(cached.fileno()))
                cached.seek(0)
                return cached
            cached.close()
            self._verified.pop(sha256, None)
            path.unlink(missing_ok=True)
        self._incoming.mkdir(parents=True, exist_ok=True)
        self._sweep_incoming()
        keep = 0 < size <= self.bytes_max
        out = tempfile.NamedTemporaryFile(dir=self._incoming, delete=False)  # noqa: SIM115
        try:
            digest = hashlib.sha256()
            got = 0
            with fetch() as body:
                while chunk := body.read(min(_CHUNK_BYTES, size + 1 - got)):
                    got += len(chunk)
                    if got > size:
                        break
                    digest.update(chunk)
                    out.write(chunk)
            if got != size or digest.hexdigest() != sha256:
                raise BlobIntegrityError(
                    log_detail=f"blob {sha256} came back with {got} bytes and another hash"
                )
            out.flush()
            reader = open(out.name, "rb")  # noqa: SIM115 - returned to the caller
            if keep:
                self._make_room(size)
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(out.name, path)
                self._verified[sha256] = _identity(os.fstat(reader.fileno()))
            else:
                os.unlink(out.name)  # the open reader keeps the bytes until it is closed
            return reader
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(out.name)
            raise
        finally:
            out.close()

    def _sweep_incoming(self) -> None:
        """Delete fills that a killed process left in ``.incoming`` (they count in no bound):
        any file older than :data:`INCOMING_STALE_S`, far longer than a fill takes."""
        cutoff = time.time() - INCOMING_STALE_S
        for entry in os.scandir(self._incoming):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)

    def _intact(self, sha256: str, cached: BinaryIO, size: int) -> bool:
        """Whether the cached file still holds the blob: its size, and its hash unless this
        process hashed it and it has not changed since."""
        stat = os.fstat(cached.fileno())
        if stat.st_size != size:
            return False
        if self._verified.get(sha256) == _identity(stat):
            return True
        digest = hashlib.sha256()
        while chunk := cached.read(_CHUNK_BYTES):
            digest.update(chunk)
        return digest.hexdigest() == sha256

    def _make_room(self, incoming: int) -> None:
        """Delete least recently used files until ``incoming`` more bytes fit."""
        files = []
        total = 0
        for directory in self.root.iterdir():
            if directory.name == self._incoming.name or not directory.is_dir():
                continue
            for entry in os.scandir(directory):
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    files.append((stat.st_mtime, stat.st_size, entry.path))
                    total += stat.st_size
        files.sort()
        for _mtime, file_size, file_path in files:
            if total + incoming <= self.bytes_max:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(file_path)
            total -= file_size

    def size_bytes(self) -> int:
        """Bytes the cache holds now."""
        return sum(
            entry.stat().st_size
            for directory in self.root.glob("[0-9a-f][0-9a-f]")
            for entry in os.scandir(directory)
        )


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_ctime_ns)
