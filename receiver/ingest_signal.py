"""Ingest takes priority: a flag the receiver raises while deliveries wait for their commit.

Workers and the inbox share the machine's CPU and, on SQLite, one write lock. A worker whose
transaction holds that lock while the kernel has it waiting (it runs at a lower priority, see
receiver/worker_process.py) stalls every acknowledgement behind it. So the inbox marks the times
when deliveries are waiting for a commit, and workers start nothing new (no claim, no handler)
while the mark is fresh: under a burst they wait for a gap, and the backlog drains afterwards.

The mark is an 8-byte double in a small file mapped into memory in ``data_dir`` (the receiver
and its worker processes on this machine read it without a system call): the wall-clock time of
the last "busy", or minus the time the inbox went idle. Under a burst the inbox is idle for a
fraction of a millisecond between commits, so "idle" counts only after ``HOLDOFF_SECONDS`` of
it: workers wait for a real gap (an idle receiver's job starts that much later).

It is advice, never a lock: a mark older than ``STALE_SECONDS`` (a receiver that died busy)
counts as idle, and a worker never waits longer than ``MAX_YIELD_SECONDS`` before taking one
job, so processing cannot starve entirely.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

FILENAME = "ingest.busy"
STALE_SECONDS = 2.0
MAX_YIELD_SECONDS = 1.0  # the longest a worker defers a job to acknowledgements
POLL_SECONDS = 0.005  # how often a deferring worker looks again
HOLDOFF_SECONDS = 0.01  # how long the inbox must have been idle for workers to start work
_SIZE = 8


class IngestSignal:
    """The shared mark; ``set_busy`` from the inbox, ``busy`` from workers."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)

    @classmethod
    def in_dir(cls, data_dir: Path) -> IngestSignal:
        return cls(data_dir / FILENAME)

    def set_busy(self, busy: bool) -> None:
        now = time.time()
        struct.pack_into("d", self._map, 0, now if busy else -now)

    def busy(self) -> bool:
        (mark,) = struct.unpack_from("d", self._map, 0)
        if mark > 0.0:
            return time.time() - mark < STALE_SECONDS
        return mark < 0.0 and time.time() + mark < HOLDOFF_SECONDS

    def close(self) -> None:
        self._map.close()
