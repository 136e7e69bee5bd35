"""Bounds on what one client, or many at once, can make the receiver hold.

- A body that trickles in is cut off after ``VOICEHOOKS_BODY_TIMEOUT_SECONDS`` (408), so a slow
  client cannot keep a request, its spool file and its verifier alive for ever
  (``WebhookEndpoint`` reads the body inside ``body_deadline``).
- Beyond ``VOICEHOOKS_MAX_CONNECTIONS`` requests in flight, ``ConcurrencyLimit`` answers the
  documented JSON 503 at once instead of queueing more work than memory allows. uvicorn's own
  ``limit_concurrency`` is set a little higher (``CONNECTION_HEADROOM``) as the hard cap on open
  connections (file descriptors), idle keep-alive ones included; past that cap uvicorn itself
  answers a plain-text 503 and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.errors import WebhookError

CONNECTION_HEADROOM = 32


def body_timeout(seconds: float) -> WebhookError:
    return WebhookError(
        408, "body_timeout", f"the request body did not arrive within {seconds:g} seconds"
    )


@contextlib.asynccontextmanager
async def body_deadline(seconds: float) -> AsyncIterator[None]:
    """Raise the 408 ``WebhookError`` when the block (reading a body) outlasts ``seconds``.

    ``asyncio.timeout`` rather than anyio's ``fail_after``: the receiver runs on asyncio, and
    this is on every delivery's path, where anyio's cancel scope cost several times as much."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise body_timeout(seconds) from None


class ConcurrencyLimit:
    """ASGI middleware: at most ``limit`` HTTP requests in flight, the rest get 503 JSON.

    Everything runs on one event loop, so a plain counter is enough.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            error = WebhookError(
                503, "overloaded", "too many requests in flight; please retry shortly"
            )
            await error.response()(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
