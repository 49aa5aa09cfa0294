"""Files the marketplace writes whole: they appear complete under their name, or not at all."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def replaced_atomically(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file to write that replaces ``path`` when the block ends, and leaves no trace if it fails.

    It is written beside the target (``.NAME.PID.partial``, created afresh with ``mode``: a
    secret is never readable by others, not even for a moment), flushed to disk, then renamed
    over the target, so that a reader sees the old file or the whole new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
