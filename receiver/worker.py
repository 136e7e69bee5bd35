"""Workers: claim a due job under a lease, run its handler, record the outcome.

A claim (``jobs.claim``) is a short write transaction (Postgres: ``FOR UPDATE SKIP LOCKED``, so
workers never wait for each other; SQLite: ``BEGIN IMMEDIATE``) that marks the job running until
``lease_until`` with a fresh ``lease_token``. The handler then runs in its own session, and
marking the job done happens in that same transaction, guarded by the token: if the lease was
lost (this worker stalled and another took the job over), the handler's writes are rolled back
rather than applied twice.
A worker killed mid-job simply lets its lease expire; the job is claimed again.

The concurrent loops share their claims: one transaction (``jobs.claim_many``; on Postgres one
statement) claims a job for each idle loop, with its delivery row, and when the backlog is deep
(the last claim found as many jobs as it asked for) up to ``PREFETCH_PER_LOOP`` more per loop,
which wait in the worker's queue for a free loop. A job whose handler wrote nothing through its
session (a no-op, or one that only calls out) has no transaction to join, so it is marked done
together with the others that finish meanwhile (``jobs.complete_many``: one commit for
several), and its loop goes on to the next job without waiting for that commit.

One lease keeper per worker extends, every third of the lease, the leases of every job the
worker holds: running, waiting in its queue, or waiting to be marked done. A worker that stalls
(its event loop blocked) extends nothing, so its jobs are taken over when their leases run out;
a job whose lease was lost while it waited in the queue is not started.

On Postgres the claims and the group completions each run on a connection the worker keeps in
autocommit mode: no pool checkout, so no pre-ping round trip, per transaction. A connection that
fails is dropped; one the database had dropped while it was idle (a restart: what a pre-ping
would have caught) is replaced at once and the statement tried again, as the inbox does with
its kept connections. Otherwise the worker backs off (``StoreBackoff``) and the next claim opens
a new one.

Workers run on their own thread and event loop, so a slow or blocking handler never delays the
receiver's acknowledgements.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import anyio
import httpx
import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from receiver import fetch, jobs, metrics
from receiver.backoff import StoreBackoff
from receiver.body import ReceivedBody
from receiver.events import (
    Event,
    HandlerContext,
    PeriodicContext,
    PermanentFailure,
    RetryLater,
    RunAgainLater,
)
from receiver.inbox import Inbox
from receiver.ingest_signal import MAX_YIELD_SECONDS, POLL_SECONDS, IngestSignal
from receiver.jobs import ClaimedJob
from receiver.registry import PeriodicSpec, Registry
from receiver.retention import prune_daily
from receiver.settings import Settings
from receiver.sources.base import Source
from receiver.store.blobs import BlobStore
from receiver.store.db import writer
from receiver.wakeup import CommitWatcher

log = structlog.get_logger(__name__)
MAX_ERROR_CHARS = jobs.MAX_ERROR_CHARS
_T = TypeVar("_T")
# Jobs claimed ahead per loop when the backlog is deep: they wait in the worker's queue, their
# leases kept by the lease keeper, so at most this many per loop are held back from other
# workers.
PREFETCH_PER_LOOP = 1


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PermanentFailure) else str(exc)
    return text[:MAX_ERROR_CHARS]


def _wrote(session: Session) -> bool:
    """Whether a handler used its transaction (then the job's end must commit with it)."""
    return bool(session.in_transaction() or session.new or session.dirty or session.deleted)


class KeptConnection:
    """A connection a worker keeps for one kind of transaction (claims, or group completions),
    used by one thread at a time, in autocommit mode: each of its statements commits on its own.
    Checking a connection out of the pool for every transaction cost a pre-ping round trip
    each. One that fails is dropped. When it failed because the database had dropped it while
    it was idle (a restart, a failover: SQLAlchemy saw a disconnect and invalidated it), which
    a pre-ping would have caught, the call is tried once more on a fresh one; the pool
    pre-pings that one at checkout."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def run(self, func: Callable[..., _T], *args: object) -> _T:
        conn = self._conn
        fresh = conn is None
        if conn is None:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._conn = conn
        try:
            return func(conn, *args)
        except BaseException as exc:
            self.close()
            if fresh or not (isinstance(exc, DBAPIError) and exc.connection_invalidated):
                raise
            log.warning("worker_reconnecting", error=type(exc.orig).__name__)
            return self.run(func, *args)  # on a fresh connection: not retried again

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class Worker:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        sources: dict[str, Source],
        blobs: BlobStore,
        settings: Settings,
        ingest_signal: IngestSignal | None = None,
    ) -> None:
        self.engine = engine
        self.ingest_signal = ingest_signal
        self._writer = writer(engine)
        self.registry = registry
        self.sources = sources
        self.blobs = blobs
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._store = StoreBackoff("worker", settings.worker_poll_seconds)
        # Claimed together (``jobs.claim_many``), run one by one by the concurrent loops.
        self._claimed: deque[ClaimedJob] = deque()
        self._claiming = asyncio.Lock()  # one claim at a time, for as many loops as are idle
        self._busy = 0  # loops running a job
        self._deep = False  # the last claim found as many jobs as it asked for
        # Every job this worker holds a lease on (queued, running, or waiting to be marked
        # done), by id: what the lease keeper extends.
        self._held: dict[int, ClaimedJob] = {}
        self._keeper: asyncio.Future[None] | None = None
        # Jobs whose handler wrote nothing, waiting to be marked done together: with the
        # handler's duration, and a future for a caller that waits for the outcome.
        self._finished: list[tuple[ClaimedJob, float, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Future[None] | None = None
        # Postgres: kept autocommit connections (no pre-ping per transaction); SQLite: the
        # engine (its claims need BEGIN IMMEDIATE, and it has no pre-ping).
        postgres = engine.dialect.name == "postgresql"
        self._claims = KeptConnection(engine) if postgres else None
        self._completions = KeptConnection(engine) if postgres else None

    # -- running on a thread of its own ---------------------------------------------------------

    def start_in_thread(self) -> None:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.run()), name="voicehooks-worker", daemon=True
        )
        self._thread.start()
        self._started.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Thread-safe: a job was inserted, look now instead of at the next poll."""
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wakeup.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._started.set()
        # Jobs committed by other processes (a receiver, replay) wake us too, not only the poll.
        watcher = CommitWatcher(self.engine, self.wake)
        watcher.start()
        timeout = httpx.Timeout(30.0, connect=10.0)
        try:
            async with fetch.guarded_client(self.settings, timeout=timeout) as http:
                self._http = http
                async with anyio.create_task_group() as background:
                    for spec in self.registry.periodics():
                        background.start_soon(self._run_periodic, spec)
                    if self.settings.retention_days is not None:
                        days = self.settings.retention_days
                        background.start_soon(prune_daily, self.engine, self.blobs, days)
                    async with anyio.create_task_group() as tasks:
                        for _ in range(max(1, self.settings.worker_concurrency)):
                            tasks.start_soon(self._loop_forever)
                    await self._settled()  # jobs waiting to be marked done, then stop
                    background.cancel_scope.cancel()  # the workers stopped: so do the tasks
        finally:
            self._stop_keeper()
            await anyio.to_thread.run_sync(watcher.stop)
            for kept in (self._claims, self._completions):
                if kept is not None:
                    await anyio.to_thread.run_sync(kept.close)

    async def _loop_forever(self) -> None:
        assert self._wakeup is not None
        while not self._stopping or self._claimed:  # jobs in hand are finished before stopping
            # Cleared before looking, so a wake-up that comes while we look is not lost.
            self._wakeup.clear()
            await self._defer_to_ingest()
            try:
                job = await self._next_job()
            except Exception as exc:
                await self._wait_out(exc)
                continue
            self._store.succeeded()
            if job is not None:
                try:
                    await self.execute(job, wait=False)
                except Exception as exc:
                    # Its outcome could not be recorded (the store went away mid-job). This loop
                    # must not die of it, or the worker idles forever once the store is back;
                    # the job's lease expires and it is claimed again.
                    await self._wait_out(exc)
                finally:
                    self._busy -= 1
                continue
            if self._stopping:  # stop() may have woken us while we looked
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.settings.worker_poll_seconds)

    async def _run_periodic(self, spec: PeriodicSpec) -> None:
        """Run a plugin's periodic task now and then every interval, until the worker stops."""
        interval = spec.interval(self.settings)
        if interval <= 0:
            return
        ctx = PeriodicContext(
            settings=self.settings,
            engine=self.engine,
            blobs=self.blobs,
            http=self._http,
            sources=self.sources,
            inbox=Inbox(self.engine, self.registry, on_new_jobs=self.wake),
        )
        log.info("periodic_task_scheduled", task=spec.name, every_seconds=interval)
        while not self._stopping:
            try:
                await spec.func(ctx)
            except Exception:
                log.exception("periodic_task_failed", task=spec.name)
            await anyio.sleep(interval)

    async def _wait_out(self, exc: Exception) -> None:
        """Back off after a store failure. A wake-up (a commit seen) ends the wait early: the
        store is evidently back."""
        assert self._wakeup is not None
        delay = self._store.failed(exc)
        if self._stopping:
            return
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), delay)

    async def drain(self, delivery_id: int | None = None) -> int:
        """Run due jobs until none is left (CLI and tests); returns how many ran.
        ``delivery_id``: only that delivery's jobs."""
        timeout = httpx.Timeout(30.0, connect=10.0)
        count = 0
        async with fetch.guarded_client(self.settings, timeout=timeout) as http:
            self._http = http
            try:
                while (job := self.claim(delivery_id)) is not None:
                    await self.execute(job)
                    count += 1
            finally:
                self._stop_keeper()
        return count

    # -- claim --------------------------------------------------------------------------------

    def claim(self, delivery_id: int | None = None) -> ClaimedJob | None:
        return jobs.claim(self.engine, self.settings.job_lease_seconds, delivery_id=delivery_id)

    async def _defer_to_ingest(self) -> None:
        """Start nothing while deliveries wait for their commit (receiver/ingest_signal.py),
        for at most ``MAX_YIELD_SECONDS``: acknowledging comes first, the backlog after."""
        signal = self.ingest_signal
        if signal is None or not signal.busy():
            return
        deadline = time.monotonic() + MAX_YIELD_SECONDS
        while signal.busy() and not self._stopping and time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)

    def _claim_batch(self, limit: int) -> list[ClaimedJob]:
        """One claim transaction for up to ``limit`` jobs (on a worker thread)."""
        lease = self.settings.job_lease_seconds
        if self._claims is None:
            return jobs.claim_many(self.engine, lease, limit)
        return self._claims.run(jobs.claim_many, lease, limit)

    async def _next_job(self) -> ClaimedJob | None:
        """A job claimed earlier, or a fresh batch: one claim transaction (one commit) for all
        the loops that are idle, and when the backlog is deep ``PREFETCH_PER_LOOP`` more per
        loop, kept leased while they wait (``_keep_leases``). The caller counts as busy from
        here until its ``execute`` ends."""
        async with self._claiming:
            while True:
                if not self._claimed and not self._stopping:
                    concurrency = max(1, self.settings.worker_concurrency)
                    want = max(1, concurrency - self._busy)
                    if self._deep:
                        want += PREFETCH_PER_LOOP * concurrency
                    batch = await anyio.to_thread.run_sync(self._claim_batch, want)
                    self._deep = len(batch) == want
                    for claimed in batch:
                        self._held[claimed.id] = claimed
                    self._claimed.extend(batch)
                    if batch:
                        self._start_keeper()
                if not self._claimed:
                    return None
                job = self._claimed.popleft()
                if job.id in self._held:
                    self._busy += 1
                    return job
                # Its lease was lost while it waited (the keeper could not extend it in time,
                # and another worker took it over): it is not ours to run.
                log.warning("lease_lost", job_id=job.id, handler=job.handler, started=False)

    def _complete_later(self, job: ClaimedJob, seconds: float) -> asyncio.Future[bool]:
        """Mark ``job`` done along with the others that finish meanwhile, in one transaction
        (group commit, like the inbox's): for handlers that wrote nothing of their own. The
        outcome is logged and counted when that commit returns; the future says whether the
        lease was still held (an exception: the store failed)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finished.append((job, seconds, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_finished())
        return future

    def _complete_batch(self, finished: list[ClaimedJob]) -> set[int]:
        if self._completions is None:
            return jobs.complete_many(self.engine, finished)
        return self._completions.run(jobs.complete_many, finished)

    async def _flush_finished(self) -> None:
        while self._finished:
            batch, self._finished = self._finished, []
            try:
                done = await anyio.to_thread.run_sync(
                    self._complete_batch, [job for job, _, _ in batch]
                )
            except Exception as exc:
                # Not recorded: the leases are left to run out (the keeper lets them go), and
                # the jobs are claimed again, as if this worker had died.
                log.warning(
                    "jobs_not_completed", jobs=len(batch), error=f"{type(exc).__name__}: {exc}"
                )
                for job, _, future in batch:
                    self._held.pop(job.id, None)
                    future.set_exception(exc)
                    future.exception()  # retrieved: nobody may be waiting for it
                continue
            for job, seconds, future in batch:
                self._held.pop(job.id, None)
                completed = job.id in done
                if completed:
                    log.info("job_done", job_id=job.id, handler=job.handler, attempt=job.attempts)
                else:
                    log.warning("lease_lost", job_id=job.id, handler=job.handler)
                _count(job.handler, "done" if completed else "lease_lost", seconds)
                future.set_result(completed)

    async def _settled(self) -> None:
        """Wait until every job marked done together has been recorded."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])

    # -- leases -------------------------------------------------------------------------------

    def _start_keeper(self) -> None:
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.ensure_future(self._keep_leases())

    def _stop_keeper(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None

    async def _keep_leases(self) -> None:
        """Every third of the lease, extend the lease of every job this worker holds, in one
        transaction: a long handler (a 300 MB audio decode) is not taken over while it works,
        nor is a job that waits in the queue for a free loop."""
        interval = self.settings.job_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            held = list(self._held.values())
            if not held:
                continue
            try:
                kept = await anyio.to_thread.run_sync(self._extend_leases, held)
            except Exception:
                log.warning("lease_extend_failed", jobs=len(held), exc_info=True)
                continue
            for job in held:
                if job.id not in kept:  # taken over: its outcome will not be recorded
                    self._held.pop(job.id, None)

    def _extend_leases(self, held: list[ClaimedJob]) -> set[int]:
        return jobs.extend_leases(self.engine, held, self.settings.job_lease_seconds)

    # -- execute ------------------------------------------------------------------------------

    async def execute(self, job: ClaimedJob, *, wait: bool = True) -> None:
        """Run ``job``'s handler and record its outcome. A job whose handler wrote nothing is
        marked done with others (``_complete_later``): ``wait=False`` (the worker's loops) goes
        on without waiting for that commit."""
        started = time.perf_counter()
        self._held[job.id] = job
        self._start_keeper()
        try:
            result = await self._run_handler(job, started)
        except BaseException:
            self._held.pop(job.id, None)
            raise
        if isinstance(result, str):
            self._held.pop(job.id, None)
            _count(job.handler, result, time.perf_counter() - started)
        elif wait:
            await result

    async def _run_handler(self, job: ClaimedJob, started: float) -> str | asyncio.Future[bool]:
        spec = self.registry.get(job.handler)
        try:
            if spec is None:
                raise RuntimeError(
                    f"handler {job.handler} is not installed (was its plugin removed?)"
                )
            if job.delivery is not None:  # read with the claim: nothing to wait for
                event = self._load_event(job)
            else:
                event = await anyio.to_thread.run_sync(self._load_event, job)
        except Exception as exc:
            return await anyio.to_thread.run_sync(self._record_failure, job, exc)
        # The session's transaction starts at the handler's first statement, not before: a
        # handler that downloads or decodes first holds no lock meanwhile. On SQLite it begins
        # IMMEDIATE, because a deferred read that later writes fails at once with "database is
        # locked" whenever the inbox committed in between (busy_timeout cannot help there).
        # Completion never runs on the event loop: a commit that waits for SQLite's lock there
        # would stall the very loop another job's thread needs in order to release it.
        with Session(self._writer) as session:
            ctx = HandlerContext(
                session=session,
                blobs=self.blobs,
                http=self._http,
                settings=self.settings,
                job_id=job.id,
                attempt=job.attempts,
                engine=self.engine,
            )
            try:
                if inspect.iscoroutinefunction(spec.func):
                    await spec.func(event, ctx)
                    if not _wrote(session):
                        return self._complete_later(job, time.perf_counter() - started)
                    completed = await anyio.to_thread.run_sync(jobs.complete, session, job)
                else:
                    # Handler, completion and commit in one thread: one transaction, one owner.
                    completed = await anyio.to_thread.run_sync(
                        self._run_sync_handler, spec.func, event, ctx, job
                    )
            except RunAgainLater as exc:
                delay = exc.delay
                completed = await anyio.to_thread.run_sync(
                    lambda: jobs.complete(session, job, again_in=delay)
                )
                if completed:
                    log.info("job_again_later", job_id=job.id, handler=job.handler, delay=delay)
                    return "later"
            except PermanentFailure as exc:
                if not exc.keep_writes:
                    await anyio.to_thread.run_sync(session.rollback)
                    return await anyio.to_thread.run_sync(self._record_failure, job, exc)
                # What the handler recorded ends with the job: both commit, or (lease lost)
                # neither does.
                reason = describe_error(exc)
                completed = await anyio.to_thread.run_sync(
                    lambda: jobs.complete(session, job, dead_because=reason)
                )
                if completed:
                    log.error("job_dead", job_id=job.id, handler=job.handler, error=str(exc))
                    return "dead"
            except Exception as exc:
                await anyio.to_thread.run_sync(session.rollback)
                return await anyio.to_thread.run_sync(self._record_failure, job, exc)
        if not completed:
            log.warning("lease_lost", job_id=job.id, handler=job.handler)
            return "lease_lost"
        log.info("job_done", job_id=job.id, handler=job.handler, attempt=job.attempts)
        return "done"

    def _run_sync_handler(
        self, func: Callable[..., object], event: Event, ctx: HandlerContext, job: ClaimedJob
    ) -> bool:
        func(event, ctx)
        return jobs.complete(ctx.session, job)

    def _load_event(self, job: ClaimedJob) -> Event:
        row = job.delivery
        if row is None:
            row = jobs.load_delivery(self.engine, job.delivery_id)
        source = self.sources.get(row.source)
        if source is None:
            raise PermanentFailure(f"delivery {row.id} is from unknown source {row.source!r}")
        if row.pruned_at is not None:
            raise PermanentFailure(f"delivery {row.id}: its body was pruned (retention)")
        if row.blob_path is not None:
            body = ReceivedBody(row.size, row.sha256, path=self.blobs.path(row.blob_path))
        else:
            body = ReceivedBody(row.size, row.sha256, data=row.body)
        return Event(
            row.id, row.source, row.event_type, row.subject_id, row.received_at, body, source
        )

    def _record_failure(self, job: ClaimedJob, exc: Exception) -> str:
        message = describe_error(exc)
        give_up = (
            isinstance(exc, PermanentFailure) or job.attempts >= self.settings.job_max_attempts
        )
        retry_in = None
        if not give_up:
            retry_in = jobs.retry_delay(
                job.attempts,
                self.settings.job_retry_base_seconds,
                self.settings.job_retry_max_seconds,
            )
            if isinstance(exc, RetryLater):  # the provider said when: never sooner
                retry_in = max(retry_in, exc.delay)
        jobs.fail(self.engine, job, message, retry_in=retry_in)
        level = log.error if give_up else log.warning
        level(
            "job_dead" if give_up else "job_retry",
            job_id=job.id,
            handler=job.handler,
            attempt=job.attempts,
            error=message,
            exc_info=not isinstance(exc, PermanentFailure),
        )
        return "dead" if give_up else "retry"


def _count(handler: str, result: str, seconds: float) -> None:
    metrics.JOB_SECONDS.labels(handler).observe(seconds)
    metrics.JOBS.labels(handler, result).inc()
