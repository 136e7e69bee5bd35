"""Engine creation: one place that knows how SQLite and Postgres differ at connection time."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def shown_url(database_url: str) -> str:
    """``database_url`` fit to print (start-up line, errors): its password masked."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:
        return "(a database URL that cannot be parsed)"


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def create_db_engine(
    database_url: str, *, pool_size: int = 8, store_timeout: float | None = None
) -> Engine:
    """An engine with the durability settings the one rule needs.

    ``pool_size`` connections are kept (``VOICEHOOKS_DB_POOL_SIZE``) and as many again may open
    under a burst.

    ``store_timeout`` (``VOICEHOOKS_STORE_TIMEOUT_SECONDS``) bounds the waits that would otherwise
    hang while the database is away: a connection attempt (Postgres ``connect_timeout``), data
    the server no longer acknowledges (``tcp_user_timeout``), and a checkout from a pool whose
    connections are all stuck. Without it, an unreachable Postgres host stalls every caller for
    the operating system's TCP timeouts (minutes).

    SQLite: WAL so readers never block the writer, ``synchronous=FULL`` so a committed delivery
    survives power loss (WAL's default NORMAL may lose the last commits), a busy timeout so the
    workers and the inbox wait for each other instead of failing, and transactions that we begin
    ourselves so that writers can ask for ``BEGIN IMMEDIATE`` (see ``writer``).
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "timeout": 30,
                "isolation_level": None,
                # The inbox's multi-row statements differ by batch size: keep them all prepared
                # (the default cache of 128 would thrash under varying load).
                "cached_statements": 1024,
            },
            pool_size=pool_size,
            max_overflow=pool_size,
            **({"pool_timeout": store_timeout} if store_timeout else {}),
        )
        _configure_sqlite(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if store_timeout:
        connect_args = {
            # libpq counts whole seconds and treats less than 2 as 2.
            "connect_timeout": max(2, math.ceil(store_timeout)),
            "tcp_user_timeout": math.ceil(store_timeout * 1000),
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(store_timeout)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
        }
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=connect_args,
        **({"pool_timeout": store_timeout} if store_timeout else {}),
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # pysqlite's own transaction handling is disabled (isolation_level=None): we emit BEGIN.
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def writer(engine: Engine) -> Engine:
    """The engine for transactions that will write: job claims and transitions, and handler
    sessions.

    On SQLite they start with ``BEGIN IMMEDIATE``, taking the write lock up front, so two writers
    queue on the busy timeout instead of one failing with "database is locked" when its read
    upgrades to a write. A handler session's transaction begins at its first statement, not when
    the session is made, so a handler that downloads before it writes holds no lock meanwhile
    (``ctx.read`` looks outside it). Postgres ignores the option.
    """
    return engine.execution_options(sqlite_begin="IMMEDIATE")


class StoreGone(Exception):
    """The SQLite file this process opened was deleted or replaced under it."""


class StoreFile:
    """The identity (device, inode) of the SQLite file when the server started, to notice the file
    being deleted or replaced while it runs. Open connections keep writing to the old inode, so
    without this check a delivery would be acknowledged into a file nobody will ever read.

    One ``os.stat`` per check (about a microsecond): cheap enough for every inbox batch and every
    readiness probe. Postgres and in-memory SQLite have no file, and always pass.
    """

    def __init__(self, engine: Engine) -> None:
        url = engine.url
        database = url.database if url.get_backend_name() == "sqlite" else None
        self._engine = engine
        self.path = Path(database) if database and database != ":memory:" else None
        self._seen: tuple[int, int] | None = None

    def remember(self) -> None:
        """Record the file as it is now (creating it if it does not exist yet)."""
        if self.path is None:
            return
        if not self.path.exists():
            with self._engine.connect():
                pass
        stat = os.stat(self.path)
        self._seen = (stat.st_dev, stat.st_ino)

    def check(self) -> None:
        """Raise ``StoreGone`` when the file is not the one remembered."""
        if self.path is None or self._seen is None:
            return
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            raise StoreGone(f"the SQLite file {self.path} was deleted while running") from None
        if (stat.st_dev, stat.st_ino) != self._seen:
            raise StoreGone(f"the SQLite file {self.path} was replaced while running")
