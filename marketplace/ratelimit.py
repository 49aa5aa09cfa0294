"""A sliding-window event counter per key, kept in one node's memory.

Each node counts on its own: N nodes behind a balancer give a client N times the budget, which
is what these limits can afford (they bound cost and guessing, not exact quotas).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Hashable

KEYS_MAX = 100_000  # keys remembered at once; the least recently seen are forgotten first


class WindowLimiter:
    """At most ``events_max`` events per key within any ``window_s`` seconds."""

    def __init__(self, events_max: int, window_s: float, keys_max: int = KEYS_MAX) -> None:
        self.events_max = events_max
        self.window_s = window_s
        self.keys_max = keys_max
        self._events: OrderedDict[Hashable, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: Hashable, now: float) -> deque[float]:
        seen = self._events.get(key)
        if seen is None:
            seen = self._events[key] = deque()
            while len(self._events) > self.keys_max:  # bound memory under a flood of keys
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        while seen and now - seen[0] > self.window_s:
            seen.popleft()
        return seen

    def _wait_s(self, seen: deque[float], now: float) -> int:
        if len(seen) < self.events_max:
            return 0
        return max(1, int(self.window_s - (now - seen[0])) + 1)

    def retry_after_s(self, key: Hashable) -> int:
        """Seconds until ``key`` may have another event, or 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            return self._wait_s(self._recent(key, now), now)

    def record(self, key: Hashable) -> None:
        """Count one event for ``key``."""
        now = time.monotonic()
        with self._lock:
            self._recent(key, now).append(now)

    def acquire(self, key: Hashable) -> int:
        """Count an event for ``key`` if the budget allows it (0), else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            seen = self._recent(key, now)
            wait_s = self._wait_s(seen, now)
            if not wait_s:
                seen.append(now)
            return wait_s
