"""Waking workers in other processes when the inbox commits new jobs.

The inbox wakes workers of its own process directly. A worker in another process
(``voicehooks worker``, the way to run under sustained load) would otherwise find a new job only
at its next poll, ``VOICEHOOKS_WORKER_POLL_SECONDS`` (0.5 s) later. So:

- Postgres: after a batch that created jobs, the inbox sends ``NOTIFY voicehooks_jobs`` (after the
  requests are answered, so no acknowledgement waits for it), and every worker process keeps a
  connection of its own that ``LISTEN``s on that channel.
- SQLite has no notifications, but ``PRAGMA data_version`` changes whenever another connection
  commits, and reading it costs no I/O (it is in the shared-memory WAL index), so the watcher
  reads it every ``SQLITE_INTERVAL`` seconds.

Either way a wake-up only makes a worker look now; a missed one costs at most a poll interval, so
the watcher never stops the worker: on an error it logs, waits and reconnects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import Engine

log = structlog.get_logger(__name__)
CHANNEL = "voicehooks_jobs"
SQLITE_INTERVAL = 0.005  # seconds between two reads of PRAGMA data_version (~10 us each)
LISTEN_TIMEOUT = 0.25  # seconds a Postgres listener waits before checking for stop
RECONNECT_DELAY = 2.0  # seconds before a failed watcher connects again


def announce(dbapi_connection: Any) -> None:
    """Tell listening workers that new jobs are committed (Postgres; SQLite needs nothing).

    A notification is delivered when its transaction commits, hence the commit."""
    dbapi_connection.execute(f"NOTIFY {CHANNEL}")
    dbapi_connection.commit()


class CommitWatcher:
    """Calls ``on_commit`` soon after another connection commits new jobs (a daemon thread)."""

    def __init__(self, engine: Engine, on_commit: Callable[[], None]) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="voicehooks-wakeup", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(LISTEN_TIMEOUT + 1)
            self._thread = None

    def _run(self) -> None:
        watch = self._listen if self._engine.dialect.name == "postgresql" else self._poll_sqlite
        while not self._stopping.is_set():
            try:
                conn = self._engine.raw_connection()
                conn.detach()  # kept for the process's lifetime, outside the pool
                try:
                    watch(conn.dbapi_connection)
                finally:
                    conn.close()
            except Exception as exc:
                log.warning("wakeup_watcher_failed", error=f"{type(exc).__name__}: {exc}")
                self._stopping.wait(RECONNECT_DELAY)

    def _listen(self, dbapi_connection: Any) -> None:
        dbapi_connection.autocommit = True
        dbapi_connection.execute(f"LISTEN {CHANNEL}")
        while not self._stopping.is_set():
            # Several notifications that arrive together need one wake-up.
            if any(True for _ in dbapi_connection.notifies(timeout=LISTEN_TIMEOUT)):
                self._on_commit()

    def _poll_sqlite(self, dbapi_connection: Any) -> None:
        cursor = dbapi_connection.cursor()
        (seen,) = cursor.execute("PRAGMA data_version").fetchone()
        while not self._stopping.wait(SQLITE_INTERVAL):
            (version,) = cursor.execute("PRAGMA data_version").fetchone()
            if version != seen:
                seen = version
                self._on_commit()
