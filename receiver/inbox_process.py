"""The inbox's writes in a process of their own, so that storing never holds the event loop's
interpreter lock.

The receiver answers deliveries on one event loop, and the inbox (receiver/inbox.py) commits them
from writer threads of the same process. Those threads spend most of a batch inside SQLite or
waiting for Postgres, with the interpreter lock released, but every batch also needs the lock a
few times (to bind its values, to read the new ids, to hand the answers back), and each time they
wait for the busy event loop to let go of it. Under load that doubled the time a commit took and
halved what the receiver acknowledged (bench/RESULTS.md). Here the same ``Inbox`` runs in a child
process; the receiver sends each turn's deliveries over a socket pair and gets their receipts
back, which costs the event loop a pickle of the batch and nothing else.

The rule does not change: a delivery is answered 200 only once the child's transaction holding it
has committed, and if the child dies or stalls the waiting requests are answered 503 (their
senders retry) and a new child is started. The child reads its settings from the socket, never
from its command line, so no secret shows in a process listing; it exits when the receiver
closes the socket or dies.

Protocol (both ways: a 4-byte big-endian length, then a pickle; both ends are this module):
- receiver -> child: ``(settings,)`` once, then ``(batch_id, routes or None, deliveries)``; routes
  are sent again only when the registry's changed;
- child -> receiver: ``("ready",)`` once connected to the store, then ``(batch_id, results)``,
  one ``Receipt`` or error text per delivery, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, cast

import structlog

from receiver.inbox import POSTGRES_WRITERS, Inbox, IncomingDelivery, Receipt, give_up
from receiver.settings import Settings

log = structlog.get_logger(__name__)
_HEADER = struct.Struct(">I")
START_TIMEOUT = 60.0  # seconds for a child to import, connect and say it is ready
STOP_TIMEOUT = 30.0  # seconds for a child to finish its batches once told to stop
RESTART_DELAY = 1.0  # seconds between a child's death and the next start


class StoreUnavailable(Exception):
    """The inbox process could not store the delivery (its error text, or it is restarting)."""


class _Routes:
    """The registry as the child's ``Inbox`` needs it: the routes, as last sent."""

    def __init__(self) -> None:
        self.current: tuple[tuple[str, str, str], ...] = ()

    def routes(self) -> tuple[tuple[str, str, str], ...]:
        return self.current


def _unframe(buffer: bytearray, limit: int | None = None) -> list[Any]:
    """The whole messages at the start of ``buffer`` (at most ``limit``), removed from it."""
    messages: list[Any] = []
    start = 0
    while (limit is None or len(messages) < limit) and len(buffer) - start >= _HEADER.size:
        (length,) = _HEADER.unpack_from(buffer, start)
        end = start + _HEADER.size + length
        if len(buffer) < end:
            break
        messages.append(pickle.loads(memoryview(buffer)[start + _HEADER.size : end]))
        start = end
    del buffer[:start]
    return messages


class _Frames(asyncio.Protocol):
    """Length-prefixed pickles off a stream, each handed to ``on_message``."""

    def __init__(
        self, on_message: Callable[[Any], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        self._buffer = bytearray()
        self._on_message, self._on_lost = on_message, on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes, but have their methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        for message in _unframe(self._buffer):
            self._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)

    def send(self, message: Any) -> None:
        assert self.transport is not None
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.transport.writelines([_HEADER.pack(len(payload)), payload])


# -- the receiver's side ----------------------------------------------------------------------


class InboxProcess:
    """``accept`` as ``Inbox.accept``, with the writes done by a child process."""

    def __init__(
        self,
        settings: Settings,
        routes: Callable[[], tuple[tuple[str, str, str], ...]],
        *,
        on_new_jobs: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._routes = routes
        self._on_new_jobs = on_new_jobs
        self._timeout = settings.store_timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._frames: _Frames | None = None
        self._ready: asyncio.Future[None] | None = None
        self._sent_routes: tuple[tuple[str, str, str], ...] | None = None
        self._batches: dict[int, list[asyncio.Future[Receipt]]] = {}
        self._next_batch = 0
        self._waiting: list[tuple[IncomingDelivery, asyncio.Future[Receipt]]] | None = None
        self._stopping = False
        self._restart: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the child and wait until it is connected to the store (or raise why not)."""
        self._stopping = False
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "receiver.inbox_process", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        self._ready = loop.create_future()
        self._sent_routes = None
        _, self._frames = await loop.create_connection(
            lambda: _Frames(self._answered, self._lost), sock=ours
        )
        self._frames.send((self._settings,))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
        except BaseException:
            self._kill()
            raise

    async def stop(self) -> None:
        """Let the child finish what it was sent, then end it."""
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
        if self._frames is not None and self._frames.transport is not None:
            self._frames.transport.close()  # the child sees the end of its input, and stops
        process = self._process
        if process is not None:
            try:
                await asyncio.to_thread(process.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.error("inbox_process_stop_timeout", pid=process.pid)
                self._kill()

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    async def accept(self, incoming: IncomingDelivery) -> Receipt:
        """Store ``incoming``; returns once the child's transaction holding it has committed."""
        frames = self._frames
        if frames is None or frames.transport is None or frames.transport.is_closing():
            raise StoreUnavailable("the inbox process is restarting")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Receipt] = loop.create_future()
        # Those that arrive in the same turn of the event loop are sent together.
        if self._waiting is None:
            self._waiting = []
            loop.call_soon(self._send, loop)
        self._waiting.append((incoming, future))
        return await future

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        waiting, self._waiting = self._waiting or [], None
        frames = self._frames
        if frames is None or frames.transport is None or frames.transport.is_closing():
            _fail(
                [future for _, future in waiting],
                StoreUnavailable("the inbox process is restarting"),
            )
            return
        self._next_batch += 1
        batch = self._next_batch
        futures = [future for _, future in waiting]
        self._batches[batch] = futures
        routes = self._routes()
        # The registry keeps its routes as one object until they change: usually the same.
        unchanged = routes is self._sent_routes or routes == self._sent_routes
        changed = None if unchanged else routes
        self._sent_routes = routes
        frames.send((batch, changed, [incoming for incoming, _ in waiting]))
        # One timer for the batch: past the store timeout its requests are answered 503.
        loop.call_later(self._timeout, self._expire, batch)

    def _expire(self, batch: int) -> None:
        futures = self._batches.pop(batch, None)
        if futures:
            give_up(futures, self._timeout)

    def _answered(self, message: Any) -> None:
        if message == ("ready",):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        batch, results = message
        futures = self._batches.pop(batch, None)
        if futures is None:  # answered after its timeout: the requests were told 503
            return
        new_jobs = False
        for future, result in zip(futures, results, strict=True):
            if future.done():  # the client went away; the delivery is stored all the same
                continue
            if isinstance(result, Receipt):
                new_jobs = new_jobs or result.jobs > 0
                future.set_result(result)
            else:
                future.set_exception(StoreUnavailable(result))
        if new_jobs and self._on_new_jobs is not None:
            self._on_new_jobs()

    def _lost(self, exc: Exception | None) -> None:
        """The child's socket closed: on stop, or because the child died."""
        self._frames = None
        error = StoreUnavailable("the inbox process exited")
        for futures in self._batches.values():
            _fail(futures, error)
        self._batches.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(
                RuntimeError("the inbox process exited before it was ready (see its log above)")
            )
        if self._stopping:
            return
        code = self._process.poll() if self._process is not None else None
        log.error("inbox_process_exited", returncode=code, restart_in=RESTART_DELAY)
        self._restart = asyncio.ensure_future(self._start_again())

    async def _start_again(self) -> None:
        while not self._stopping:
            await asyncio.sleep(RESTART_DELAY)
            self._kill()
            try:
                await self.start()
            except Exception as exc:
                log.error("inbox_process_start_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            log.info("inbox_process_restarted", pid=self._process.pid if self._process else None)
            return


def _fail(futures: list[asyncio.Future[Receipt]], error: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


# -- the child's side -------------------------------------------------------------------------


class _Reader:
    """Whole messages off a blocking socket: ``next_round`` waits for at least one, then takes
    every other one already received, so one transaction stores all that waited meanwhile."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self.closed = False

    def next_round(self, limit: int) -> list[Any]:
        messages: list[Any] = []
        while not messages and not self.closed:
            self._fill(wait=True)
            messages = self._take(limit)
        while len(messages) < limit and not self.closed:
            try:
                self._fill(wait=False)
            except BlockingIOError:
                break
            messages += self._take(limit - len(messages))
        return messages

    def _fill(self, *, wait: bool) -> None:
        # The socket stays blocking (writer threads send on it): MSG_DONTWAIT makes one call not.
        data = self._sock.recv(1 << 20, 0 if wait else socket.MSG_DONTWAIT)
        if not data:
            self.closed = True
        self._buffer += data

    def _take(self, limit: int) -> list[Any]:
        return _unframe(self._buffer, limit)


def _send(sock: socket.socket, message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _serve(sock: socket.socket) -> None:
    """Store what the receiver sends until it closes the socket. No event loop: this thread reads,
    and a writer thread (two on Postgres, see ``POSTGRES_WRITERS``) takes a round at a time: every
    batch that arrived while the writers were busy, stored in one transaction."""
    from receiver.gc_tuning import freeze_startup_objects
    from receiver.ingest_signal import IngestSignal
    from receiver.logging import configure as configure_logging
    from receiver.store.db import create_db_engine

    reader = _Reader(sock)
    first = reader.next_round(1)
    if not first:
        return
    (settings,) = first[0]
    assert isinstance(settings, Settings)
    configure_logging(settings.log_level)
    engine = create_db_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        store_timeout=settings.store_timeout_seconds,
    )
    routes = _Routes()
    inbox = Inbox(
        engine,
        routes,
        max_batch=settings.inbox_max_batch,
        timeout=settings.store_timeout_seconds,
    )
    inbox.store_file.remember()
    writers = 1 if engine.dialect.name == "sqlite" else POSTGRES_WRITERS
    rounds: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
    free = threading.Semaphore(writers)  # a round is read only when a writer can take it
    in_flight = _InFlight(IngestSignal.in_dir(settings.data_dir))
    sending = threading.Lock()

    def store(messages: list[Any]) -> None:
        deliveries: list[IncomingDelivery] = [d for _, _, batch in messages for d in batch]
        results: list[Receipt] | list[str]
        try:
            results = inbox.store_batch(deliveries)
        except Exception as exc:
            results = [f"{type(exc).__name__}: {exc}"] * len(deliveries)
        offset = 0
        with sending, contextlib.suppress(OSError):  # receiver gone: the deliveries are stored
            for batch_id, _, batch in messages:
                _send(sock, (batch_id, results[offset : offset + len(batch)]))
                offset += len(batch)

    def write_rounds() -> None:
        try:
            while (messages := rounds.get()) is not None:
                try:
                    store(messages)
                finally:
                    in_flight.done()
                    free.release()
        finally:
            inbox.close()  # this thread's kept connection

    threads = [
        threading.Thread(target=write_rounds, name=f"voicehooks-inbox-{n}") for n in range(writers)
    ]
    for thread in threads:
        thread.start()
    freeze_startup_objects()
    _send(sock, ("ready",))
    try:
        while True:
            free.acquire()
            # Messages carry one turn of the receiver's loop each: a few deliveries.
            messages = reader.next_round(max(1, settings.inbox_max_batch // 8))
            if not messages:
                break  # the receiver closed the socket (stopping) or died
            for _, changed, _ in messages:
                if changed is not None:
                    routes.current = changed
            in_flight.started()
            rounds.put(messages)
    finally:
        for _ in threads:
            rounds.put(None)
        for thread in threads:
            thread.join()  # what was read is stored before the process ends
        engine.dispose()


class _InFlight:
    """Rounds being stored; the ingest signal is raised while there are any (workers defer)."""

    def __init__(self, ingest: Any) -> None:
        self._signal = ingest
        self._count = 0
        self._lock = threading.Lock()

    def started(self) -> None:
        with self._lock:
            self._count += 1
            self._signal.set_busy(True)

    def done(self) -> None:
        with self._lock:
            self._count -= 1
            if self._count == 0:
                self._signal.set_busy(False)


def main(argv: list[str] | None = None) -> None:
    """``python -m receiver.inbox_process FD``: FD is this end of the receiver's socket pair."""
    args = sys.argv[1:] if argv is None else argv
    # Ctrl-C reaches the whole process group: the receiver then closes the socket, and this
    # process ends once the batches it was sent are stored, not in the middle of one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(socket.socket(fileno=int(args[0])))


if __name__ == "__main__":
    main()
