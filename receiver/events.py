"""What a handler receives: the event (what arrived) and a context (what it may use)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import anyio
from sqlalchemy import Connection, Engine
from sqlmodel import Session

from receiver.body import ReceivedBody
from receiver.store.blobs import BlobStore

if TYPE_CHECKING:
    import httpx

    from receiver.inbox import Inbox
    from receiver.settings import Settings
    from receiver.sources.base import Source


@dataclass
class Event:
    """One stored delivery as its handler sees it.

    ``payload`` is the source's typed model (pydantic, unknown fields kept), built on first use so
    a handler that only streams the raw body never pays for parsing it. ``delivery_id`` is stable
    across retries and replays: use it as the idempotency key for side effects outside the database.
    """

    delivery_id: int
    source: str
    type: str | None
    subject_id: str | None
    received_at: datetime
    body: ReceivedBody
    _source: Source = field(repr=False)

    @cached_property
    def payload(self) -> Any:
        return self._source.parse(self.type, self.body)


_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass
class HandlerContext:
    """What a handler may use. Its writes all go into one transaction, ``session``'s, which the
    worker commits together with the job's end (done, or dead for a ``PermanentFailure`` that
    keeps its writes), guarded by the job's lease: a worker that lost its lease commits nothing.

    A sync handler runs on a worker thread and uses ``session`` directly. An async handler runs
    on the worker's event loop, where a blocking database call would stall every other job, so
    it reaches the same transaction with ``await ctx.write(fn, ...)``, which runs
    ``fn(session, ...)`` on a thread. ``await ctx.read(fn, ...)`` runs ``fn(connection, ...)``
    on a separate connection, outside the transaction: a look before slow work (a download)
    that takes no lock. On SQLite the transaction holds the write lock from its first statement
    to the commit, so do slow work before the first ``write``, never between it and returning.
    """

    session: Session
    blobs: BlobStore
    http: httpx.AsyncClient
    settings: Settings
    job_id: int
    attempt: int
    # Reads outside the job's transaction go through the engine itself, not the session.
    engine: Engine | None = field(default=None, repr=False)

    async def write(
        self, fn: Callable[Concatenate[Session, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        return await anyio.to_thread.run_sync(lambda: fn(self.session, *args, **kwargs))

    async def read(
        self, fn: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        engine = self.engine
        if engine is None:
            raise RuntimeError("ctx.read needs the context's engine (the worker always sets it)")

        def run() -> _T:
            with engine.connect() as conn:
                return fn(conn, *args, **kwargs)

        return await anyio.to_thread.run_sync(run)


@dataclass
class PeriodicContext:
    """What a periodic task (``Blueprint.periodic``) may use. It runs on the worker's event loop:
    blocking work (database calls, file writes) goes to a thread (``anyio.to_thread``).
    ``inbox.accept_now`` stores a delivery and its jobs exactly as ingest does."""

    settings: Settings
    engine: Engine
    blobs: BlobStore
    http: httpx.AsyncClient
    sources: dict[str, Source]
    inbox: Inbox


class PermanentFailure(Exception):
    """Raise from a handler when retrying cannot help (bad data, expired URL): the job goes
    straight to ``dead`` with this message, instead of using up its retries.

    Normally the handler's writes are rolled back with it. ``keep_writes=True`` commits them
    with the job's death instead (still under the lease guard): a handler that recorded what it
    learned (a kie.ai task's state) before finding it cannot finish (its audio has expired).
    """

    def __init__(self, message: str, *, keep_writes: bool = False) -> None:
        super().__init__(message)
        self.keep_writes = keep_writes


class RetryLater(Exception):
    """Raise when retrying will help, but not before ``delay`` seconds: a provider that answered
    429 with ``Retry-After``, or 503 while it is busy. The job is retried like after any other
    exception (its writes rolled back, an attempt used up), only never sooner than ``delay``,
    even when the exponential backoff would come back earlier."""

    def __init__(self, message: str, *, delay: float) -> None:
        super().__init__(message)
        self.delay = max(0.0, delay)


class RunAgainLater(Exception):
    """Raise when the job did its part for now and must look again later (a provider's task is
    still running, so its state is polled every few seconds). Not a failure: the handler's
    writes commit, the job goes back to ``pending`` due in ``delay`` seconds, and its attempts
    start again from zero, so a long wait never uses up the retries that real errors need."""

    def __init__(self, delay: float, reason: str = "not finished yet") -> None:
        super().__init__(reason)
        self.delay = max(0.0, delay)
