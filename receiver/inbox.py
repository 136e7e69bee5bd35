"""The durable write of a delivery and its jobs, with group commit.

Every 200 we send must be backed by a committed transaction, and a commit (an fsync) is the
slowest thing on the ingest path. So writer threads own inbox writes: a writer takes every
delivery waiting in the queue, stores them all in one transaction, and only after that commit
resolves each request's future. Under no load a batch is one delivery and nothing waits for a
timer; under load batches grow by themselves and one fsync acknowledges many requests.

The writers share the interpreter lock with the event loop that answers requests, so what they
do per batch is kept small (bench/README.md has the measurements): each keeps one database
connection of its own open and stores a batch with as few statements as the database allows,
rendered once per dialect (``receiver.jobs``, which owns every statement on these tables) and
run straight on the driver's cursor, with the values passed through the same bind processors
SQLAlchemy would use. On both databases the common batch is a single statement in autocommit
mode (see ``jobs.SqliteBatchWrites`` and ``jobs.PostgresBatchWrites``). Requests that arrive
in the same turn of the event loop reach the writers as one list, and the answers of a batch go
back to the loop in one callback. SQLite has one writer (it allows one at a time);
Postgres two, so that one batch is prepared and sent while the other waits for its commit. A
kept connection that the database dropped while idle is replaced, and the batch retried once,
instead of failing the deliveries it carried.

A request waits for its commit at most ``timeout`` seconds (``VOICEHOOKS_STORE_TIMEOUT_SECONDS``):
while the database is away or stuck the answer is 503 within that time, never a hang, and a
delivery whose request gave up before its batch was written is left out of that batch (its sender
retries it). Postgres connections of the writers also carry a ``statement_timeout`` of that length.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from receiver import jobs, metrics, wakeup
from receiver.ingest_signal import IngestSignal
from receiver.jobs import IncomingDelivery, Key, Receipt, Routes
from receiver.store.db import StoreFile

log = structlog.get_logger(__name__)
__all__ = ["Inbox", "IncomingDelivery", "Receipt", "StoreTimeout"]


class Routing(Protocol):
    """What the inbox needs of the registry: which handlers get a job for which event
    (``Registry`` is one; the inbox process keeps the routes it was sent)."""

    def routes(self) -> Routes: ...


class StoreTimeout(Exception):
    """The store did not commit a delivery in time; the request is answered 503."""


POSTGRES_WRITERS = 2  # writer threads (and connections) on Postgres; see Inbox.__init__
Pending = tuple["IncomingDelivery", asyncio.AbstractEventLoop, "asyncio.Future[Receipt]"]


class Inbox:
    def __init__(
        self,
        engine: Engine,
        registry: Routing,
        *,
        max_batch: int = 256,
        on_new_jobs: Callable[[], None] | None = None,
        timeout: float | None = None,
        ingest_signal: IngestSignal | None = None,
    ) -> None:
        self._engine = engine
        self._timeout = timeout
        self._registry = registry
        self._max_batch = max_batch
        self._on_new_jobs = on_new_jobs
        # Raised while deliveries wait for a commit: workers defer to them (ingest_signal.py).
        self._signal = ingest_signal
        # Lists of waiting deliveries (see accept), or None: stop.
        self._queue: queue.SimpleQueue[list[Pending] | None] = queue.SimpleQueue()
        self._waiting: dict[asyncio.AbstractEventLoop, list[Pending]] = {}
        self._threads: list[threading.Thread] = []
        dialect = engine.dialect
        self._writes = jobs.batch_writes(dialect)
        self._integrity_errors = (IntegrityError, dialect.loaded_dbapi.IntegrityError)
        # SQLite has one writer at a time, so one writer thread. Postgres commits concurrent
        # transactions side by side: a second writer thread starts a batch while the first
        # waits for its commit, which halves the time a delivery waits for "its" commit.
        self._writer_count = 1 if dialect.name == "sqlite" else POSTGRES_WRITERS
        # Postgres tells other processes' workers about new jobs; SQLite's watch commits.
        self._announce = dialect.name == "postgresql"
        # Each writer thread's own DBAPI connection (from the engine's pool, so it gets the
        # engine's connect-time settings), kept open between batches. accept_now() from other
        # threads takes a connection of its own.
        self._local = threading.local()
        # A SQLite file deleted or replaced under us fails every batch (503), see StoreFile.
        self.store_file = StoreFile(engine)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.store_file.remember()
        self._threads = [
            threading.Thread(target=self._run, name=f"voicehooks-inbox-{n}", daemon=True)
            for n in range(self._writer_count)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    # -- API -------------------------------------------------------------------------------

    async def accept(self, incoming: IncomingDelivery) -> Receipt:
        """Store ``incoming``; returns once the transaction holding it has committed."""
        if not self._threads:
            raise RuntimeError("inbox is not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Receipt] = loop.create_future()
        # Requests that arrive in the same turn of the event loop are handed to the writers
        # together: one queue operation (and at most one wake-up of a writer) per turn rather
        # than per request.
        waiting = self._waiting.get(loop)
        if waiting is None:
            waiting = self._waiting[loop] = []
            loop.call_soon(self._hand_over, loop)
        waiting.append((incoming, loop, future))
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._signal is not None:
            self._signal.set_busy(True)
        handed = self._waiting.pop(loop)
        if self._timeout is not None:
            # One timer for the deliveries handed over together, not one per request: they all
            # started waiting in this turn of the loop. It holds their futures, not their bodies.
            futures = [future for _, _, future in handed]
            loop.call_later(self._timeout, give_up, futures, self._timeout)
        self._queue.put(handed)

    def accept_now(self, incoming: IncomingDelivery) -> Receipt:
        """Store one delivery from the calling thread (in-process replay, backfill, tests).

        Workers in other processes are told too (Postgres ``NOTIFY``), as after a batch: a
        command that queues work must not leave it waiting for their next poll."""
        receipt = self._write([incoming], reuse=False)[0]
        self._notify([receipt])
        if self._announce and receipt.jobs:
            conn = self._new_connection()
            try:
                wakeup.announce(conn.dbapi_connection)
            except Exception as exc:
                log.warning("inbox_notify_failed", error=type(exc).__name__)
            finally:
                conn.close()
        return receipt

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        carry: list[Pending] = []  # waiting beyond the last batch's max_batch
        try:
            while True:
                if not carry:
                    if stopping:
                        break
                    first = self._queue.get()
                    if first is None:
                        break
                    carry = list(first)
                while not stopping and len(carry) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    carry.extend(item)
                batch, carry = carry[: self._max_batch], carry[self._max_batch :]
                self._commit_batch(batch)
                if self._signal is not None:
                    self._signal.set_busy(bool(carry) or not self._queue.empty())
        finally:
            self._close_connection()

    def _commit_batch(self, batch: list[Pending]) -> None:
        # Requests that gave up waiting (StoreTimeout) were answered 503: storing them now would
        # only surprise. Reading done() from this thread is a benign race: one that gives up
        # just after this check is stored and answered 503, and its retry is a duplicate.
        batch = [pending for pending in batch if not pending[2].done()]
        if not batch:
            return
        try:
            receipts = self.store_batch([incoming for incoming, _, _ in batch])
        except Exception as exc:
            _resolve_all([(loop, future, None, exc) for _, loop, future in batch])
            return
        _resolve_all(
            [
                (loop, future, receipt, None)
                for (_, loop, future), receipt in zip(batch, receipts, strict=True)
            ]
        )

    def store_batch(self, items: list[IncomingDelivery]) -> list[Receipt]:
        """Store ``items`` in one transaction on this thread's kept connection, and tell the
        workers: what a writer thread does with a batch, and what the inbox process
        (receiver/inbox_process.py) calls directly. A failure is logged and raised."""
        metrics.INBOX_BATCH_SIZE.observe(len(items))
        started = time.perf_counter()
        try:
            receipts = self._write(items, reuse=True)
        except Exception as exc:
            # A database that is away fails every batch the same way: one line each, no
            # traceback. Anything else is a bug worth its traceback.
            expected = isinstance(exc, self._engine.dialect.loaded_dbapi.Error)
            log.error(
                "inbox_write_failed",
                batch=len(items),
                error=f"{type(exc).__name__}: {exc}",
                exc_info=not expected,
            )
            raise
        metrics.INBOX_COMMIT_SECONDS.observe(time.perf_counter() - started)
        self._notify(receipts)
        if self._announce and any(r.jobs for r in receipts):
            self._announce_to_other_processes()
        return receipts

    def close(self) -> None:
        """Close the calling thread's kept connection (``store_batch`` outside the writers)."""
        self._close_connection()

    def _announce_to_other_processes(self) -> None:
        """NOTIFY workers in other processes (see receiver/wakeup.py); the requests are answered
        already, and a failure costs a worker at most a poll interval."""
        try:
            wakeup.announce(self._connection().dbapi_connection)
        except Exception as exc:
            log.warning("inbox_notify_failed", error=type(exc).__name__)
            self._close_connection()

    def _notify(self, receipts: list[Receipt]) -> None:
        if self._on_new_jobs is not None and any(r.jobs for r in receipts):
            self._on_new_jobs()

    def _write(self, items: list[IncomingDelivery], *, reuse: bool) -> list[Receipt]:
        self.store_file.check()
        try:
            return self._transaction(items, reuse=reuse)
        except self._integrity_errors:
            if len(items) == 1:
                # A constraint other than the dedupe key (which is checked first) failed: the
                # retry reports it for this delivery alone.
                return self._transaction(items, reuse=reuse)
            return [receipt for item in items for receipt in self._write([item], reuse=reuse)]

    def _transaction(self, items: list[IncomingDelivery], *, reuse: bool) -> list[Receipt]:
        opened = not reuse or getattr(self._local, "conn", None) is None
        conn = self._connection() if reuse else self._new_connection()
        broken = False
        try:
            return self._insert(conn, items)
        except BaseException as exc:
            try:
                conn.rollback()
            except Exception:
                broken = True
            # Anything but a constraint violation may mean a broken connection (database
            # restarted, disk error): the next batch starts with a new one.
            broken = broken or not isinstance(exc, self._integrity_errors)
            if broken and reuse:
                lost = not opened and self._lost_connection(exc, conn)
                self._close_connection()
                if lost:
                    # The kept connection died while idle (a restart, a failover): what a
                    # pre-ping would have caught at checkout. Try once more on a new one. If the
                    # lost attempt had committed after all, the keys now exist and the retry
                    # answers with their ids.
                    log.warning("inbox_reconnecting", error=type(exc).__name__)
                    return self._transaction(items, reuse=True)
            raise
        finally:
            if not reuse:
                conn.invalidate() if broken else conn.close()

    def _lost_connection(self, exc: BaseException, conn: Any) -> bool:
        dialect = self._engine.dialect
        if not isinstance(exc, dialect.loaded_dbapi.Error):
            return False
        return bool(dialect.is_disconnect(exc, conn.dbapi_connection, None))

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._new_connection()
        return conn

    def _new_connection(self) -> Any:
        """A DBAPI connection with the engine's connect-time settings, detached from its pool:
        the inbox's TEMP trigger must never reach a connection that other code then uses, and
        closing it closes it for good."""
        conn = self._engine.raw_connection()
        conn.detach()
        if self._timeout is not None and self._engine.dialect.name == "postgresql":
            # A statement stuck behind a lock is cancelled by the server in time, too.
            cursor = conn.cursor()
            try:
                cursor.execute(f"SET statement_timeout = {int(self._timeout * 1000)}")
            finally:
                cursor.close()
            conn.commit()
        return conn

    def _close_connection(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            try:
                conn.invalidate()  # closes it for good rather than pool a suspect connection
            except Exception:
                log.warning("inbox_connection_close_failed", exc_info=True)

    def _insert(self, conn: Any, items: list[IncomingDelivery]) -> list[Receipt]:
        # The first copy of each new key is stored; later copies (in this batch or after) are
        # duplicates that answer with the original id and create no jobs.
        fresh: dict[Key, IncomingDelivery] = {}
        for item in items:
            fresh.setdefault(item.key, item)
        routes = self._registry.routes()
        ids, existing = self._writes.write(conn, list(fresh.values()), routes)
        receipts = []
        conflicts: list[tuple[int, str]] = []
        for item in items:
            key = item.key
            delivery_id = ids.get(key)
            if delivery_id is not None and fresh[key] is item:
                jobs = 0 if item.identity.parse_error is not None else self._job_count(item, routes)
                receipts.append(Receipt(delivery_id, False, jobs))
                continue
            # A duplicate: of a delivery in this batch, or of one stored before.
            if delivery_id is not None:
                stored_sha256 = fresh[key].sha256
            else:
                delivery_id, stored_sha256 = existing[key]
            conflict = item.sha256 != stored_sha256
            if conflict:
                conflicts.append((delivery_id, item.sha256))
                metrics.DELIVERY_CONFLICTS.labels(item.source).inc()
            receipts.append(Receipt(delivery_id, True, 0, conflict))
        if conflicts:
            self._writes.record_conflicts(conn, conflicts)
        return receipts

    def _job_count(self, item: IncomingDelivery, routes: Routes) -> int:
        source, event_type = item.source, item.identity.event_type
        return sum(1 for route in routes if route[0] == source and route[1] == event_type)


def give_up(futures: list[asyncio.Future[Receipt]], timeout: float) -> None:
    """The store did not answer in time: those still waiting get ``StoreTimeout`` (503). Their
    futures are then done, so a writer that has not started their batch yet leaves them out
    (see ``_commit_batch``). The inbox process's receiver side uses it too."""
    for future in futures:
        if not future.done():
            future.set_exception(StoreTimeout(f"the store did not answer within {timeout:g} s"))


def _resolve_all(
    outcomes: list[
        tuple[
            asyncio.AbstractEventLoop,
            asyncio.Future[Receipt],
            Receipt | None,
            BaseException | None,
        ]
    ],
) -> None:
    """Hand each outcome to its request's event loop: one wake-up per loop, not per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any, Any]]] = {}
    for loop, future, receipt, error in outcomes:
        by_loop.setdefault(loop, []).append((future, receipt, error))
    for loop, results in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve_many, results)


def _resolve_many(
    results: list[tuple[asyncio.Future[Receipt], Receipt | None, BaseException | None]],
) -> None:
    for future, receipt, error in results:
        if future.done():  # the client went away; the delivery is stored all the same
            continue
        if error is not None:
            future.set_exception(error)
        else:
            assert receipt is not None  # a batch gives each item a receipt or an error
            future.set_result(receipt)
