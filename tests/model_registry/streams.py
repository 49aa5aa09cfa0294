"""Streams for the registry's tests."""

from __future__ import annotations

import io


class Trickle(io.RawIOBase):
    """A stream that hands out at most ``step`` bytes per read, like a socket."""

    def __init__(self, data: bytes, step: int = 7919) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._step if n is None or n < 0 else min(n, self._step)
        out, self._data = self._data[:n], self._data[n:]
        return bytes(out)
