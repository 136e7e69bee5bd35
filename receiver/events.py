"""What a handler receives: the event (what arrived) and a context (what it may use)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from receiver.body import ReceivedBody
from receiver.store.blobs import BlobStore

if TYPE_CHECKING:
    import httpx

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


@dataclass
class HandlerContext:
    """Writes made through ``session`` commit atomically with the job being marked done."""

    session: Session
    blobs: BlobStore
    http: httpx.AsyncClient
    settings: Settings
    job_id: int
    attempt: int


class PermanentFailure(Exception):
    """Raise from a handler when retrying cannot help (bad data, expired URL): the job goes
    straight to ``dead`` with this message, instead of using up its retries."""
