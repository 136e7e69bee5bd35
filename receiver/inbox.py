"""The durable write of a delivery and its jobs, with group commit.

Every 200 we send must be backed by a committed transaction, and a commit (an fsync) is the
slowest thing on the ingest path. So writer threads own inbox writes: a writer takes every
delivery waiting in the queue, stores them all in one transaction, and only after that commit
resolves each request's future. Under no load a batch is one delivery and nothing waits for a
timer; under load batches grow by themselves and one fsync acknowledges many requests.

The writers share the interpreter lock with the event loop that answers requests, so what they
do per batch is kept small (bench/README.md has the measurements): each keeps one database
connection of its own open and stores a batch with as few statements as the database allows,
rendered once per dialect and run straight on the driver's cursor, with the values passed through
the same bind processors SQLAlchemy would use. On both databases the common batch is a single
statement in autocommit mode (see ``_SqliteWrites`` and ``_PostgresWrites``). Requests that
arrive in the same turn of the event loop reach the writers as one list, and the answers of a
batch go back to the loop in one callback. SQLite has one writer (it allows one at a time);
Postgres two, so that one batch is prepared and sent while the other waits for its commit. A
kept connection that the database dropped while idle is replaced, and the batch retried once,
instead of failing the deliveries it carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy import Column, Engine, Table
from sqlalchemy.exc import IntegrityError

from receiver import metrics, wakeup
from receiver.registry import Registry
from receiver.sources.base import Authenticity, Identity
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
# SQLite's limit of 32766 whatever VOICEHOOKS_INBOX_MAX_BATCH is. (Postgres gets one array per
# column, of any length.)
ROWS_PER_STATEMENT = 500
POSTGRES_WRITERS = 2  # writer threads (and connections) on Postgres; see Inbox.__init__
_T = TypeVar("_T")
Key = tuple[str, str]  # (source, dedupe_key)
Routes = tuple[tuple[str, str, str], ...]  # (source, event_type, handler name), in order
Pending = tuple["IncomingDelivery", asyncio.AbstractEventLoop, "asyncio.Future[Receipt]"]


class _Writes:
    """How one dialect stores a batch, on a DBAPI connection and cursor.

    Values go through the bind processors SQLAlchemy itself would apply (UTC timestamps stored
    naive, SQLite's datetime text), so the rows are exactly what an ORM insert would write.
    """

    def __init__(self, dialect: Any) -> None:
        self._delivery_processors = _processors(deliveries_table, DELIVERY_COLUMNS, dialect)
        self._job_processors = _processors(jobs_table, JOB_COLUMNS, dialect)

    def write(
        self, conn: Any, items: list[IncomingDelivery], routes: Routes
    ) -> tuple[dict[Key, int], dict[Key, int]]:
        """Store the items whose key is new (keys are distinct), with a pending job per handler
        routed to (none for a delivery that did not parse), and commit:
        ``(new ids, existing ids)``."""
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
    """A batch is one ``INSERT`` statement: the deliveries, and their jobs by a trigger.

    sqlite3 releases the interpreter lock around every step of a statement and must take it
    back afterwards, which under load means waiting for the busy event loop thread to let go of
    it; that wait, not SQLite, was most of what a batch cost (bench/README.md). So the batch is
    made of as few steps as possible: a multi-row ``INSERT ... ON CONFLICT DO NOTHING`` in
    autocommit mode, which SQLite runs as its own transaction (durable when the statement
    returns, with ``synchronous=FULL``). The jobs are inserted by a TEMP trigger on the writer's
    own connection, from a TEMP table of the registry's routes, so they commit atomically with
    their delivery. The new ids come from the statement itself: SQLite gives the rows of one
    statement consecutive rowids in ``VALUES`` order, so with ``n`` rows stored the last is
    ``lastrowid`` and the first ``lastrowid - n + 1``. Only a batch holding a key that already
    existed needs a lookup (one more statement, answering in a single row).
    """

    ROUTES_TABLE = "voicehooks_inbox_routes"
    TRIGGER = "voicehooks_inbox_jobs"

    def __init__(self, dialect: Any) -> None:
        super().__init__(dialect)
        self._sql: dict[tuple[str, int], str] = {}  # (statement, rows) -> SQL
        # The trigger's constant job columns, as the bind processors would store them.
        status, attempts = self._job_rows([(0, "")], utcnow())[0][2:4]
        self._trigger_sql = (
            f"CREATE TEMP TRIGGER IF NOT EXISTS {self.TRIGGER} "
            f"AFTER INSERT ON {deliveries_table.name} WHEN NEW.parse_error IS NULL BEGIN "
            f"INSERT INTO {jobs_table.name} ({', '.join(JOB_COLUMNS)}) "
            f"SELECT NEW.id, handler, {_sql_literal(status)}, {_sql_literal(attempts)}, "
            "NEW.received_at, NEW.received_at "
            f"FROM {self.ROUTES_TABLE} "
            "WHERE source = NEW.source AND event_type = NEW.event_type ORDER BY position; END"
        )

    def _statement(self, kind: str, rows: int) -> str:
        sql = self._sql.get((kind, rows))
        if sql is None:
            if kind == "deliveries":
                row = "(" + ", ".join(["?"] * len(DELIVERY_COLUMNS)) + ")"
                sql = (
                    f"INSERT INTO {deliveries_table.name} ({', '.join(DELIVERY_COLUMNS)}) "
                    f"VALUES {', '.join([row] * rows)} "
                    "ON CONFLICT (source, dedupe_key) DO NOTHING"
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

    def write(
        self, conn: Any, items: list[IncomingDelivery], routes: Routes
    ) -> tuple[dict[Key, int], dict[Key, int]]:
        cursor = conn.cursor()
        try:
            self._install_routes(conn, cursor, routes)
            chunks = list(_chunks(items))
            several = len(chunks) > 1  # then one explicit transaction around them all
            if several:
                cursor.execute("BEGIN IMMEDIATE")
            new: dict[Key, int] = {}
            existing: dict[Key, int] = {}
            for chunk in chunks:
                params = [value for row in self._delivery_rows(chunk) for value in row]
                cursor.execute(self._statement("deliveries", len(chunk)), params)
                stored, last = cursor.rowcount, cursor.lastrowid
                if stored == len(chunk):
                    first = last - stored + 1
                    new.update((item.key, first + n) for n, item in enumerate(chunk))
                    continue
                first_new = last - stored + 1 if stored else None
                for key, delivery_id in self._lookup(cursor, chunk).items():
                    is_new = first_new is not None and delivery_id >= first_new
                    (new if is_new else existing)[key] = delivery_id
            if several:
                conn.commit()
        finally:
            cursor.close()
        return new, existing

    def _install_routes(self, conn: Any, cursor: Any, routes: Routes) -> None:
        """Create the trigger and fill the routes table on this connection, or refill it when
        the registry has changed since (TEMP objects live and die with the connection)."""
        if conn.info.get(self.ROUTES_TABLE) == routes:
            return
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {self.ROUTES_TABLE} "
            "(position INTEGER PRIMARY KEY, source TEXT, event_type TEXT, handler TEXT)"
        )
        cursor.execute(self._trigger_sql)
        cursor.execute(f"DELETE FROM {self.ROUTES_TABLE}")
        cursor.executemany(
            f"INSERT INTO {self.ROUTES_TABLE} (source, event_type, handler) VALUES (?, ?, ?)",
            routes,
        )
        conn.info[self.ROUTES_TABLE] = routes

    def _lookup(self, cursor: Any, items: list[IncomingDelivery]) -> dict[Key, int]:
        found: dict[Key, int] = {}
        params: list[object] = []
        for index, item in enumerate(items):
            params += (index, item.source, item.identity.dedupe_key)
        (pairs,) = cursor.execute(self._statement("lookup", len(items)), params).fetchone()
        for pair in pairs.split(",") if pairs else ():
            index, delivery_id = pair.split(" ")
            found[items[int(index)].key] = int(delivery_id)
        return found


def _sql_literal(value: object) -> str:
    """A constant for SQL text that cannot take parameters (the trigger's body)."""
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


class _PostgresWrites(_Writes):
    """The whole batch in one statement, run in autocommit mode: one round trip, one commit.

    ``INSERT ... SELECT FROM unnest(<one array per column>)`` stores the deliveries (skipping
    keys that exist, ``ON CONFLICT DO NOTHING``) and, in the same statement, a data-modifying
    CTE inserts a job per (new delivery, handler), the handlers given as arrays. A single
    statement is atomic, so deliveries and jobs commit together. Its text is the same for every
    batch size, so psycopg parses it once and Postgres keeps it prepared; the arrays travel in
    binary (no escaping of 2.5 KB bodies). The rare key that already existed is looked up after.
    """

    def __init__(self, dialect: Any) -> None:
        super().__init__(dialect)
        d, j = deliveries_table, jobs_table
        columns = ", ".join(DELIVERY_COLUMNS)
        self._sql = (
            f"WITH new AS (INSERT INTO {d.name} ({columns}) "
            f"SELECT * FROM unnest({_arrays(d, DELIVERY_COLUMNS, dialect)}) "
            "ON CONFLICT (source, dedupe_key) DO NOTHING "
            "RETURNING id, source, event_type, dedupe_key, parse_error), "
            "handler AS (SELECT * FROM unnest("
            f"{_arrays(d, ('source', 'event_type'), dialect)}, "
            f"{_arrays(j, ('handler',), dialect)}) "
            "WITH ORDINALITY AS h(source, event_type, name, n)), "
            f"job AS (INSERT INTO {j.name} ({', '.join(JOB_COLUMNS)}) "
            "SELECT new.id, handler.name, "
            f"{_scalars(j, JOB_COLUMNS[2:], dialect)} FROM new JOIN handler "
            "ON handler.source = new.source AND handler.event_type = new.event_type "
            "WHERE new.parse_error IS NULL ORDER BY new.id, handler.n) "
            "SELECT id, source, dedupe_key FROM new"
        )
        self._existing_sql = f"SELECT id FROM {d.name} WHERE source = %s AND dedupe_key = %s"

    def write(
        self, conn: Any, items: list[IncomingDelivery], routes: Routes
    ) -> tuple[dict[Key, int], dict[Key, int]]:
        route_columns = [list(column) for column in zip(*routes, strict=True)] or [[], [], []]
        job_values = self._job_rows([(0, "")], utcnow())[0][2:]
        params = [
            *(list(column) for column in zip(*self._delivery_rows(items), strict=True)),
            *route_columns,
            *job_values,
        ]
        driver = conn.dbapi_connection
        driver.autocommit = True
        cursor = conn.cursor()
        try:
            cursor.execute(self._sql, params)
            new = {(source, key): delivery_id for delivery_id, source, key in cursor.fetchall()}
            existing: dict[Key, int] = {}
            for item in items:
                if item.key not in new:  # stored before (or by another receiver meanwhile)
                    cursor.execute(self._existing_sql, item.key)
                    (existing[item.key],) = cursor.fetchone()
        finally:
            cursor.close()
            with contextlib.suppress(Exception):  # a broken connection is dropped anyway
                driver.autocommit = False
        return new, existing


def _arrays(table: Table, names: Sequence[str], dialect: Any) -> str:
    """``%b::<type>[], ...``: one typed array per column, sent in binary (no text escaping)."""
    return ", ".join(f"%b::{table.c[name].type.compile(dialect=dialect)}[]" for name in names)


def _scalars(table: Table, names: Sequence[str], dialect: Any) -> str:
    """``%b::<type>, ...``: one typed parameter per column."""
    return ", ".join(f"%b::{table.c[name].type.compile(dialect=dialect)}" for name in names)


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
        self._engine = engine
        self._registry = registry
        self._max_batch = max_batch
        self._on_new_jobs = on_new_jobs
        # Lists of waiting deliveries (see accept), or _STOP.
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._waiting: dict[asyncio.AbstractEventLoop, list[Pending]] = {}
        self._threads: list[threading.Thread] = []
        dialect = engine.dialect
        self._writes: _Writes = (
            _SqliteWrites(dialect) if dialect.name == "sqlite" else _PostgresWrites(dialect)
        )
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

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._run, name=f"voicehooks-inbox-{n}", daemon=True)
            for n in range(self._writer_count)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
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
        started = time.perf_counter()
        try:
            receipts = self._write([incoming for incoming, _, _ in batch], reuse=True)
        except Exception as exc:
            log.exception("inbox_write_failed", batch=len(batch))
            _resolve_all([(loop, future, None, exc) for _, loop, future in batch])
            return
        metrics.INBOX_COMMIT_SECONDS.observe(time.perf_counter() - started)
        _resolve_all(
            [
                (loop, future, receipt, None)
                for (_, loop, future), receipt in zip(batch, receipts, strict=True)
            ]
        )
        self._notify(receipts)
        if self._announce and any(r.jobs for r in receipts):
            self._announce_to_other_processes()

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
        for item in items:
            key = item.key
            delivery_id = ids.get(key)
            if delivery_id is not None and fresh[key] is item:
                jobs = (
                    0 if item.identity.parse_error is not None else len(self._handler_names(item))
                )
                receipts.append(Receipt(delivery_id, False, jobs))
            else:
                receipts.append(Receipt(delivery_id or existing[key], True, 0))
        return receipts

    def _handler_names(self, item: IncomingDelivery) -> list[str]:
        return [
            spec.name for spec in self._registry.handlers_for(item.source, item.identity.event_type)
        ]


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
