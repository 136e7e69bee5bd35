"""The one owner of the inbox tables: every statement on deliveries and jobs, and every move of
a job between its states.

    (inbox) -> pending -> running -> done
                 ^          |  \
                 |  retry   |   -> dead  (PermanentFailure, or out of attempts)
                 +----------+       |
                 +------ requeue ---+ (operator: deliveries retry)

A job is created ``pending`` with its delivery, in one statement (``BatchWrites``). A worker
``claim``s a due job (pending and due, or running with an expired lease) and holds it under a
lease token; ``complete`` and ``fail`` only act while that token is still the job's, so a worker
that stalled and lost its lease cannot overwrite the work of the one that took over. Operators
``requeue_delivery`` and ``requeue_dead``. The inbox, the worker, the admin commands, the demo and
the pages call these functions; nothing else writes these tables, as procrastinate keeps all its
job SQL in one place.
"""

from __future__ import annotations

import contextlib
import random
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    String,
    Table,
    bindparam,
    column,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.sql.selectable import TextualSelect
from sqlmodel import Session

from receiver.registry import Registry
from receiver.sources.base import Authenticity, Identity
from receiver.store.db import writer
from receiver.store.models import Delivery, Job, JobStatus
from receiver.store.types import UTCDateTime, utcnow
from receiver.wakeup import CHANNEL as WAKEUP_CHANNEL

deliveries_table: Table = Delivery.__table__  # type: ignore[attr-defined]  # SQLModel adds it
jobs_table: Table = Job.__table__  # type: ignore[attr-defined]  # SQLModel adds it
MAX_ERROR_CHARS = 4000
_T = TypeVar("_T")


# -- creating: a delivery and its pending jobs, a batch at a time ------------------------------


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
    # A duplicate whose body differs from the stored one's (recorded on the stored delivery).
    conflict: bool = False


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
Key = tuple[str, str]  # (source, dedupe_key)
Stored = tuple[int, str]  # (delivery id, sha256) of a key stored before
Routes = tuple[tuple[str, str, str], ...]  # (source, event_type, handler name), in order


class BatchWrites:
    """How one dialect stores a batch, on a DBAPI connection and cursor.

    Values go through the bind processors SQLAlchemy itself would apply (UTC timestamps stored
    naive, SQLite's datetime text), so the rows are exactly what an ORM insert would write.
    """

    def __init__(self, dialect: Any) -> None:
        self.paramstyle = dialect.paramstyle
        self._delivery_processors = _processors(deliveries_table, DELIVERY_COLUMNS, dialect)
        self._job_processors = _processors(jobs_table, JOB_COLUMNS, dialect)

    def write(
        self, conn: Any, items: list[IncomingDelivery], routes: Routes
    ) -> tuple[dict[Key, int], dict[Key, Stored]]:
        """Store the items whose key is new (keys are distinct), with a pending job per handler
        routed to (none for a delivery that did not parse), and commit:
        ``(new ids, (id, sha256) of the keys stored before)``."""
        raise NotImplementedError

    def record_conflicts(self, conn: Any, conflicts: list[tuple[int, str]]) -> None:
        """Count ``(delivery id, sha256)`` copies that came with a stored key but another body,
        and commit. Only batches holding such a copy pay for this statement."""
        now = self._job_rows([(0, "")], utcnow())[0][4]  # a timestamp as the dialect stores it
        placeholder = "?" if self.paramstyle == "qmark" else "%s"
        sql = (
            f"UPDATE {deliveries_table.name} SET conflicts = conflicts + 1, "
            f"last_conflict_sha256 = {placeholder}, last_conflict_at = {placeholder} "
            f"WHERE id = {placeholder}"
        )
        cursor = conn.cursor()
        try:
            cursor.executemany(
                sql, [(sha256, now, delivery_id) for delivery_id, sha256 in conflicts]
            )
        finally:
            cursor.close()
        conn.commit()

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


class SqliteBatchWrites(BatchWrites):
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
                # Answers "index id sha256,...": integers and hex only, whatever the keys contain.
                sql = (
                    "WITH wanted (i, source, dedupe_key) AS "
                    f"(VALUES {', '.join(['(?, ?, ?)'] * rows)}) "
                    "SELECT group_concat(wanted.i || ' ' || d.id || ' ' || d.sha256, ',') "
                    "FROM wanted "
                    f"JOIN {deliveries_table.name} AS d "
                    "ON d.source = wanted.source AND d.dedupe_key = wanted.dedupe_key"
                )
            self._sql[(kind, rows)] = sql
        return sql

    def write(
        self, conn: Any, items: list[IncomingDelivery], routes: Routes
    ) -> tuple[dict[Key, int], dict[Key, Stored]]:
        cursor = conn.cursor()
        try:
            self._install_routes(conn, cursor, routes)
            chunks = list(_chunks(items))
            several = len(chunks) > 1  # then one explicit transaction around them all
            if several:
                cursor.execute("BEGIN IMMEDIATE")
            new: dict[Key, int] = {}
            existing: dict[Key, Stored] = {}
            for chunk in chunks:
                params = [value for row in self._delivery_rows(chunk) for value in row]
                cursor.execute(self._statement("deliveries", len(chunk)), params)
                stored, last = cursor.rowcount, cursor.lastrowid
                if stored == len(chunk):
                    first = last - stored + 1
                    new.update((item.key, first + n) for n, item in enumerate(chunk))
                    continue
                first_new = last - stored + 1 if stored else None
                for key, (delivery_id, sha256) in self._lookup(cursor, chunk).items():
                    if first_new is not None and delivery_id >= first_new:
                        new[key] = delivery_id
                    else:
                        existing[key] = (delivery_id, sha256)
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

    def _lookup(self, cursor: Any, items: list[IncomingDelivery]) -> dict[Key, Stored]:
        found: dict[Key, Stored] = {}
        params: list[object] = []
        for index, item in enumerate(items):
            params += (index, item.source, item.identity.dedupe_key)
        (pairs,) = cursor.execute(self._statement("lookup", len(items)), params).fetchone()
        for pair in pairs.split(",") if pairs else ():
            index, delivery_id, sha256 = pair.split(" ")
            found[items[int(index)].key] = (int(delivery_id), sha256)
        return found


def _sql_literal(value: object) -> str:
    """A constant for SQL text that cannot take parameters (the trigger's body)."""
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


class PostgresBatchWrites(BatchWrites):
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
        self._existing_sql = (
            f"SELECT id, sha256 FROM {d.name} WHERE source = %s AND dedupe_key = %s"
        )

    def write(
        self, conn: Any, items: list[IncomingDelivery], routes: Routes
    ) -> tuple[dict[Key, int], dict[Key, Stored]]:
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
            existing: dict[Key, Stored] = {}
            for item in items:
                if item.key not in new:  # stored before (or by another receiver meanwhile)
                    cursor.execute(self._existing_sql, item.key)
                    existing[item.key] = tuple(cursor.fetchone())
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


def batch_writes(dialect: Any) -> BatchWrites:
    """How this database stores an inbox batch."""
    return SqliteBatchWrites(dialect) if dialect.name == "sqlite" else PostgresBatchWrites(dialect)


def _chunks(rows: list[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        yield rows[start : start + ROWS_PER_STATEMENT]


# -- running: claim, complete, fail, keep the lease --------------------------------------------


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    delivery_id: int
    handler: str
    attempts: int
    lease_token: str
    # The delivery row, read in the claim's transaction (``claim_many``), so that running the
    # job needs no second query; None: the worker loads it (``load_delivery``).
    delivery: Any = field(default=None, compare=False, repr=False)


def claim(
    engine: Engine, lease_seconds: float, *, delivery_id: int | None = None
) -> ClaimedJob | None:
    """Take the oldest due job: pending and due, or running with an expired lease (its worker
    died). Postgres skips rows other workers hold; SQLite serialises writers anyway.
    ``delivery_id`` limits the claim to that delivery's jobs (a command waiting for its own
    submission runs it, and nobody else's work)."""
    claimed = claim_many(engine, lease_seconds, 1, delivery_id=delivery_id)
    return claimed[0] if claimed else None


Bind = Engine | Connection  # see ``claim_many``


@contextlib.contextmanager
def _autocommit(bind: Bind) -> Iterator[Connection]:
    """A connection whose every statement commits on its own (Postgres): an engine's, checked
    out for the call, or the caller's kept one (already in autocommit mode)."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def claim_many(
    bind: Bind, lease_seconds: float, limit: int, *, delivery_id: int | None = None
) -> list[ClaimedJob]:
    """Take up to ``limit`` due jobs, oldest first (expired leases before pending jobs), each
    with its delivery row, under one fresh lease token.

    One commit (one fsync) for the batch instead of one per job, and the delivery rows come in
    the same transaction: a worker running several jobs at once claims them together.

    ``bind`` is an engine, or on Postgres a connection the caller keeps in autocommit mode (the
    worker's: no pool checkout, and so no pre-ping round trip, per claim)."""
    now = utcnow()
    token = secrets.token_hex(16)
    limit = max(1, limit)
    if bind.dialect.name == "postgresql":
        return _claim_postgres(bind, now, token, lease_seconds, limit, delivery_id)
    assert isinstance(bind, Engine), "SQLite claims run on an engine (BEGIN IMMEDIATE)"
    only = true() if delivery_id is None else jobs_table.c.delivery_id == delivery_id
    columns = (
        jobs_table.c.id,
        jobs_table.c.delivery_id,
        jobs_table.c.handler,
        jobs_table.c.attempts,
    )
    # Two queries, each a range of the (status, run_at) index: one OR of both conditions made
    # SQLite scan and sort the whole table on every claim, which slowed a 100k-job backlog's
    # drain to a crawl. Jobs of dead workers (expired leases) first, then the due pending ones.
    expired = (
        select(*columns)
        .where(jobs_table.c.status == JobStatus.running, jobs_table.c.lease_until < now)
        .where(only)
        .order_by(jobs_table.c.run_at)
        .limit(limit)
    )
    with writer(bind).begin() as conn:
        rows = list(conn.execute(expired).all())
        if len(rows) < limit:
            pending = (
                select(*columns)
                .where(jobs_table.c.status == JobStatus.pending, jobs_table.c.run_at <= now)
                .where(only)
                .order_by(jobs_table.c.run_at)
                .limit(limit - len(rows))
            )
            rows += conn.execute(pending).all()
        if not rows:
            return []
        ids = [row.id for row in rows]
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id.in_(ids))
            .values(
                status=JobStatus.running,
                attempts=jobs_table.c.attempts + 1,
                lease_until=now + timedelta(seconds=lease_seconds),
                lease_token=token,
            )
        )
        wanted = {row.delivery_id for row in rows}
        deliveries = {
            delivery.id: delivery
            for delivery in conn.execute(
                select(deliveries_table).where(deliveries_table.c.id.in_(wanted))
            )
        }
    return [
        ClaimedJob(
            row.id,
            row.delivery_id,
            row.handler,
            row.attempts + 1,
            token,
            deliveries.get(row.delivery_id),
        )
        for row in rows
    ]


# The job columns of a Postgres claim's answer, named apart from the delivery's.
_CLAIMED_COLUMNS = (
    column("job_id", Integer),
    column("job_delivery_id", Integer),
    column("job_handler", String),
    column("job_attempts", Integer),
)
_claim_statements: dict[bool, TextualSelect] = {}


def _claim_statement(one_delivery: bool) -> TextualSelect:
    """The Postgres claim as one statement: pick (``FOR UPDATE SKIP LOCKED``, so concurrent
    workers never wait for each other), lease (``UPDATE ... RETURNING``) and read the delivery
    rows, in a single round trip that commits on its own. Made once per variant, so SQLAlchemy
    compiles it once and psycopg keeps it prepared."""
    statement = _claim_statements.get(one_delivery)
    if statement is None:
        j, d = jobs_table.name, deliveries_table.name
        only = " AND delivery_id = :delivery_id" if one_delivery else ""
        delivery_columns = ", ".join(f"d.{c.name}" for c in deliveries_table.c)
        sql = (
            # Jobs of dead workers (expired leases) first, then the due pending ones: each a
            # range of the (status, run_at) index.
            f"WITH expired AS (SELECT id, run_at FROM {j} "
            f"WHERE status = :running AND lease_until < :now{only} "
            "ORDER BY run_at LIMIT :limit FOR UPDATE SKIP LOCKED), "
            f"due AS (SELECT id, run_at FROM {j} "
            f"WHERE status = :pending AND run_at <= :now{only} "
            "ORDER BY run_at LIMIT :limit FOR UPDATE SKIP LOCKED), "
            "picked AS (SELECT id, 0 AS kind, run_at FROM expired "
            "UNION ALL SELECT id, 1 AS kind, run_at FROM due "
            "ORDER BY kind, run_at LIMIT :limit), "
            f"claimed AS (UPDATE {j} SET status = :running, attempts = {j}.attempts + 1, "
            "lease_until = :until, lease_token = :token "
            f"FROM picked WHERE {j}.id = picked.id "
            f"RETURNING {j}.id AS job_id, {j}.delivery_id AS job_delivery_id, "
            f"{j}.handler AS job_handler, {j}.attempts AS job_attempts, "
            "picked.kind AS job_kind, picked.run_at AS job_run_at) "
            f"SELECT claimed.job_id, claimed.job_delivery_id, claimed.job_handler, "
            f"claimed.job_attempts, {delivery_columns} "
            f"FROM claimed LEFT JOIN {d} AS d ON d.id = claimed.job_delivery_id "
            "ORDER BY claimed.job_kind, claimed.job_run_at, claimed.job_id"
        )
        statement = (
            text(sql)
            .bindparams(
                bindparam("now", type_=UTCDateTime()),
                bindparam("until", type_=UTCDateTime()),
            )
            .columns(*_CLAIMED_COLUMNS, *_delivery_result_columns())
        )
        _claim_statements[one_delivery] = statement
    return statement


def _delivery_result_columns() -> list[Any]:
    return [column(c.name, c.type) for c in deliveries_table.c]


def _claim_postgres(
    bind: Bind,
    now: datetime,
    token: str,
    lease_seconds: float,
    limit: int,
    delivery_id: int | None,
) -> list[ClaimedJob]:
    params: dict[str, object] = {
        "now": now,
        "until": now + timedelta(seconds=lease_seconds),
        "token": token,
        "limit": limit,
        "running": JobStatus.running.value,
        "pending": JobStatus.pending.value,
    }
    if delivery_id is not None:
        params["delivery_id"] = delivery_id
    with _autocommit(bind) as conn:
        rows = conn.execute(_claim_statement(delivery_id is not None), params).all()
        conn.commit()  # ends SQLAlchemy's transaction marker; the statement committed already
    return [
        ClaimedJob(
            row.job_id,
            row.job_delivery_id,
            row.job_handler,
            row.job_attempts,  # as updated: this attempt's number
            token,
            row if row.id is not None else None,
        )
        for row in rows
    ]


def _guarded(job: ClaimedJob) -> Any:
    """Only the holder of the lease may move the job on."""
    return update(jobs_table).where(
        jobs_table.c.id == job.id, jobs_table.c.lease_token == job.lease_token
    )


def complete(
    session: Session,
    job: ClaimedJob,
    *,
    dead_because: str | None = None,
    again_in: float | None = None,
) -> bool:
    """Mark the job done (or dead, keeping the handler's writes; or, ``again_in``, pending again
    after that many seconds with fresh attempts: a poll that found its task still running) in
    the handler's own transaction and commit: the handler's writes and the job's next state
    are one transaction. False when the lease was lost; the handler's writes are then rolled
    back."""
    values: dict[str, object] = {"finished_at": utcnow(), "lease_until": None}
    if again_in is not None:
        values = {
            "status": JobStatus.pending,
            "run_at": utcnow() + timedelta(seconds=again_in),
            "attempts": 0,
            "lease_until": None,
            "last_error": None,
        }
    elif dead_because is None:
        values |= {"status": JobStatus.done, "last_error": None}
    else:
        values |= {"status": JobStatus.dead, "last_error": dead_because[:MAX_ERROR_CHARS]}
    done = session.execute(_guarded(job).values(**values))
    if done.rowcount != 1:  # type: ignore[attr-defined]  # Session.execute is typed as Result; an UPDATE gives a CursorResult
        session.rollback()
        return False
    session.commit()
    return True


def complete_many(bind: Bind, claimed: Sequence[ClaimedJob]) -> set[int]:
    """Mark several jobs done in one transaction (one commit for all): for jobs whose handler
    wrote nothing through ``ctx.session``, so there is no handler transaction to join. Each job
    is still guarded by its own lease token; returns the ids that were still held (done).

    Postgres: one statement over arrays of (id, token), in autocommit (one round trip). SQLite:
    one ``UPDATE`` per lease token (jobs claimed together share theirs), in one transaction."""
    if not claimed:
        return set()
    now = utcnow()
    if bind.dialect.name == "postgresql":
        with _autocommit(bind) as conn:
            done = conn.execute(
                _COMPLETE_MANY_PG,
                {
                    "now": now,
                    "done": JobStatus.done.value,
                    "ids": [job.id for job in claimed],
                    "tokens": [job.lease_token for job in claimed],
                },
            ).scalars()
            ids = set(done)
            conn.commit()
        return ids
    assert isinstance(bind, Engine), "SQLite transitions run on an engine (BEGIN IMMEDIATE)"
    values = {"status": JobStatus.done, "finished_at": now, "lease_until": None, "last_error": None}
    ids = set()
    with writer(bind).begin() as conn:
        for token, group in _by_token(claimed).items():
            statement = (
                update(jobs_table)
                .where(jobs_table.c.lease_token == token, jobs_table.c.id.in_(group))
                .values(**values)
                .returning(jobs_table.c.id)
            )
            ids.update(conn.execute(statement).scalars())
    return ids


_COMPLETE_MANY_PG = text(
    f"UPDATE {jobs_table.name} SET status = :done, finished_at = :now, lease_until = NULL, "
    "last_error = NULL "
    "FROM unnest(CAST(:ids AS INTEGER[]), CAST(:tokens AS VARCHAR[])) AS held(id, token) "
    f"WHERE {jobs_table.name}.id = held.id AND {jobs_table.name}.lease_token = held.token "
    f"RETURNING {jobs_table.name}.id"
).bindparams(bindparam("now", type_=UTCDateTime()))


def _by_token(claimed: Sequence[ClaimedJob]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for job in claimed:
        groups.setdefault(job.lease_token, []).append(job.id)
    return groups


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: about base * 2^(n-1), randomised by +-50%, capped.

    Jitter spreads retries of jobs that failed together (a database blip, a provider outage) so
    they do not all come back at the same instant.
    """
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    return delay * random.uniform(0.5, 1.5)


def fail(engine: Engine, job: ClaimedJob, message: str, *, retry_in: float | None) -> None:
    """Record a failed attempt: pending again after ``retry_in`` seconds, or dead (None)."""
    now = utcnow()
    values: dict[str, object] = {"last_error": message[:MAX_ERROR_CHARS], "lease_until": None}
    if retry_in is None:
        values |= {"status": JobStatus.dead, "finished_at": now}
    else:
        values |= {"status": JobStatus.pending, "run_at": now + timedelta(seconds=retry_in)}
    with writer(engine).begin() as conn:
        conn.execute(_guarded(job).values(**values))


def extend_leases(bind: Bind, held: Sequence[ClaimedJob], lease_seconds: float) -> set[int]:
    """Keep jobs a worker holds (running, or claimed and waiting for a free loop) from being
    taken over while it works, in one transaction; returns the ids whose lease was still this
    worker's (the others were taken over: their outcome will not be recorded)."""
    if not held:
        return set()
    until = utcnow() + timedelta(seconds=lease_seconds)
    kept: set[int] = set()
    with writer(bind).begin() if isinstance(bind, Engine) else _autocommit(bind) as conn:
        for token, group in _by_token(held).items():
            statement = (
                update(jobs_table)
                .where(
                    jobs_table.c.lease_token == token,
                    jobs_table.c.id.in_(group),
                    jobs_table.c.status == JobStatus.running,
                )
                .values(lease_until=until)
                .returning(jobs_table.c.id)
            )
            kept.update(conn.execute(statement).scalars())
    return kept


def load_delivery(engine: Engine, delivery_id: int) -> Any:
    """The stored delivery row a job runs on."""
    with engine.connect() as conn:
        return conn.execute(
            select(deliveries_table).where(deliveries_table.c.id == delivery_id)
        ).one()


def stored_subjects(
    engine: Engine, source: str, event_type: str, subject_ids: Sequence[str]
) -> set[str]:
    """Which of ``subject_ids`` already have a stored delivery of ``event_type`` (processed or
    not): reconciliation must not fetch again what the inbox holds but a worker has yet to run."""
    if not subject_ids:
        return set()
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(deliveries_table.c.subject_id)
                .where(
                    deliveries_table.c.source == source,
                    deliveries_table.c.event_type == event_type,
                    deliveries_table.c.subject_id.in_(list(subject_ids)),
                )
                .distinct()
            ).scalars()
        )


def _insert_pending_jobs(
    conn: Connection, delivery_id: int, handlers: Sequence[str], at: datetime
) -> None:
    """A pending job per handler for one delivery (the rare one-at-a-time path; the inbox's
    batches create theirs in their own statement)."""
    conn.execute(
        insert(jobs_table),
        [
            {
                "delivery_id": delivery_id,
                "handler": name,
                "status": JobStatus.pending,
                "attempts": 0,
                "run_at": at,
                "created_at": at,
            }
            for name in handlers
        ],
    )


def store_local_delivery(conn: Connection, registry: Registry, item: IncomingDelivery) -> Receipt:
    """Store a delivery made on this machine (a command's submission, not an HTTP request) and
    a pending job per handler routed to, in the caller's transaction, so the caller's own rows
    (a dialogue render) commit atomically with the work that will act on them.

    The HTTP path goes through the inbox's group-committed batches; this is the one-at-a-time
    form for submissions, which are rare and want to share a transaction. On Postgres the
    wake-up ``NOTIFY`` is sent in the same transaction, so listeners hear of it on commit.
    A key that exists already answers with its id and adds no job, as the inbox does.
    """
    existing = conn.execute(
        select(deliveries_table.c.id).where(
            deliveries_table.c.source == item.source,
            deliveries_table.c.dedupe_key == item.identity.dedupe_key,
        )
    ).scalar()
    if existing is not None:
        return Receipt(existing, True, 0)
    delivery_id = conn.execute(
        insert(deliveries_table).values(**item.row()).returning(deliveries_table.c.id)
    ).scalar_one()
    names = [spec.name for spec in registry.handlers_for(item.source, item.identity.event_type)]
    if item.identity.parse_error is not None:
        names = []
    if names:
        _insert_pending_jobs(conn, delivery_id, names, item.received_at)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"NOTIFY {WAKEUP_CHANNEL}")
    return Receipt(delivery_id, False, len(names))


# -- operators: requeue, and what they look at ------------------------------------------------


@dataclass
class DeliverySummary:
    id: int
    source: str
    event_type: str | None
    subject_id: str | None
    size: int
    received_at: datetime
    status: str
    jobs: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "received_at": self.received_at.isoformat()}


def _status(jobs: dict[str, int], parse_error: str | None) -> str:
    """One word for a delivery: the worst state among its jobs."""
    if parse_error:
        return "invalid"
    for state in (JobStatus.dead, JobStatus.running, JobStatus.pending):
        if jobs.get(state):
            return str(state)
    return "done" if jobs else "stored"


def list_deliveries(
    engine: Engine,
    *,
    limit: int = 50,
    status: str | None = None,
    source: str | None = None,
    event_type: str | None = None,
    search: str | None = None,
) -> list[DeliverySummary]:
    """Newest first. ``search`` matches a delivery id or a subject id (an ElevenLabs
    conversation id, a kie.ai task id) exactly, so it uses the indexes."""
    query = select(deliveries_table).order_by(deliveries_table.c.id.desc())
    if source:
        query = query.where(deliveries_table.c.source == source)
    if event_type:
        query = query.where(deliveries_table.c.event_type == event_type)
    if search and search.strip():
        term = search.strip()
        matches = deliveries_table.c.subject_id == term
        if term.isdigit() and len(term) < 19:  # fits a BIGINT
            matches = or_(matches, deliveries_table.c.id == int(term))
        query = query.where(matches)
    if status in {s.value for s in JobStatus}:
        query = query.where(
            deliveries_table.c.id.in_(
                select(jobs_table.c.delivery_id).where(jobs_table.c.status == status)
            )
        )
    with engine.connect() as conn:
        rows = conn.execute(query.limit(limit)).all()
        ids = [row.id for row in rows]
        counts: dict[int, dict[str, int]] = {i: {} for i in ids}
        if ids:
            for delivery_id, state, n in conn.execute(
                select(jobs_table.c.delivery_id, jobs_table.c.status, func.count())
                .where(jobs_table.c.delivery_id.in_(ids))
                .group_by(jobs_table.c.delivery_id, jobs_table.c.status)
            ):
                counts[delivery_id][state] = n
    summaries = [
        DeliverySummary(
            row.id,
            row.source,
            row.event_type,
            row.subject_id,
            row.size,
            row.received_at,
            _status(counts[row.id], row.parse_error),
            counts[row.id],
        )
        for row in rows
    ]
    if status and status not in {s.value for s in JobStatus}:
        summaries = [s for s in summaries if s.status == status]
    return summaries


def get_delivery(engine: Engine, delivery_id: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(deliveries_table).where(deliveries_table.c.id == delivery_id)
        ).first()
        if row is None:
            return None
        jobs = conn.execute(
            select(jobs_table)
            .where(jobs_table.c.delivery_id == delivery_id)
            .order_by(jobs_table.c.id)
        ).all()
    info = {k: v for k, v in row._mapping.items() if k != "body"}
    info["received_at"] = row.received_at.isoformat()
    if row.last_conflict_at is not None:
        info["last_conflict_at"] = row.last_conflict_at.isoformat()
    info["body_stored"] = "pruned" if row.pruned_at else ("blob" if row.blob_path else "inline")
    if row.pruned_at is not None:
        info["pruned_at"] = row.pruned_at.isoformat()
    info["jobs"] = [
        {
            k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in job._mapping.items()
            if k != "lease_token"
        }
        for job in jobs
    ]
    return info


def requeue_delivery(engine: Engine, registry: Registry, delivery_id: int) -> int:
    """Re-run every handler of a delivery; returns how many jobs are now pending."""
    now = utcnow()
    with writer(engine).begin() as conn:
        row = conn.execute(
            select(
                deliveries_table.c.source,
                deliveries_table.c.event_type,
                deliveries_table.c.parse_error,
            ).where(deliveries_table.c.id == delivery_id)
        ).first()
        if row is None:
            raise LookupError(f"no delivery with id {delivery_id}")
        if row.parse_error:
            return 0
        existing = set(
            conn.execute(
                select(jobs_table.c.handler).where(jobs_table.c.delivery_id == delivery_id)
            ).scalars()
        )
        conn.execute(
            update(jobs_table)
            .where(
                jobs_table.c.delivery_id == delivery_id, jobs_table.c.status != JobStatus.running
            )
            .values(status=JobStatus.pending, attempts=0, run_at=now, finished_at=None)
        )
        missing = [
            spec.name
            for spec in registry.handlers_for(row.source, row.event_type)
            if spec.name not in existing
        ]
        if missing:
            _insert_pending_jobs(conn, delivery_id, missing, now)
        return conn.execute(
            select(func.count())
            .select_from(jobs_table)
            .where(
                jobs_table.c.delivery_id == delivery_id, jobs_table.c.status == JobStatus.pending
            )
        ).scalar_one()


def requeue_dead(engine: Engine) -> int:
    """Give every dead job a fresh set of attempts; returns how many."""
    with writer(engine).begin() as conn:
        result = conn.execute(
            update(jobs_table)
            .where(jobs_table.c.status == JobStatus.dead)
            .values(status=JobStatus.pending, attempts=0, run_at=utcnow(), finished_at=None)
        )
        return result.rowcount


def job_counts(engine: Engine) -> dict[str, int]:
    """How many jobs are in each state."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(jobs_table.c.status, func.count()).group_by(jobs_table.c.status)
        ).all()
    return {status: count for status, count in rows}


def dead_jobs(engine: Engine, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Dead jobs, oldest first, with what an operator needs to decide on a retry."""
    query = (
        select(
            jobs_table.c.delivery_id,
            jobs_table.c.handler,
            jobs_table.c.last_error,
            jobs_table.c.id,
            jobs_table.c.attempts,
            jobs_table.c.finished_at,
            deliveries_table.c.source,
            deliveries_table.c.event_type,
            deliveries_table.c.subject_id,
        )
        .join(deliveries_table, deliveries_table.c.id == jobs_table.c.delivery_id)
        .where(jobs_table.c.status == JobStatus.dead)
        .order_by(jobs_table.c.id)
    )
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [dict(row._mapping) for row in rows]


def next_run_at(engine: Engine, delivery_id: int) -> datetime | None:
    """When the delivery's next pending job is due (None: none is pending)."""
    with engine.connect() as conn:
        return conn.execute(
            select(func.min(jobs_table.c.run_at)).where(
                jobs_table.c.delivery_id == delivery_id, jobs_table.c.status == JobStatus.pending
            )
        ).scalar()


def delivery_blob_paths(conn: Connection) -> set[str]:
    """Every blob that a delivery's body lives in (``voicehooks gc`` keeps them)."""
    query = (
        select(deliveries_table.c.blob_path)
        .where(deliveries_table.c.blob_path.is_not(None))
        .distinct()
    )
    return set(conn.execute(query).scalars())


def requeue_job(engine: Engine, job_id: int) -> bool:
    """Give one dead job a fresh set of attempts; False if there is no such dead job."""
    with writer(engine).begin() as conn:
        result = conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == job_id, jobs_table.c.status == JobStatus.dead)
            .values(status=JobStatus.pending, attempts=0, run_at=utcnow(), finished_at=None)
        )
        return result.rowcount == 1


def delivery_body(engine: Engine, delivery_id: int) -> tuple[bytes | None, str | None] | None:
    """A stored body: ``(bytes, None)`` when it lives in the row, ``(None, blob relpath)``
    when it lives in the blob store; None when there is no such delivery."""
    with engine.connect() as conn:
        row = conn.execute(
            select(deliveries_table.c.body, deliveries_table.c.blob_path).where(
                deliveries_table.c.id == delivery_id
            )
        ).first()
    if row is None:
        return None
    return (None, row.blob_path) if row.blob_path else (row.body or b"", None)


@dataclass
class Overview:
    """The inspector's front page: traffic, backlog and failures at a glance."""

    per_minute: list[tuple[datetime, int]]  # the last ``minutes`` minutes, oldest first
    jobs: dict[str, int]  # count per state
    oldest_pending: datetime | None  # when the oldest pending job was created
    deliveries_total: int

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or utcnow()
        age = (now - self.oldest_pending).total_seconds() if self.oldest_pending else None
        return {
            "per_minute": [{"minute": m.isoformat(), "count": n} for m, n in self.per_minute],
            "jobs": self.jobs,
            "pending": self.jobs.get(JobStatus.pending, 0),
            "dead": self.jobs.get(JobStatus.dead, 0),
            "oldest_pending_age_seconds": max(0.0, age) if age is not None else None,
            "deliveries_total": self.deliveries_total,
        }


def overview(engine: Engine, *, minutes: int = 60) -> Overview:
    """Deliveries per minute (counted by the database, grouped by minute), job counts and the
    age of the backlog."""
    now = utcnow().replace(second=0, microsecond=0)
    since = now - timedelta(minutes=minutes - 1)
    received = deliveries_table.c.received_at
    if engine.dialect.name == "postgresql":
        minute: Any = func.date_trunc("minute", received)
    else:  # SQLite stores "YYYY-MM-DD HH:MM:SS.ffffff": the first 16 characters are the minute
        minute = func.substr(received, 1, 16)
    with engine.connect() as conn:
        buckets = conn.execute(
            select(minute, func.count()).where(received >= since).group_by(minute)
        ).all()
        oldest = conn.execute(
            select(func.min(jobs_table.c.created_at)).where(
                jobs_table.c.status == JobStatus.pending
            )
        ).scalar_one()
        total = conn.execute(select(func.count()).select_from(deliveries_table)).scalar_one()
    counts: dict[str, int] = {}
    for key, n in buckets:
        if isinstance(key, datetime):
            key = key.strftime("%Y-%m-%d %H:%M")
        counts[str(key)] = n
    series = []
    for i in range(minutes):
        at = since + timedelta(minutes=i)
        series.append((at, counts.get(at.strftime("%Y-%m-%d %H:%M"), 0)))
    if isinstance(oldest, str):  # an aggregate over SQLite text loses the column type
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return Overview(series, job_counts(engine), oldest, total)


def delivery_job_states(engine: Engine, delivery_id: int) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(jobs_table.c.status).where(jobs_table.c.delivery_id == delivery_id)
            ).scalars()
        )


# -- monitoring and retention ------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    pending: int
    dead: int
    oldest_pending_seconds: float


def backlog(engine: Engine) -> Backlog:
    """What ``/metrics`` reports at scrape time: one aggregate over the ``(status, run_at)``
    index's pending and dead entries, not a scan of finished jobs."""
    is_pending = jobs_table.c.status == JobStatus.pending
    with engine.connect() as conn:
        pending, dead, oldest = conn.execute(
            select(
                func.count().filter(is_pending),
                func.count().filter(jobs_table.c.status == JobStatus.dead),
                func.min(jobs_table.c.created_at).filter(is_pending),
            ).where(jobs_table.c.status.in_([JobStatus.pending, JobStatus.dead]))
        ).one()
    if isinstance(oldest, str):  # in case a driver hands the aggregate back as text
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    age = max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0
    return Backlog(pending=pending, dead=dead, oldest_pending_seconds=age)


@dataclass
class Pruned:
    """What ``prune_deliveries`` did (or, dry, would do)."""

    deliveries: int = 0
    bytes: int = 0
    # Blob files no remaining delivery refers to: the caller deletes them after the commit.
    blob_paths: list[str] = field(default_factory=list)


def _prunable(cutoff: datetime) -> Any:
    """Deliveries received before ``cutoff``, not yet pruned, with no job left unfinished."""
    unfinished = (
        select(jobs_table.c.id)
        .where(jobs_table.c.delivery_id == deliveries_table.c.id)
        .where(jobs_table.c.status != JobStatus.done)
    )
    return (
        select(deliveries_table.c.id, deliveries_table.c.size, deliveries_table.c.blob_path)
        .where(deliveries_table.c.received_at < cutoff)
        .where(deliveries_table.c.pruned_at.is_(None))
        .where(~unfinished.exists())
    )


def prune_deliveries(engine: Engine, cutoff: datetime, *, dry_run: bool = False) -> Pruned:
    """Forget the bodies of old deliveries whose jobs are all done, keeping their rows.

    The row stays (id, type, subject, sha256, size, jobs: the audit trail) with ``pruned_at``
    set; only ``body`` and ``blob_path`` go. Blobs that a delivery still keeping its body refers
    to are not listed for deletion. What handlers stored in their own tables is not touched.
    """
    pruned = Pruned()
    with writer(engine).begin() as conn:
        rows = conn.execute(_prunable(cutoff)).all()
        if not rows:
            return pruned
        ids = [row.id for row in rows]
        pruned.deliveries = len(rows)
        pruned.bytes = sum(row.size for row in rows)
        paths = {row.blob_path for row in rows if row.blob_path}
        if paths:
            kept = conn.execute(
                select(deliveries_table.c.blob_path)
                .where(deliveries_table.c.blob_path.in_(paths))
                .where(deliveries_table.c.id.not_in(ids))
            ).scalars()
            pruned.blob_paths = sorted(paths - set(kept))
        if dry_run:
            conn.rollback()
            return pruned
        now = utcnow()
        for chunk in _chunks(ids):
            conn.execute(
                update(deliveries_table)
                .where(deliveries_table.c.id.in_(chunk))
                .values(body=None, blob_path=None, pruned_at=now)
            )
    return pruned


@dataclass
class UnfinishedDelivery:
    """A delivery whose jobs have not all finished well, with what its handlers last said."""

    id: int
    subject_id: str | None
    received_at: datetime
    body: bytes | None
    blob_path: str | None
    job_status: str
    last_error: str | None


def unfinished_deliveries(engine: Engine, source: str, *, limit: int = 200) -> list[Any]:
    """Deliveries of ``source`` with a job still pending, running or dead, newest first.

    What a plugin's admin view needs to show a subject whose handler has not recorded it yet
    (a download still retrying, or dead before anything was written): the stored evidence, with
    the worst job state and that job's last error.
    """
    unfinished = jobs_table.c.status != JobStatus.done
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                deliveries_table.c.id,
                deliveries_table.c.subject_id,
                deliveries_table.c.received_at,
                deliveries_table.c.body,
                deliveries_table.c.blob_path,
                jobs_table.c.status,
                jobs_table.c.last_error,
            )
            .join(jobs_table, jobs_table.c.delivery_id == deliveries_table.c.id)
            .where(deliveries_table.c.source == source)
            .where(unfinished)
            .order_by(deliveries_table.c.id.desc(), jobs_table.c.id)
            .limit(limit)
        ).all()
    seen: dict[int, UnfinishedDelivery] = {}
    for row in rows:
        if row.id not in seen:
            seen[row.id] = UnfinishedDelivery(
                row.id,
                row.subject_id,
                row.received_at,
                row.body,
                row.blob_path,
                row.status,
                row.last_error,
            )
    return list(seen.values())
