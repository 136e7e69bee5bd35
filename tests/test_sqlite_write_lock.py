"""``BEGIN IMMEDIATE`` on SQLite waits for the write lock by asking again (receiver/store/db.py)
rather than through SQLite's own busy handler: it must still wait, still give up in time, and
leave the connection's busy timeout as it was."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from receiver.store.db import create_db_engine, take_write_lock, writer


def test_a_writer_waits_for_the_lock_and_takes_it_once_released(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (n INTEGER)")
    holder = sqlite3.connect(tmp_path / "w.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    released = threading.Event()

    def release_soon() -> None:
        time.sleep(0.3)
        holder.execute("COMMIT")
        released.set()

    threading.Thread(target=release_soon).start()
    with writer(engine).begin() as conn:  # waits in take_write_lock
        assert released.is_set()  # it did not get in while the other transaction held the lock
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        (timeout,) = conn.exec_driver_sql("PRAGMA busy_timeout").one()
        assert timeout == 30000  # what _on_connect set, restored after the wait
    with engine.connect() as conn:
        assert [n for (n,) in conn.exec_driver_sql("SELECT n FROM t ORDER BY n")] == [1, 2]
    holder.close()
    engine.dispose()


def test_a_writer_gives_up_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, isolation_level=None)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        take_write_lock(waiter, timeout=0.2)
    assert time.monotonic() - started < 5  # gave up, did not wait for SQLite's 30 s
    assert waiter.execute("PRAGMA busy_timeout").fetchone() == (200,)
    holder.execute("ROLLBACK")
    take_write_lock(waiter, timeout=0.2)  # free now: taken at once
    waiter.execute("ROLLBACK")
    holder.close()
    waiter.close()
