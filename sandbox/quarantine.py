"""Who pays for a bad call: per-caller throttling and per-version quarantine.

A call that runs to its deadline, or whose worker crashes, throttles that caller on that
version for ``throttle_s``. A version is quarantined for everyone (for ``quarantine_s``) only
when calls from ``quarantine_callers`` distinct callers crashed its worker within
``quarantine_window_s``. Memory is bounded: past ``FAILING_MODELS_MAX`` entries the expired
ones are forgotten, and everything if that is not enough.
"""

from __future__ import annotations

import threading
import time

from sandbox.errors import CallerThrottled, ModelQuarantined

FAILING_MODELS_MAX = 4096


class Quarantine:
    """Throttled callers and quarantined versions; safe to use from many threads."""

    def __init__(
        self,
        *,
        throttle_s: float,
        quarantine_s: float,
        quarantine_window_s: float,
        quarantine_callers: int,
    ) -> None:
        self.throttle_s = throttle_s
        self.quarantine_s = quarantine_s
        self.quarantine_window_s = quarantine_window_s
        self.quarantine_callers = quarantine_callers
        self._lock = threading.Lock()
        # Per version: when each caller last crashed its worker.
        self._crashes: dict[str, dict[str, float]] = {}
        self._quarantined_until: dict[str, float] = {}
        self._throttled_until: dict[tuple[str, str], float] = {}

    def check(self, version: str, caller: str) -> None:
        """Refuse a quarantined version, and a throttled caller of it."""
        now = time.monotonic()
        with self._lock:
            until = self._quarantined_until.get(version)
            if until is not None and until <= now:
                del self._quarantined_until[version]
                self._crashes.pop(version, None)
                until = None
            throttled = self._throttled_until.get((version, caller))
            if throttled is not None and throttled <= now:
                del self._throttled_until[(version, caller)]
                throttled = None
        if until is not None:
            raise ModelQuarantined(retry_after_s=until - now)
        if throttled is not None:
            raise CallerThrottled(retry_after_s=throttled - now)

    def throttle(self, version: str, caller: str) -> None:
        """Make `caller` wait before running `version` again (its call cost a full deadline)."""
        if self.throttle_s <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._throttled_until) >= FAILING_MODELS_MAX:
                live = {k: t for k, t in self._throttled_until.items() if t > now}
                self._throttled_until = live if len(live) < FAILING_MODELS_MAX else {}
            self._throttled_until[(version, caller)] = now + self.throttle_s

    def record_crash(self, version: str, caller: str) -> None:
        """Count a call that cost its worker its life; quarantine after enough distinct callers.

        Failures the worker survives (terminate honoured, allocation refused, bad input) do
        not count: a buyer's bad inputs alone should not get a vendor's model quarantined. Nor
        do many crashes from one caller: that caller is throttled instead.
        """
        self.throttle(version, caller)
        now = time.monotonic()
        with self._lock:
            if version not in self._crashes and len(self._crashes) >= FAILING_MODELS_MAX:
                self._crashes.clear()
            callers = self._crashes.setdefault(version, {})
            callers[caller] = now
            for who in [w for w, at in callers.items() if now - at > self.quarantine_window_s]:
                del callers[who]
            if len(callers) >= self.quarantine_callers:
                self._quarantined_until[version] = now + self.quarantine_s

    def quarantined(self) -> dict[str, float]:
        """The quarantined versions and the seconds left of each."""
        now = time.monotonic()
        with self._lock:
            return {
                key: round(until - now, 1)
                for key, until in self._quarantined_until.items()
                if until > now
            }
