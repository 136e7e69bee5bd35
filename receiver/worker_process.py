"""The workers of ``voicehooks serve``, in a supervised child process of lower CPU priority.

Receiving and processing in one process share one interpreter lock, and on SQLite one write
lock: under a burst the acknowledgements queued behind the handlers (a 0.03 ratio to the bare
endpoint, p99 above a second; issue 16). So ``serve`` runs its workers as a ``voicehooks worker``
child instead (``VOICEHOOKS_WORKER_PROCESS=false`` keeps the old in-process threads):

- the child runs ``VOICEHOOKS_WORKER_NICE`` (default 10) nice levels below ``serve``, so when
  both want the CPU the kernel gives it to the receiver, and the workers take whatever
  acknowledging leaves;
- it is started after ``serve`` has migrated the store, and restarted (after a pause that grows
  to ``MAX_RESTART_DELAY``) if it dies;
- it stops with ``serve``: SIGTERM, which lets the jobs in hand finish, then SIGKILL after
  ``stop_timeout``. On Linux the child is also sent SIGTERM if ``serve`` dies without stopping
  it (``PR_SET_PDEATHSIG``, see ``follow_parent``), so no orphaned worker keeps running.

New jobs wake it at once: Postgres NOTIFY, SQLite ``data_version`` (receiver/wakeup.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

import structlog

log = structlog.get_logger(__name__)
RESTART_DELAY = 1.0  # seconds before the first restart of a worker that died
MAX_RESTART_DELAY = 30.0
STABLE_SECONDS = 60.0  # a worker that ran this long before dying restarts after RESTART_DELAY
PR_SET_PDEATHSIG = 1
PARENT_ENV = "VOICEHOOKS_WORKER_PARENT_PID"  # set for the child: the pid of its serve


def worker_argv() -> list[str]:
    """``voicehooks worker`` with this interpreter (so the child runs the same installation)."""
    return [sys.executable, "-m", "receiver", "worker"]


def follow_parent() -> None:
    """In a worker started by ``serve``: exit when ``serve`` is gone, even if it was killed.

    ``PR_SET_PDEATHSIG`` (Linux) has the kernel send SIGTERM when the parent dies; set here in
    the child itself rather than between fork and exec, which is unsafe in a threaded parent.
    If the parent died before this ran, ``getppid`` no longer names it."""
    expected = os.environ.get(PARENT_ENV)
    if not expected:
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != expected:
        raise SystemExit(0)


MAX_NICE = 19  # the lowest CPU priority there is


class WorkerProcess:
    """One supervised ``voicehooks worker`` child; ``start()`` and ``stop()`` from the parent."""

    def __init__(
        self,
        *,
        nice: int = 10,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        self.nice = nice
        self.argv = argv or worker_argv()
        self.env = env
        self.stop_timeout = stop_timeout
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(
            target=self._supervise, name="voicehooks-worker-supervisor", daemon=True
        )
        self._thread.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            # The child writes its log lines to the same stderr as serve. Its own session, so
            # a Ctrl-C at the terminal reaches serve only, which then stops it in order.
            env = dict(os.environ if self.env is None else self.env)
            env[PARENT_ENV] = str(os.getpid())
            self._process = subprocess.Popen(
                self.argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True
            )
            if self.nice:
                # From the parent, not between fork and exec (unsafe with threads running).
                # Relative to serve's own nice value, which the child inherited: set absolutely,
                # a serve started with `nice -n 15` would have made its workers run above it.
                below = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
                os.setpriority(os.PRIO_PROCESS, self._process.pid, below)
        log.info("worker_process_started", pid=self._process.pid, nice=self.nice)

    def _supervise(self) -> None:
        delay = RESTART_DELAY
        while not self._stopping.is_set():
            process = self._process
            assert process is not None
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= STABLE_SECONDS:
                delay = RESTART_DELAY
            log.error("worker_process_exited", pid=process.pid, code=code, restart_in=delay)
            if self._stopping.wait(delay):
                return
            delay = min(MAX_RESTART_DELAY, delay * 2)
            self.restarts += 1
            self._spawn()

    def stop(self) -> int | None:
        """Stop the child (SIGTERM: it finishes the jobs in hand), waiting up to
        ``stop_timeout`` before SIGKILL; returns its exit code."""
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.error("worker_process_killed", pid=process.pid, after=self.stop_timeout)
                process.kill()
                process.wait()
        if self._thread is not None:
            self._thread.join(5)
        return process.returncode
