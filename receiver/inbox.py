"""The durable write of a delivery and its jobs, with group commit.

Every 200 we send must be backed by a committed transaction, and a commit (an fsync) is the
slowest thing on the ingest path. So one writer thread owns inbox writes: it takes every delivery
waiting in its queue, stores them all in one transaction, and only after that commit resolves each
request's future. Under no load a batch is one delivery and nothing waits for a timer; under load
batches grow by themselves and one fsync acknowledges many requests.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy import Connection, Engine, insert, select, tuple_
from sqlalchemy.exc import IntegrityError

from receiver import metrics
from receiver.registry import Registry
from receiver.sources.base import Authenticity, Identity
from receiver.store.db import writer
from receiver.store.models import Delivery, Job, JobStatus
from receiver.store.types import utcnow

log = structlog.get_logger(__name__)
deliveries_table = Delivery.__table__  # type: ignore[attr-defined]
jobs_table = Job.__table__  # type: ignore[attr-defined]


@dataclass
class IncomingDelivery:
    source: str
    identity: Identity
    auth: Authenticity
    sha256: str
    size: int
    body: bytes | None = None
    blob_path: str | None = None
    content_type: str | None = None
    received_at: datetime = field(default_factory=utcnow)

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.identity.dedupe_key)

    def row(self) -> dict[str, object]:
        return {
            "source": self.source,
            "event_type": self.identity.event_type,
            "dedupe_key": self.identity.dedupe_key,
            "subject_id": self.identity.subject_id,
            "sha256": self.sha256,
            "size": self.size,
            "body": self.body,
            "blob_path": self.blob_path,
            "content_type": self.content_type,
            "auth_method": self.auth.method,
            "auth_key_index": self.auth.key_index,
            "parse_error": self.identity.parse_error,
            "received_at": self.received_at,
        }


@dataclass(frozen=True)
class Receipt:
    delivery_id: int
    duplicate: bool
    jobs: int


_STOP = object()


class Inbox:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        *,
        max_batch: int = 256,
        on_new_jobs: Callable[[], None] | None = None,
    ) -> None:
        self._engine = writer(engine)
        self._registry = registry
        self._max_batch = max_batch
        self._on_new_jobs = on_new_jobs
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="voicehooks-inbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    # -- API -------------------------------------------------------------------------------

    async def accept(self, incoming: IncomingDelivery) -> Receipt:
        """Store ``incoming``; returns once the transaction holding it has committed."""
        if self._thread is None:
            raise RuntimeError("inbox is not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Receipt] = loop.create_future()
        self._queue.put((incoming, loop, future))
        return await future

    def accept_now(self, incoming: IncomingDelivery) -> Receipt:
        """Store one delivery from the calling thread (in-process replay, tests)."""
        receipt = self._write([incoming])[0]
        self._notify([receipt])
        return receipt

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._commit_batch(batch)  # type: ignore[arg-type]

    def _commit_batch(
        self,
        batch: list[tuple[IncomingDelivery, asyncio.AbstractEventLoop, asyncio.Future[Receipt]]],
    ) -> None:
        metrics.INBOX_BATCH_SIZE.observe(len(batch))
        try:
            receipts = self._write([incoming for incoming, _, _ in batch])
        except Exception as exc:
            log.exception("inbox_write_failed", batch=len(batch))
            for _, loop, future in batch:
                loop.call_soon_threadsafe(_resolve, future, None, exc)
            return
        for (_, loop, future), receipt in zip(batch, receipts, strict=True):
            loop.call_soon_threadsafe(_resolve, future, receipt, None)
        self._notify(receipts)

    def _notify(self, receipts: list[Receipt]) -> None:
        if self._on_new_jobs is not None and any(r.jobs for r in receipts):
            self._on_new_jobs()

    def _write(self, items: list[IncomingDelivery]) -> list[Receipt]:
        try:
            with self._engine.begin() as conn:
                return self._insert(conn, items)
        except IntegrityError:
            if len(items) == 1:
                # Another receiver process stored the same key between our check and insert.
                with self._engine.begin() as conn:
                    return self._insert(conn, items)
            return [receipt for item in items for receipt in self._write([item])]

    def _insert(self, conn: Connection, items: list[IncomingDelivery]) -> list[Receipt]:
        keys = {item.key for item in items}
        existing: dict[tuple[str, str], int] = {
            (source, key): delivery_id
            for delivery_id, source, key in conn.execute(
                select(
                    deliveries_table.c.id, deliveries_table.c.source, deliveries_table.c.dedupe_key
                ).where(tuple_(deliveries_table.c.source, deliveries_table.c.dedupe_key).in_(keys))
            )
        }
        # The first copy of each new key is stored; later copies (in this batch or after) are
        # duplicates that answer with the original id and create no jobs.
        fresh: dict[tuple[str, str], IncomingDelivery] = {}
        for item in items:
            if item.key not in existing:
                fresh.setdefault(item.key, item)
        new_ids: list[int] = []
        if fresh:
            new_ids = list(
                conn.execute(
                    insert(deliveries_table).returning(
                        deliveries_table.c.id, sort_by_parameter_order=True
                    ),
                    [item.row() for item in fresh.values()],
                ).scalars()
            )
        job_counts: dict[int, int] = {}
        job_rows = []
        now = utcnow()
        for item, delivery_id in zip(fresh.values(), new_ids, strict=True):
            existing[item.key] = delivery_id
            if item.identity.parse_error is not None:
                continue
            specs = self._registry.handlers_for(item.source, item.identity.event_type)
            job_counts[delivery_id] = len(specs)
            job_rows.extend(
                {
                    "delivery_id": delivery_id,
                    "handler": spec.name,
                    "status": JobStatus.pending,
                    "attempts": 0,
                    "run_at": now,
                    "created_at": now,
                }
                for spec in specs
            )
        if job_rows:
            conn.execute(insert(jobs_table), job_rows)
        receipts = []
        for item in items:
            delivery_id = existing[item.key]
            if fresh.get(item.key) is item:
                receipts.append(Receipt(delivery_id, False, job_counts.get(delivery_id, 0)))
            else:
                receipts.append(Receipt(delivery_id, True, 0))
        return receipts


def _resolve(
    future: asyncio.Future[Receipt], receipt: Receipt | None, error: BaseException | None
) -> None:
    if future.done():  # the client went away; the delivery is stored all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(receipt)  # type: ignore[arg-type]
