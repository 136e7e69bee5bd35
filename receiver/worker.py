"""Workers: claim a due job under a lease, run its handler, record the outcome.

A claim (``jobs.claim``) is a short write transaction (Postgres: ``FOR UPDATE SKIP LOCKED``, so
workers never wait for each other; SQLite: ``BEGIN IMMEDIATE``) that marks the job running until
``lease_until`` with a fresh ``lease_token``. The handler then runs in its own session, and
marking the job done happens in that same transaction, guarded by the token: if the lease was
lost (this worker stalled and another took the job over), the handler's writes are rolled back
rather than applied twice.
A worker killed mid-job simply lets its lease expire; the job is claimed again.

The concurrent loops share their claims: one transaction (``jobs.claim_many``) claims a job for
each idle loop, with its delivery row. A job whose handler wrote nothing through its session (a
no-op, or one that only calls out) has no transaction to join, so it is marked done together
with the others that finish meanwhile (``jobs.complete_many``: one commit for several).

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

import anyio
import httpx
import structlog
from sqlalchemy import Engine
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


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PermanentFailure) else str(exc)
    return text[:MAX_ERROR_CHARS]


def _wrote(session: Session) -> bool:
    """Whether a handler used its transaction (then the job's end must commit with it)."""
    return bool(session.in_transaction() or session.new or session.dirty or session.deleted)


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
        # Jobs whose handler wrote nothing, waiting to be marked done together.
        self._finished: list[tuple[ClaimedJob, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Future[None] | None = None

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
                    background.cancel_scope.cancel()  # the workers stopped: so do the tasks
        finally:
            await anyio.to_thread.run_sync(watcher.stop)

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
                    await self.execute(job)
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
            while (job := self.claim(delivery_id)) is not None:
                await self.execute(job)
                count += 1
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

    async def _next_job(self) -> ClaimedJob | None:
        """A job claimed earlier, or a fresh batch: one claim transaction (one commit) for all
        the loops that are idle, never more, so no claimed job waits for a free loop while its
        lease runs. The caller counts as busy from here until its ``execute`` ends."""
        async with self._claiming:
            if not self._claimed and not self._stopping:
                idle = max(1, self.settings.worker_concurrency - self._busy)
                batch = await anyio.to_thread.run_sync(
                    jobs.claim_many, self.engine, self.settings.job_lease_seconds, idle
                )
                self._claimed.extend(batch)
            if not self._claimed:
                return None
            self._busy += 1
            return self._claimed.popleft()

    async def _complete_together(self, job: ClaimedJob) -> bool:
        """Mark ``job`` done along with the others that finish meanwhile, in one transaction
        (group commit, like the inbox's): for handlers that wrote nothing of their own."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finished.append((job, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_finished())
        return await future

    async def _flush_finished(self) -> None:
        while self._finished:
            batch, self._finished = self._finished, []
            try:
                done = await anyio.to_thread.run_sync(
                    jobs.complete_many, self.engine, [job for job, _ in batch]
                )
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for job, future in batch:
                if not future.done():
                    future.set_result(job.id in done)

    # -- execute ------------------------------------------------------------------------------

    async def execute(self, job: ClaimedJob) -> None:
        started = time.perf_counter()
        heartbeat = asyncio.ensure_future(self._heartbeat(job))
        try:
            result = await self._run_handler(job)
        finally:
            heartbeat.cancel()
        metrics.JOB_SECONDS.labels(job.handler).observe(time.perf_counter() - started)
        metrics.JOBS.labels(job.handler, result).inc()

    async def _run_handler(self, job: ClaimedJob) -> str:
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
                    if _wrote(session):
                        completed = await anyio.to_thread.run_sync(jobs.complete, session, job)
                    else:
                        completed = await self._complete_together(job)
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

    async def _heartbeat(self, job: ClaimedJob) -> None:
        """Extend the lease while a long handler (a 300 MB audio decode) is still working."""
        interval = self.settings.job_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await anyio.to_thread.run_sync(self._extend_lease, job)
            except Exception:
                log.warning("lease_extend_failed", job_id=job.id, exc_info=True)

    def _extend_lease(self, job: ClaimedJob) -> None:
        jobs.extend_lease(self.engine, job, self.settings.job_lease_seconds)
