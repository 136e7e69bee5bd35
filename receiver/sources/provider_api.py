"""What every provider API client shares: how its failures are told apart, and pacing.

A provider's answer falls in one of two kinds, and the job that called it must know which:

* ``ProviderUnavailable``: retrying can help (429, 5xx, 409 "busy", a network error or timeout).
  It carries the provider's ``Retry-After`` when one was sent, so the job waits at least that.
* ``ProviderRefused``: retrying cannot change the answer (a bad key, no credit, the provider's
  own validation of the request). It carries the provider's code and message, which end the
  render as failed, word for word.

Messages never contain the API key: clients put it in a header only, and nothing here echoes
request headers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

# A Retry-After further out than this is treated as this: a job is not parked for a day.
MAX_RETRY_AFTER_SECONDS = 3600.0
MAX_MESSAGE_CHARS = 500


class ProviderError(Exception):
    def __init__(self, provider: str, code: str, message: str) -> None:
        self.provider = provider
        self.code = code
        self.message = message[:MAX_MESSAGE_CHARS]
        super().__init__(f"{provider}: {code}: {self.message}")


class ProviderRefused(ProviderError):
    """The provider said no, for a reason retrying cannot change."""


class ProviderUnavailable(ProviderError):
    """The provider could not answer now; ``retry_after`` is its own hint, when it gave one."""

    def __init__(
        self, provider: str, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(provider, code, message)
        self.retry_after = retry_after


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the response's ``Retry-After`` asks for, capped (see ``parse_retry_after``)."""
    return parse_retry_after(response.headers.get("retry-after"))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date (RFC 9110 10.2.3),
    capped at an hour so a provider's odd answer cannot park a job for days."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(MAX_RETRY_AFTER_SECONDS, max(0.0, seconds))


def json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def network_error(provider: str, exc: httpx.HTTPError) -> ProviderUnavailable:
    """A transport failure (refused, reset, timeout) as a retryable error, without the URL's
    query string (which is never a secret here, but stays out of messages on principle)."""
    what = type(exc).__name__
    detail = str(exc)
    return ProviderUnavailable(provider, "network", f"{what}: {detail}" if detail else what)


class SlidingWindowLimiter:
    """At most ``limit`` calls in any ``period`` seconds, in this process.

    ``wait()`` reserves the next free slot and returns how long to sleep before using it, so
    callers on any thread or event loop share one limit (a lock, no loop-bound primitives).
    Several worker processes each keep their own: the provider's 429 (retried, honouring its
    ``Retry-After``) is the backstop across processes.
    """

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._slots: deque[float] = deque()
        self._lock = threading.Lock()

    def wait(self) -> float:
        with self._lock:
            now = time.monotonic()
            while self._slots and self._slots[0] <= now - self.period:
                self._slots.popleft()
            start = now
            if len(self._slots) >= self.limit:
                start = max(now, self._slots[-self.limit] + self.period)
            self._slots.append(start)
            return start - now

    async def acquire(self) -> None:
        delay = self.wait()
        if delay > 0:
            await asyncio.sleep(delay)
