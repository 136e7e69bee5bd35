"""Waiting out a store that is away: bounded exponential backoff, said once rather than per poll.

While the database is unreachable every claim fails the same way. A worker that logged a
traceback and tried again at its usual poll interval would flood the log and the database's
connection attempts; one that gave up would stay idle after the database came back. So a worker
backs off (doubling from its poll interval up to ``MAX_SECONDS``, with jitter so that many
workers do not reconnect in step), says "store_unavailable" once when the trouble starts and
"store_recovered" once when it ends, and never stops trying.
"""

from __future__ import annotations

import random
import time

import structlog

log = structlog.get_logger(__name__)
MAX_SECONDS = 5.0  # the longest a worker waits between two attempts: its delay after recovery


class StoreBackoff:
    """Consecutive store failures of one worker (its loops share it: one event loop, no lock)."""

    def __init__(self, role: str, base_seconds: float, max_seconds: float = MAX_SECONDS) -> None:
        self.role = role
        self.base = max(0.01, base_seconds)
        self.max = max(self.base, max_seconds)
        self.failures = 0
        self._since = 0.0

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns how many seconds to wait before the next attempt."""
        self.failures += 1
        if self.failures == 1:
            self._since = time.monotonic()
            log.warning("store_unavailable", role=self.role, error=f"{type(exc).__name__}: {exc}")
        delay = min(self.max, self.base * 2 ** (self.failures - 1))
        return delay * random.uniform(0.5, 1.0)

    def succeeded(self) -> None:
        if self.failures:
            log.info(
                "store_recovered",
                role=self.role,
                failures=self.failures,
                seconds=round(time.monotonic() - self._since, 1),
            )
            self.failures = 0
