"""Claiming and completing several jobs per transaction (issue 16), on SQLite and Postgres."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import select, update

from receiver import jobs as job_store
from receiver.registry import HandlerSpec, Registry
from receiver.store.models import Job
from receiver.store.types import utcnow
from tests.conftest import make_settings, wait_until
from tests.test_worker import job_rows, side_effects, store, transcription

jobs = Job.__table__


@pytest.fixture
def services(database_url, tmp_path, services_factory):  # type: ignore[no-untyped-def]
    """A store on each database with one job per transcription, for a handler never run."""
    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", print)])
    return services_factory(make_settings(database_url, tmp_path / "d"), registry)


def statuses(services) -> list[str]:  # type: ignore[no-untyped-def]
    return [row.status for row in job_rows(services)]


def run_until_done(services, count: int, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Run the worker in its thread until ``count`` jobs are done, then stop it."""
    services.worker.start_in_thread()
    try:
        wait_until(lambda: statuses(services) == ["done"] * count, timeout=timeout)
    finally:
        services.worker.stop()


def test_claim_many_takes_the_oldest_due_jobs_with_their_deliveries(
    services,  # type: ignore[no-untyped-def]
) -> None:
    delivery_ids = store(services, 5)

    first = job_store.claim_many(services.engine, 60, 3)
    assert [job.delivery_id for job in first] == delivery_ids[:3]  # oldest first
    assert all(job.attempts == 1 for job in first)
    # Each job comes with its delivery row, read in the claim's transaction.
    assert [job.delivery.id for job in first] == delivery_ids[:3]
    assert b'"conversation_id": "c0"' in first[0].delivery.body
    assert statuses(services) == ["running"] * 3 + ["pending"] * 2

    rest = job_store.claim_many(services.engine, 60, 10)
    assert [job.delivery_id for job in rest] == delivery_ids[3:]
    assert job_store.claim_many(services.engine, 60, 10) == []


def test_complete_many_marks_done_only_the_jobs_whose_lease_is_still_held(
    services,  # type: ignore[no-untyped-def]
) -> None:
    store(services, 3)
    claimed = job_store.claim_many(services.engine, 60, 3)
    lost = claimed[1]
    with services.engine.begin() as conn:  # another worker took this one over
        conn.execute(update(jobs).where(jobs.c.id == lost.id).values(lease_token="other"))

    done = job_store.complete_many(services.engine, claimed)

    assert done == {claimed[0].id, claimed[2].id}
    assert statuses(services) == ["done", "running", "done"]
    rows = job_rows(services)
    assert rows[0].finished_at is not None and rows[0].lease_until is None
    assert rows[1].lease_token == "other" and rows[1].finished_at is None


def test_a_burst_of_async_jobs_all_finish_with_their_writes(
    database_url,  # type: ignore[no-untyped-def]
    tmp_path,
    services_factory,
) -> None:
    """No-op handlers are completed in groups; a handler that writes through ``ctx.write``
    still commits its write with its own job."""
    written: list[int] = []

    async def noop(event, ctx) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)

    async def writes(event, ctx) -> None:  # type: ignore[no-untyped-def]
        def mark(session) -> None:  # type: ignore[no-untyped-def]
            session.execute(side_effects.insert().values(id=ctx.job_id, note="handler wrote"))

        await ctx.write(mark)
        written.append(ctx.job_id)

    registry = Registry.of(
        [
            HandlerSpec("elevenlabs", "post_call_transcription", noop),
            HandlerSpec("elevenlabs", "post_call_transcription", writes),
        ]
    )
    settings = make_settings(database_url, tmp_path / "d", worker_concurrency=4)
    services = services_factory(settings, registry)
    side_effects.create(services.engine)
    store(services, 40)
    run_until_done(services, 80, timeout=60)
    with services.engine.connect() as conn:
        marked = conn.execute(select(side_effects.c.id))
        assert sorted(row.id for row in marked) == sorted(written)
    assert len(written) == 40


def test_a_noop_job_whose_lease_was_lost_is_not_marked_done(
    database_url,  # type: ignore[no-untyped-def]
    tmp_path,
    services_factory,
) -> None:
    engine_holder: list = []  # type: ignore[type-arg]

    async def taken_over_meanwhile(event, ctx) -> None:  # type: ignore[no-untyped-def]
        # While this handler runs, another worker takes the job over (its lease had expired).
        with engine_holder[0].begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == ctx.job_id).values(lease_token="other"))

    registry = Registry.of(
        [HandlerSpec("elevenlabs", "post_call_transcription", taken_over_meanwhile)]
    )
    services = services_factory(make_settings(database_url, tmp_path / "d"), registry)
    engine_holder.append(services.engine)
    store(services, 1)

    asyncio.run(services.worker.drain())

    (row,) = job_rows(services)
    assert row.status == "running" and row.lease_token == "other" and row.finished_at is None


def test_complete_many_spans_jobs_of_several_claims(
    services,  # type: ignore[no-untyped-def]
) -> None:
    """A group completion holds jobs of several claims (several lease tokens)."""
    store(services, 4)
    first = job_store.claim_many(services.engine, 60, 2)
    second = job_store.claim_many(services.engine, 60, 2)
    assert first[0].lease_token != second[0].lease_token

    done = job_store.complete_many(services.engine, [first[1], second[0], second[1]])

    assert done == {first[1].id, second[0].id, second[1].id}
    assert statuses(services) == ["running", "done", "done", "done"]


def test_claims_and_completions_on_a_kept_autocommit_connection(
    database_url,  # type: ignore[no-untyped-def]
    tmp_path,
    services_factory,
) -> None:
    """What the worker does on Postgres: each statement commits on its own, so another
    connection sees the claim and the completion at once."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the worker keeps connections on Postgres only")
    postgres_url = database_url
    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", print)])
    services = services_factory(make_settings(postgres_url, tmp_path / "d"), registry)
    delivery_ids = store(services, 3)
    with services.engine.connect() as kept:
        kept = kept.execution_options(isolation_level="AUTOCOMMIT")
        claimed = job_store.claim_many(kept, 60, 2)
        assert [job.delivery.id for job in claimed] == delivery_ids[:2]
        assert statuses(services) == ["running", "running", "pending"]
        assert job_store.complete_many(kept, claimed) == {job.id for job in claimed}
        assert statuses(services) == ["done", "done", "pending"]
        assert job_store.extend_leases(kept, claimed, 60) == set()  # done: no lease to keep


def test_jobs_waiting_in_the_queue_and_running_keep_their_leases(
    database_url,  # type: ignore[no-untyped-def]
    tmp_path,
    services_factory,
) -> None:
    """With one loop, the claim after the first takes a job ahead (the backlog is deep); it
    waits longer than the lease, and so does the running job: the lease keeper extends both,
    so none is taken over (claimed again) meanwhile, and each runs once."""
    engine_holder: list = []  # type: ignore[type-arg]
    seen: list[tuple[int, int]] = []  # (job id, attempt)
    expired: list[int] = []

    async def slow(event, ctx) -> None:  # type: ignore[no-untyped-def]
        seen.append((ctx.job_id, ctx.attempt))
        for _ in range(6):
            await asyncio.sleep(0.25)
            with engine_holder[0].connect() as conn:  # any held job whose lease ran out?
                expired.extend(
                    conn.execute(
                        select(jobs.c.id).where(
                            jobs.c.status == "running", jobs.c.lease_until < utcnow()
                        )
                    ).scalars()
                )

    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", slow)])
    settings = make_settings(
        database_url, tmp_path / "d", worker_concurrency=1, job_lease_seconds=0.9
    )
    services = services_factory(settings, registry)
    engine_holder.append(services.engine)
    store(services, 3)
    run_until_done(services, 3, timeout=30)
    assert expired == []
    assert sorted(seen) == [(job.id, 1) for job in job_rows(services)]


def test_a_queued_job_whose_lease_was_lost_is_not_started(
    database_url,  # type: ignore[no-untyped-def]
    tmp_path,
    services_factory,
) -> None:
    """A job claimed ahead that another worker took over while it waited is left to that
    worker: this one does not run it."""
    ran: list[int] = []
    engine_holder: list = []  # type: ignore[type-arg]

    async def record(event, ctx) -> None:  # type: ignore[no-untyped-def]
        ran.append(ctx.job_id)

    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", record)])
    services = services_factory(make_settings(database_url, tmp_path / "d"), registry)
    engine_holder.append(services.engine)
    store(services, 2)
    worker = services.worker
    claimed = job_store.claim_many(services.engine, 60, 2)
    worker._claimed.extend(claimed)  # as _next_job queues a batch
    worker._held.update((job.id, job) for job in claimed)
    taken = claimed[1]
    with services.engine.begin() as conn:  # taken over; the keeper then finds it lost
        conn.execute(update(jobs).where(jobs.c.id == taken.id).values(lease_token="other"))
    assert worker._extend_leases(claimed) == {claimed[0].id}
    worker._held.pop(taken.id)

    async def two_turns() -> list[int | None]:
        first = await worker._next_job()
        second = await worker._next_job()
        return [job.id if job else None for job in (first, second)]

    assert asyncio.run(two_turns()) == [claimed[0].id, None]
    rows = job_rows(services)
    assert rows[1].lease_token == "other" and rows[1].status == "running"


def test_the_worker_replaces_its_kept_connections_when_the_database_drops_them(
    database_url,  # type: ignore[no-untyped-def]
    tmp_path,
    services_factory,
    request,
) -> None:
    """The worker's kept claim and completion connections are not pre-pinged: when the
    database drops them (a restart, a failover), the next claim fails, the worker backs off
    and carries on with new ones."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the worker keeps connections on Postgres only")
    pg_server = request.getfixturevalue("pg_server")

    async def noop(event, ctx) -> None:  # type: ignore[no-untyped-def]
        """Marked done with others, on the kept completion connection."""

    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", noop)])
    services = services_factory(make_settings(database_url, tmp_path / "d"), registry)
    store(services, 3)
    services.worker.start_in_thread()
    try:
        wait_until(lambda: statuses(services) == ["done"] * 3, timeout=30)
        dsn = f"host=127.0.0.1 port={pg_server.port} user=voicehooks dbname=voicehooks"
        with psycopg.connect(dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database_url.rsplit("/", 1)[1],),
            ).fetchall()
        assert killed
        # New deliveries wake the worker: its next claim meets the dead connection.
        more = [services.inbox.accept_now(transcription(f"after-{i}")) for i in range(3)]
        wait_until(lambda: statuses(services) == ["done"] * 6, timeout=30)
    finally:
        services.worker.stop()
    assert not any(receipt.duplicate for receipt in more)
