"""The durable write of a delivery and its jobs, with group commit.

Every 200 we send must be backed by a committed transaction, and a commit (an fsync) is the
slowest thing on the ingest path. So one writer thread owns inbox writes: it takes every delivery
waiting in its queue, stores them all in one transaction, and only after that commit resolves each
request's future. Under no load a batch is one delivery and nothing waits for a timer; under load
batches grow by themselves and one fsync acknowledges many requests.

The writer thread shares the interpreter lock with the event loop that answers requests, so its
Python work per batch is kept small (see bench/README.md for the measurements): it keeps one
connection open, and writes with two statements rendered once for the dialect and run at the
driver level (``INSERT ... ON CONFLICT DO NOTHING RETURNING`` for the deliveries, one
``executemany`` for their jobs) instead of building, compiling and binding SQLAlchemy constructs
per batch. A key the insert skipped already existed: only then is it looked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy import Column, Connection, Engine, Table, select
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
# The columns the inbox writes, in statement order.
DELIVERY_COLUMNS = (
    "source",
    "event_type",
    "dedupe_key",
    "subject_id",
    "sha256",
    "size",
    "body",
    "blob_path",
    "content_type",
    "auth_method",
    "auth_key_index",
    "parse_error",
    "received_at",
)
JOB_COLUMNS = ("delivery_id", "handler", "status", "attempts", "run_at", "created_at")
# Rows per multi-row statement on SQLite: keeps its parameters (13 per delivery) well under
# SQLite's limit of 32766 whatever VOICEHOOKS_INBOX_MAX_BATCH is. (Postgres passes one array
# per column, of any length.)
ROWS_PER_STATEMENT = 500
_T = TypeVar("_T")
Pending = tuple["IncomingDelivery", asyncio.AbstractEventLoop, "asyncio.Future[Receipt]"]


Key = tuple[str, str]  # (source, dedupe_key)


class _Writes:
    """How one dialect stores a batch: driver-level SQL, rendered once, with bind processors.

    Values go through the bind processors SQLAlchemy itself would apply (UTC timestamps stored
    naive, SQLite's datetime text), so the rows are exactly what an ORM insert would write; only
    the per-batch statement building, compiling and binding is gone.
    """

    def __init__(self, dialect: Any) -> None:
        self._delivery_processors = _processors(deliveries_table, DELIVERY_COLUMNS, dialect)
        self._job_processors = _processors(jobs_table, JOB_COLUMNS, dialect)

    def store(
        self, conn: Connection, items: list[IncomingDelivery]
    ) -> tuple[dict[Key, int], dict[Key, int]]:
        """Insert the items whose key is new (keys are distinct): ``(new ids, existing ids)``."""
        raise NotImplementedError

    def insert_jobs(self, conn: Connection, jobs: list[tuple[int, str]], now: datetime) -> None:
        """Insert pending jobs, given as ``(delivery_id, handler)``."""
        raise NotImplementedError

    def _delivery_rows(self, items: Sequence[IncomingDelivery]) -> list[list[object]]:
        rows = []
        for item in items:
            identity, auth = item.identity, item.auth
            row: list[object] = [
                item.source,
                identity.event_type,
                identity.dedupe_key,
                identity.subject_id,
                item.sha256,
                item.size,
                item.body,
                item.blob_path,
                item.content_type,
                auth.method,
                auth.key_index,
                identity.parse_error,
                item.received_at,
            ]
            for index, processor in enumerate(self._delivery_processors):
                if processor is not None and row[index] is not None:
                    row[index] = processor(row[index])
            rows.append(row)
        return rows

    def _job_rows(self, jobs: list[tuple[int, str]], now: datetime) -> list[list[object]]:
        id_p, handler_p, *rest = self._job_processors
        constant = [JobStatus.pending.value, 0, now, now]
        tail = [v if p is None else p(v) for p, v in zip(rest, constant, strict=True)]
        return [
            [
                delivery_id if id_p is None else id_p(delivery_id),
                name if handler_p is None else handler_p(name),
                *tail,
            ]
            for delivery_id, name in jobs
        ]


class _SqliteWrites(_Writes):
    """Multi-row ``VALUES`` inserts, and lookups that answer in a single row.

    sqlite3 releases the interpreter lock around every step of a statement and must take it
    back after each, waiting for the event loop thread to let go of it: a statement that
    returned a row per delivery (``RETURNING``) would pay that once per delivery. So: look up
    which keys exist (one row), insert the others, look up their ids (one row). The write lock
    taken by ``BEGIN IMMEDIATE`` keeps the three consistent.
    """

    def __init__(self, dialect: Any) -> None:
        super().__init__(dialect)
        self._sql: dict[tuple[str, int], str] = {}  # (statement, rows) -> SQL

    def _statement(self, kind: str, rows: int) -> str:
        sql = self._sql.get((kind, rows))
        if sql is None:
            if kind == "deliveries":
                row = "(" + ", ".join(["?"] * len(DELIVERY_COLUMNS)) + ")"
                sql = (
                    f"INSERT INTO {deliveries_table.name} ({', '.join(DELIVERY_COLUMNS)}) "
                    f"VALUES {', '.join([row] * rows)}"
                )
            elif kind == "jobs":
                row = "(" + ", ".join(["?"] * len(JOB_COLUMNS)) + ")"
                sql = (
                    f"INSERT INTO {jobs_table.name} ({', '.join(JOB_COLUMNS)}) "
                    f"VALUES {', '.join([row] * rows)}"
                )
            else:  # "lookup": parameters (index, source, dedupe_key) per key
                # Answers "index id,index id,...": integers only, whatever the keys contain.
                sql = (
                    "WITH wanted (i, source, dedupe_key) AS "
                    f"(VALUES {', '.join(['(?, ?, ?)'] * rows)}) "
                    "SELECT group_concat(wanted.i || ' ' || d.id, ',') FROM wanted "
                    f"JOIN {deliveries_table.name} AS d "
                    "ON d.source = wanted.source AND d.dedupe_key = wanted.dedupe_key"
                )
            self._sql[(kind, rows)] = sql
        return sql

    def store(
        self, conn: Connection, items: list[IncomingDelivery]
    ) -> tuple[dict[Key, int], dict[Key, int]]:
        existing = self._lookup(conn, items)
        fresh = [item for item in items if item.key not in existing]
        for chunk in _chunks(fresh):
            params = [value for row in self._delivery_rows(chunk) for value in row]
            conn.exec_driver_sql(self._statement("deliveries", len(chunk)), tuple(params))
        return self._lookup(conn, fresh), existing

    def _lookup(self, conn: Connection, items: list[IncomingDelivery]) -> dict[Key, int]:
        found: dict[Key, int] = {}
        for chunk in _chunks(items):
            params: list[object] = []
            for index, item in enumerate(chunk):
                params += (index, item.source, item.identity.dedupe_key)
            sql = self._statement("lookup", len(chunk))
            pairs = conn.exec_driver_sql(sql, tuple(params)).scalar()
            for pair in pairs.split(",") if pairs else ():
                index, delivery_id = pair.split(" ")
                found[chunk[int(index)].key] = int(delivery_id)
        return found

    def insert_jobs(self, conn: Connection, jobs: list[tuple[int, str]], now: datetime) -> None:
        for chunk in _chunks(jobs):
            params = [value for row in self._job_rows(chunk, now) for value in row]
            conn.exec_driver_sql(self._statement("jobs", len(chunk)), tuple(params))


class _PostgresWrites(_Writes):
    """One ``INSERT ... SELECT FROM unnest(<one array per column>)`` per table.

    The statement text is the same for every batch size, so psycopg parses it once and Postgres
    keeps it prepared; a batch is one round trip per table whatever its size. Existing keys are
    skipped (``ON CONFLICT DO NOTHING``) and only the new ids come back.
    """

    def __init__(self, dialect: Any) -> None:
        super().__init__(dialect)
        self._deliveries_sql = (
            f"INSERT INTO {deliveries_table.name} ({', '.join(DELIVERY_COLUMNS)}) "
            f"SELECT * FROM unnest({_arrays(deliveries_table, DELIVERY_COLUMNS, dialect)}) "
            "ON CONFLICT (source, dedupe_key) DO NOTHING RETURNING id, source, dedupe_key"
        )
        self._jobs_sql = (
            f"INSERT INTO {jobs_table.name} ({', '.join(JOB_COLUMNS)}) "
            f"SELECT * FROM unnest({_arrays(jobs_table, JOB_COLUMNS, dialect)})"
        )

    def store(
        self, conn: Connection, items: list[IncomingDelivery]
    ) -> tuple[dict[Key, int], dict[Key, int]]:
        columns = tuple(list(column) for column in zip(*self._delivery_rows(items), strict=True))
        new = {
            (source, key): delivery_id
            for delivery_id, source, key in conn.exec_driver_sql(self._deliveries_sql, columns)
        }
        existing: dict[Key, int] = {}
        for item in items:
            if item.key not in new:  # stored before (or by another receiver meanwhile)
                existing[item.key] = conn.execute(
                    select(deliveries_table.c.id).where(
                        deliveries_table.c.source == item.source,
                        deliveries_table.c.dedupe_key == item.identity.dedupe_key,
                    )
                ).scalar_one()
        return new, existing

    def insert_jobs(self, conn: Connection, jobs: list[tuple[int, str]], now: datetime) -> None:
        if jobs:
            columns = tuple(list(column) for column in zip(*self._job_rows(jobs, now), strict=True))
            conn.exec_driver_sql(self._jobs_sql, columns)


def _arrays(table: Table, names: Sequence[str], dialect: Any) -> str:
    """``%b::<type>[], ...``: one typed array per column, sent in binary (no text escaping)."""
    return ", ".join(f"%b::{table.c[name].type.compile(dialect=dialect)}[]" for name in names)


def _processors(
    table: Table, names: Sequence[str], dialect: Any
) -> list[Callable[[Any], Any] | None]:
    columns: list[Column[Any]] = [table.c[name] for name in names]
    return [c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns]


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
        # Lists of waiting deliveries (see accept), or _STOP.
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._waiting: dict[asyncio.AbstractEventLoop, list[Pending]] = {}
        self._thread: threading.Thread | None = None
        self._writes: _Writes = (
            _SqliteWrites(engine.dialect)
            if engine.dialect.name == "sqlite"
            else _PostgresWrites(engine.dialect)
        )
        # The writer thread's own connection, kept open between batches; only that thread
        # touches it (accept_now() from other threads uses a connection of its own).
        self._conn: Connection | None = None

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
        # Requests that arrive in the same turn of the event loop are handed to the writer
        # thread together: one queue operation (and at most one wake-up of that thread) per
        # turn rather than per request.
        waiting = self._waiting.get(loop)
        if waiting is None:
            waiting = self._waiting[loop] = []
            loop.call_soon(self._hand_over, loop)
        waiting.append((incoming, loop, future))
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue.put(self._waiting.pop(loop))

    def accept_now(self, incoming: IncomingDelivery) -> Receipt:
        """Store one delivery from the calling thread (in-process replay, tests)."""
        receipt = self._write([incoming], reuse=False)[0]
        self._notify([receipt])
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
                    if first is _STOP:
                        break
                    carry = list(first)  # type: ignore[call-overload]
                while not stopping and len(carry) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    carry.extend(item)  # type: ignore[arg-type]
                batch, carry = carry[: self._max_batch], carry[self._max_batch :]
                self._commit_batch(batch)
        finally:
            self._close_connection()

    def _commit_batch(self, batch: list[Pending]) -> None:
        metrics.INBOX_BATCH_SIZE.observe(len(batch))
        try:
            receipts = self._write([incoming for incoming, _, _ in batch], reuse=True)
        except Exception as exc:
            log.exception("inbox_write_failed", batch=len(batch))
            _resolve_all([(loop, future, None, exc) for _, loop, future in batch])
            return
        _resolve_all(
            [
                (loop, future, receipt, None)
                for (_, loop, future), receipt in zip(batch, receipts, strict=True)
            ]
        )
        self._notify(receipts)

    def _notify(self, receipts: list[Receipt]) -> None:
        if self._on_new_jobs is not None and any(r.jobs for r in receipts):
            self._on_new_jobs()

    def _write(self, items: list[IncomingDelivery], *, reuse: bool) -> list[Receipt]:
        try:
            return self._transaction(items, reuse=reuse)
        except IntegrityError:
            if len(items) == 1:
                # A constraint other than the dedupe key (which the insert skips) failed; the
                # retry reports it for this delivery alone.
                return self._transaction(items, reuse=reuse)
            return [receipt for item in items for receipt in self._write([item], reuse=reuse)]

    def _transaction(self, items: list[IncomingDelivery], *, reuse: bool) -> list[Receipt]:
        if not reuse:
            with self._engine.connect() as conn, conn.begin():
                return self._insert(conn, items)
        conn = self._connection()
        try:
            with conn.begin():
                return self._insert(conn, items)
        except IntegrityError:
            raise  # the transaction rolled back; the connection is fine
        except BaseException:
            # The connection may be broken (database restarted, disk error): the next batch
            # starts with a new one rather than reuse it.
            self._close_connection()
            raise

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self._engine.connect()
        return self._conn

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                conn.invalidate()

    def _insert(self, conn: Connection, items: list[IncomingDelivery]) -> list[Receipt]:
        # The first copy of each new key is stored; later copies (in this batch or after) are
        # duplicates that answer with the original id and create no jobs.
        fresh: dict[tuple[str, str], IncomingDelivery] = {}
        for item in items:
            fresh.setdefault(item.key, item)
        ids, existing = self._writes.store(conn, list(fresh.values()))
        job_counts: dict[int, int] = {}
        jobs: list[tuple[int, str]] = []
        for key, item in fresh.items():
            delivery_id = ids.get(key)
            if delivery_id is None or item.identity.parse_error is not None:
                continue
            specs = self._registry.handlers_for(item.source, item.identity.event_type)
            job_counts[delivery_id] = len(specs)
            jobs.extend((delivery_id, spec.name) for spec in specs)
        self._writes.insert_jobs(conn, jobs, utcnow())
        receipts = []
        for item in items:
            key = item.key
            delivery_id = ids.get(key)
            if delivery_id is not None and fresh[key] is item:
                receipts.append(Receipt(delivery_id, False, job_counts.get(delivery_id, 0)))
            else:
                receipts.append(Receipt(delivery_id or existing[key], True, 0))
        return receipts


def _chunks(rows: list[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        yield rows[start : start + ROWS_PER_STATEMENT]


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
            future.set_result(receipt)  # type: ignore[arg-type]
