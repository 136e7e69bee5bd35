"""Claiming and completing several jobs per transaction (issue 16), on SQLite and Postgres."""

from __future__ import annotations

import asyncio

from sqlalchemy import select, update

from receiver import jobs as job_store
from receiver.registry import HandlerSpec, Registry
from receiver.store.models import Job
from tests.conftest import make_settings, wait_until
from tests.test_worker import job_rows, side_effects, store

jobs = Job.__table__


def statuses(services) -> list[str]:  # type: ignore[no-untyped-def]
    return [row.status for row in job_rows(services)]


def test_claim_many_takes_the_oldest_due_jobs_with_their_deliveries(
    database_url,  # type: ignore[no-untyped-def]
    tmp_path,
    services_factory,
) -> None:
    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", print)])
    services = services_factory(make_settings(database_url, tmp_path / "d"), registry)
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
    database_url,  # type: ignore[no-untyped-def]
    tmp_path,
    services_factory,
) -> None:
    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", print)])
    services = services_factory(make_settings(database_url, tmp_path / "d"), registry)
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
    services.worker.start_in_thread()
    try:
        wait_until(lambda: statuses(services) == ["done"] * 80, timeout=60)
    finally:
        services.worker.stop()
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
