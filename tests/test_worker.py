"""Workers: retries with backoff, dead letters, transactional completion, lease recovery."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from sqlalchemy import Column, Integer, MetaData, String, Table, select, update

from receiver import jobs as job_store
from receiver.events import PermanentFailure
from receiver.inbox import IncomingDelivery
from receiver.jobs import retry_delay
from receiver.registry import HandlerSpec, Registry
from receiver.sources.base import Authenticity, Identity
from receiver.store.models import Job
from receiver.store.types import utcnow
from receiver.worker import Worker
from tests.conftest import event_body, make_settings, wait_until

jobs = Job.__table__
side_effects = Table(
    "test_side_effects",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("note", String(100)),
)


def transcription(key: str) -> IncomingDelivery:
    """An authentic post_call_transcription delivery for conversation ``c<key>``."""
    body = event_body(conversation_id=f"c{key}")
    return IncomingDelivery(
        source="elevenlabs",
        identity=Identity("post_call_transcription", f"k{key}", f"c{key}"),
        auth=Authenticity("hmac", 0),
        sha256="0" * 64,
        size=len(body),
        body=body,
    )


def store(services, n: int = 1) -> list[int]:  # type: ignore[no-untyped-def]
    return [services.inbox.accept_now(transcription(str(i))).delivery_id for i in range(n)]


def job_rows(services):  # type: ignore[no-untyped-def]
    with services.engine.connect() as conn:
        return conn.execute(select(jobs).order_by(jobs.c.id)).all()


def drain(services) -> int:  # type: ignore[no-untyped-def]
    return asyncio.run(services.worker.drain())


def test_failing_handler_retries_with_backoff_then_goes_dead(
    database_url,
    tmp_path,
    services_factory,  # type: ignore[no-untyped-def]
) -> None:
    calls: list[int] = []

    def flaky(event, ctx) -> None:  # type: ignore[no-untyped-def]
        calls.append(ctx.attempt)
        raise RuntimeError(f"downstream unavailable (attempt {ctx.attempt})")

    settings = make_settings(
        database_url,
        tmp_path / "d",
        job_max_attempts=3,
        job_retry_base_seconds=0.3,  # "not due yet" must not race drain()
        job_retry_max_seconds=1,
    )
    services = services_factory(
        settings, Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", flaky)])
    )
    store(services)
    drain(services)
    (job,) = job_rows(services)
    assert job.status == "pending" and job.attempts == 1
    assert job.run_at > utcnow()  # backed off, not due yet
    assert job.last_error == "RuntimeError: downstream unavailable (attempt 1)"
    deadline = time.monotonic() + 10
    while job_rows(services)[0].status != "dead" and time.monotonic() < deadline:
        drain(services)
        time.sleep(0.02)
    (job,) = job_rows(services)
    assert job.status == "dead" and job.attempts == 3 and calls == [1, 2, 3]
    assert "attempt 3" in job.last_error


def test_backoff_grows_exponentially_with_jitter() -> None:
    delays = [retry_delay(n, base=2, cap=10_000) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        assert 2 * 2 ** (n - 1) * 0.5 <= delay <= 2 * 2 ** (n - 1) * 1.5
    assert retry_delay(30, base=2, cap=60) <= 90
    assert len({retry_delay(3, 2, 100) for _ in range(20)}) > 1  # jittered


def test_permanent_failure_skips_retries(database_url, tmp_path, services_factory) -> None:  # type: ignore[no-untyped-def]
    def bad(event, ctx) -> None:  # type: ignore[no-untyped-def]
        raise PermanentFailure("full_audio is not valid base64")

    settings = make_settings(database_url, tmp_path / "d")
    services = services_factory(
        settings, Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", bad)])
    )
    store(services)
    drain(services)
    (job,) = job_rows(services)
    assert (job.status, job.attempts, job.last_error) == (
        "dead",
        1,
        "full_audio is not valid base64",
    )


def test_handler_writes_commit_with_completion_and_roll_back_on_error(
    database_url,
    tmp_path,
    services_factory,  # type: ignore[no-untyped-def]
) -> None:
    def writes_then_maybe_fails(event, ctx) -> None:  # type: ignore[no-untyped-def]
        ctx.session.execute(side_effects.insert().values(note=f"attempt {ctx.attempt}"))
        if ctx.attempt == 1:
            raise RuntimeError("fail after writing")

    settings = make_settings(
        database_url, tmp_path / "d", job_retry_base_seconds=60, job_retry_max_seconds=120
    )
    services = services_factory(
        settings,
        Registry.of(
            [HandlerSpec("elevenlabs", "post_call_transcription", writes_then_maybe_fails)]
        ),
    )
    side_effects.create(services.engine)
    store(services)
    drain(services)
    with services.engine.connect() as conn:
        assert conn.execute(select(side_effects.c.note)).all() == []  # rolled back
    with services.engine.begin() as conn:  # the backoff has passed
        conn.execute(update(jobs).values(run_at=utcnow()))
    drain(services)
    with services.engine.connect() as conn:
        assert conn.execute(select(side_effects.c.note)).scalars().all() == ["attempt 2"]
    assert job_rows(services)[0].status == "done"


def test_expired_lease_is_claimed_again_and_stale_worker_cannot_complete(
    database_url,
    tmp_path,
    services_factory,  # type: ignore[no-untyped-def]
) -> None:
    ran: list[str] = []

    def record(event, ctx) -> None:  # type: ignore[no-untyped-def]
        ran.append(f"attempt {ctx.attempt}")

    settings = make_settings(database_url, tmp_path / "d")
    services = services_factory(
        settings, Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", record)])
    )
    store(services)
    crashed = services.worker.claim()  # a worker claims the job ... and dies
    assert crashed is not None and services.worker.claim() is None  # leased: nobody else takes it
    with services.engine.begin() as conn:  # time passes beyond the lease
        conn.execute(update(jobs).values(lease_until=utcnow() - timedelta(seconds=1)))
    second = services.worker.claim()
    assert second is not None and second.id == crashed.id and second.attempts == 2
    asyncio.run(_execute(services.worker, crashed))  # the stale worker wakes up: ignored
    assert job_rows(services)[0].status == "running"
    asyncio.run(_execute(services.worker, second))
    assert job_rows(services)[0].status == "done" and ran == ["attempt 1", "attempt 2"]


async def _execute(worker: Worker, job) -> None:  # type: ignore[no-untyped-def]
    import httpx

    async with httpx.AsyncClient() as http:
        worker._http = http
        await worker.execute(job)


def test_worker_wakes_promptly_when_a_job_is_inserted(
    database_url,
    tmp_path,
    services_factory,  # type: ignore[no-untyped-def]
) -> None:
    done_at: list[float] = []

    def record(event, ctx) -> None:  # type: ignore[no-untyped-def]
        done_at.append(time.monotonic())

    # A 30 s poll interval: only the wake-up signal can make this prompt.
    settings = make_settings(database_url, tmp_path / "d", worker_poll_seconds=30)
    services = services_factory(
        settings, Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", record)])
    )
    services.worker.start_in_thread()
    try:
        time.sleep(0.2)  # the worker has polled once and is now waiting
        stored_at = time.monotonic()
        store(services)
        wait_until(lambda: done_at, timeout=10)
    finally:
        services.worker.stop()
    assert done_at[0] - stored_at < 5


def test_worker_in_another_process_is_woken_by_the_receivers_commit(
    database_url,
    tmp_path,
    services_factory,  # type: ignore[no-untyped-def]
) -> None:
    """`serve --no-worker` plus `voicehooks worker`: the receiver's inbox cannot wake the other
    process's worker directly; NOTIFY (Postgres) or the commit watcher (SQLite) must."""
    done_at: list[float] = []

    def record(event, ctx) -> None:  # type: ignore[no-untyped-def]
        done_at.append(time.monotonic())

    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", record)])
    # Two sets of services on one database, as two processes would have; only the worker's
    # runs a worker, polling every 30 s, so only a wake-up can make it prompt.
    settings = make_settings(database_url, tmp_path / "d", worker_poll_seconds=30)
    receiver = services_factory(settings, registry)
    worker = services_factory(settings, registry)
    worker.worker.start_in_thread()
    receiver.inbox.start()
    try:
        time.sleep(0.5)  # the worker has polled once and is now waiting
        stored_at = time.monotonic()
        receipt = asyncio.run(receiver.inbox.accept(transcription("-elsewhere")))
        wait_until(lambda: done_at, timeout=10)
    finally:
        receiver.inbox.stop()
        worker.worker.stop()
    assert receipt.jobs == 1
    assert done_at[0] - stored_at < 5


def test_a_command_storing_through_accept_now_wakes_another_process_worker(
    database_url,
    tmp_path,
    services_factory,  # type: ignore[no-untyped-def]
) -> None:
    """In-process replay and backfill store with ``accept_now`` from their own thread; a worker
    in another process must hear of it at once, not at its next poll."""
    done_at: list[float] = []

    def record(event, ctx) -> None:  # type: ignore[no-untyped-def]
        done_at.append(time.monotonic())

    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", record)])
    settings = make_settings(database_url, tmp_path / "d", worker_poll_seconds=30)
    command = services_factory(settings, registry)
    worker = services_factory(settings, registry)
    worker.worker.start_in_thread()
    try:
        time.sleep(0.5)  # the worker has polled once and is now waiting
        stored_at = time.monotonic()
        receipt = command.inbox.accept_now(transcription("-from-a-command"))
        wait_until(lambda: done_at, timeout=10)
    finally:
        worker.worker.stop()
    assert receipt.jobs == 1
    assert done_at[0] - stored_at < 5


def test_retry_requeues_dead_jobs_and_adds_newly_installed_handlers(
    database_url,
    tmp_path,
    services_factory,  # type: ignore[no-untyped-def]
) -> None:
    def broken(event, ctx) -> None:  # type: ignore[no-untyped-def]
        raise PermanentFailure("bug")

    def fixed(event, ctx) -> None:  # type: ignore[no-untyped-def]
        pass

    settings = make_settings(database_url, tmp_path / "d")
    services = services_factory(
        settings, Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", broken)])
    )
    (delivery_id,) = store(services)
    drain(services)
    assert job_rows(services)[0].status == "dead"
    assert job_store.requeue_dead(services.engine) == 1
    assert job_rows(services)[0].status == "pending" and job_rows(services)[0].attempts == 0
    drain(services)
    later = Registry.of(
        [
            HandlerSpec("elevenlabs", "post_call_transcription", broken),
            HandlerSpec("elevenlabs", "post_call_transcription", fixed),
        ]
    )
    assert job_store.requeue_delivery(services.engine, later, delivery_id) == 2
    assert [row.handler.rsplit(":", 1)[1] for row in job_rows(services)] == [
        "test_retry_requeues_dead_jobs_and_adds_newly_installed_handlers.<locals>.broken",
        "test_retry_requeues_dead_jobs_and_adds_newly_installed_handlers.<locals>.fixed",
    ]


def test_job_for_uninstalled_handler_fails_with_a_clear_message(
    database_url,
    tmp_path,
    services_factory,  # type: ignore[no-untyped-def]
) -> None:
    def gone(event, ctx) -> None:  # type: ignore[no-untyped-def]
        pass

    settings = make_settings(database_url, tmp_path / "d", job_max_attempts=1)
    installed = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", gone)])
    services = services_factory(settings, installed)
    store(services)
    services.worker.registry = Registry()  # the plugin was removed before the job ran
    drain(services)
    (job,) = job_rows(services)
    assert job.status == "dead" and "is not installed" in job.last_error


def test_sync_and_async_handlers_of_one_event_do_not_deadlock(
    database_url,
    tmp_path,
    services_factory,  # type: ignore[no-untyped-def]
) -> None:
    """A sync handler's commit must not need the event loop an async job may be blocking."""
    finished: list[str] = []

    def sync_writer(event, ctx) -> None:  # type: ignore[no-untyped-def]
        ctx.session.execute(side_effects.insert().values(note=f"sync {event.delivery_id}"))
        time.sleep(0.05)  # hold the write lock while the async job wants it
        finished.append("sync")

    async def async_writer(event, ctx) -> None:  # type: ignore[no-untyped-def]
        ctx.session.execute(side_effects.insert().values(note=f"async {event.delivery_id}"))
        finished.append("async")

    settings = make_settings(database_url, tmp_path / "d", worker_concurrency=2)
    services = services_factory(
        settings,
        Registry.of(
            [
                HandlerSpec("elevenlabs", "post_call_transcription", sync_writer),
                HandlerSpec("elevenlabs", "post_call_transcription", async_writer),
            ]
        ),
    )
    side_effects.create(services.engine)
    services.worker.start_in_thread()
    try:
        store(services, n=3)
        started = time.monotonic()
        wait_until(
            lambda: (
                all(row.status == "done" for row in job_rows(services))
                and len(job_rows(services)) == 6
            ),
            timeout=20,
        )
    finally:
        services.worker.stop()
    assert time.monotonic() - started < 10  # not a busy-timeout (30 s) stall
    assert sorted(finished) == ["async"] * 3 + ["sync"] * 3
