"""A small thread-safe cache whose entries expire: the node's bounded-staleness caches.

Used where a database round trip on every request would cost more than the answer is worth
and a bounded delay before a change is seen is acceptable (verified tokens, the evaluate
lookup). Each process keeps its own; :meth:`TTLCache.discard` drops an entry at once where
the change is made, and ``ttl_s`` bounds how long other processes and nodes may still see the
old value. A TTL of 0 switches the cache off.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """At most ``entries_max`` entries, each served for at most ``ttl_s`` seconds."""

    def __init__(self, ttl_s: float, entries_max: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.entries_max = entries_max
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if found[0] <= time.monotonic():
                del self._entries[key]
                return None
            return found[1]

    def put(self, key: K, value: V) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.entries_max:
                self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def discard_where(self, predicate: Callable[[K, V], bool]) -> None:
        with self._lock:
            for key in [k for k, (_, v) in self._entries.items() if predicate(k, v)]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
