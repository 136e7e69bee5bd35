"""The inbox's group commit: what a batch stores and answers, on SQLite and Postgres.

The inbox writes batches with driver-level SQL for speed (on SQLite one ``INSERT`` whose jobs a
TEMP trigger adds; on Postgres one statement with a data-modifying CTE); these tests pin down
that it stores exactly what an ORM insert would, answers duplicates (in the same batch, or
stored before) with the original id and no new jobs, follows the handler registry, and gets back
on its feet after a failed batch.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import select

from receiver import jobs as jobs_module
from receiver.inbox import IncomingDelivery, Receipt
from receiver.registry import HandlerSpec, Registry
from receiver.sources.base import Authenticity, Identity
from receiver.store.models import Delivery, Job
from tests.conftest import event_body, make_settings


async def _first(event, ctx) -> None:  # type: ignore[no-untyped-def]
    pass


async def _second(event, ctx) -> None:  # type: ignore[no-untyped-def]
    pass


REGISTRY = Registry.of(
    [
        HandlerSpec("elevenlabs", "post_call_transcription", _first),
        HandlerSpec("elevenlabs", "post_call_transcription", _second),
    ]
)
REGISTRY_NAMES = [spec.name for spec in REGISTRY]
deliveries, jobs = Delivery.__table__, Job.__table__  # type: ignore[attr-defined]


def incoming(key: str, *, parse_error: str | None = None) -> IncomingDelivery:
    body = event_body(conversation_id=key)
    return IncomingDelivery(
        source="elevenlabs",
        identity=Identity("post_call_transcription", f"k-{key}", f"conv-{key}", parse_error),
        auth=Authenticity("hmac", 1),
        sha256="ab" * 32,
        size=len(body),
        body=body,
        content_type="application/json",
        received_at=datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC),
    )


def test_batch_stores_rows_as_the_orm_reads_them_and_answers_duplicates(
    database_url, tmp_path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    services = services_factory(make_settings(database_url, tmp_path / "d"), REGISTRY)
    inbox = services.inbox
    earlier = inbox.accept_now(incoming("old"))
    spooled = incoming("große Ünïcode ✓")  # a large body lives in the blob store, not the row
    spooled.body, spooled.blob_path = None, "ab/cd/abcd.body"
    batch = [
        incoming("a"),
        incoming("old"),  # stored before this batch
        incoming("b", parse_error="body is not valid JSON: x"),
        incoming("a"),  # second copy within the batch
        spooled,
    ]
    receipts = inbox._write(batch, reuse=True)
    a, b, c = receipts[0].delivery_id, receipts[2].delivery_id, receipts[4].delivery_id
    assert receipts == [
        Receipt(a, False, 2),
        Receipt(earlier.delivery_id, True, 0),
        Receipt(b, False, 0),  # not understood: stored, but no jobs
        Receipt(a, True, 0),
        Receipt(c, False, 2),
    ]
    with services.engine.connect() as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.id == a)).one()
        stored_jobs = conn.execute(select(jobs).where(jobs.c.delivery_id == a)).all()
        count = len(conn.execute(select(deliveries.c.id)).all())
        spooled_row = conn.execute(select(deliveries).where(deliveries.c.id == c)).one()
        parse_error = conn.execute(
            select(deliveries.c.parse_error).where(deliveries.c.id == b)
        ).scalar_one()
    expected = batch[0]
    assert count == 4
    assert parse_error == "body is not valid JSON: x"
    assert (spooled_row.body, spooled_row.blob_path) == (None, "ab/cd/abcd.body")
    assert (spooled_row.dedupe_key, spooled_row.subject_id) == (
        "k-große Ünïcode ✓",
        "conv-große Ünïcode ✓",
    )
    assert (row.source, row.event_type, row.dedupe_key, row.subject_id) == (
        "elevenlabs",
        "post_call_transcription",
        "k-a",
        "conv-a",
    )
    assert (row.sha256, row.size, row.body, row.blob_path) == (
        expected.sha256,
        expected.size,
        expected.body,
        None,
    )
    assert (row.content_type, row.auth_method, row.auth_key_index, row.parse_error) == (
        "application/json",
        "hmac",
        1,
        None,
    )
    assert row.received_at == expected.received_at  # aware UTC, microseconds kept
    assert sorted(j.handler for j in stored_jobs) == sorted(s.name for s in REGISTRY)
    for job in stored_jobs:
        assert (job.status, job.attempts, job.lease_until, job.finished_at) == (
            "pending",
            0,
            None,
            None,
        )
        assert job.run_at == job.created_at and job.run_at.tzinfo is UTC


def test_batches_larger_than_one_statement_are_split(
    database_url, tmp_path, services_factory, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(jobs_module, "ROWS_PER_STATEMENT", 3)
    services = services_factory(make_settings(database_url, tmp_path / "d"), REGISTRY)
    items = [incoming(str(i)) for i in range(10)]
    receipts = services.inbox._write(items, reuse=True)
    assert [r.duplicate for r in receipts] == [False] * 10
    assert [r.jobs for r in receipts] == [2] * 10
    with services.engine.connect() as conn:
        stored = dict(conn.execute(select(deliveries.c.dedupe_key, deliveries.c.id)).all())
        job_count = len(conn.execute(select(jobs.c.id)).all())
    assert stored == {f"k-{i}": r.delivery_id for i, r in enumerate(receipts)}
    assert job_count == 20


def test_jobs_follow_handlers_registered_after_start_and_a_batch_of_old_keys_adds_none(
    database_url, tmp_path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", _first)])
    services = services_factory(make_settings(database_url, tmp_path / "d"), registry)
    inbox = services.inbox
    before = inbox._write([incoming("before")], reuse=True)[0]
    registry.add(HandlerSpec("elevenlabs", "post_call_transcription", _second))
    after = inbox._write([incoming("after")], reuse=True)[0]
    again = inbox._write([incoming("before"), incoming("after")], reuse=True)
    assert (before.jobs, after.jobs) == (1, 2)
    assert again == [
        Receipt(before.delivery_id, True, 0),
        Receipt(after.delivery_id, True, 0),
    ]
    with services.engine.connect() as conn:
        rows = conn.execute(select(jobs.c.delivery_id, jobs.c.handler).order_by(jobs.c.id)).all()
    assert [tuple(r) for r in rows] == [
        (before.delivery_id, REGISTRY_NAMES[0]),
        (after.delivery_id, REGISTRY_NAMES[0]),
        (after.delivery_id, REGISTRY_NAMES[1]),
    ]


def test_rows_inserted_by_other_code_get_no_jobs_from_the_inbox(
    database_url, tmp_path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    # On SQLite the inbox's jobs come from a TEMP trigger on its own connections; a pooled
    # connection that carried it would create jobs for any delivery anyone inserts.
    services = services_factory(make_settings(database_url, tmp_path / "d"), REGISTRY)
    services.inbox.accept_now(incoming("through-the-inbox"))
    services.inbox._write([incoming("kept-connection")], reuse=True)
    # Check out every connection the pool holds at once and insert a delivery through each.
    # (create_db_engine allows as many overflow connections as its pool size.)
    conns = [services.engine.connect() for _ in range(2 * services.engine.pool.size())]  # type: ignore[attr-defined]
    try:
        for n, conn in enumerate(conns):
            conn.execute(deliveries.insert().values(incoming(f"by-hand-{n}").row()))
            conn.commit()
    finally:
        for conn in conns:
            conn.close()
    with services.engine.connect() as conn:
        by_hand = (
            conn.execute(select(deliveries.c.id).where(deliveries.c.dedupe_key.like("k-by-hand-%")))
            .scalars()
            .all()
        )
        stray = conn.execute(select(jobs.c.id).where(jobs.c.delivery_id.in_(by_hand))).all()
    assert len(by_hand) == len(conns)
    assert stray == []


def test_concurrent_requests_share_commits_and_each_key_is_stored_once(
    database_url, tmp_path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    services = services_factory(make_settings(database_url, tmp_path / "d"), REGISTRY)
    services.inbox.start()
    try:

        async def send_all() -> list[Receipt]:
            # 200 requests for 50 keys, all in flight at once.
            return await asyncio.gather(
                *(services.inbox.accept(incoming(str(i % 50))) for i in range(200))
            )

        receipts = asyncio.run(send_all())
    finally:
        services.inbox.stop()
    by_key: dict[int, set[int]] = {}
    for i, receipt in enumerate(receipts):
        by_key.setdefault(i % 50, set()).add(receipt.delivery_id)
    assert all(len(ids) == 1 for ids in by_key.values())
    assert sum(not r.duplicate for r in receipts) == 50
    with services.engine.connect() as conn:
        assert len(conn.execute(select(deliveries.c.id)).all()) == 50
        assert len(conn.execute(select(jobs.c.id)).all()) == 100


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_connections_lost_while_idle_are_replaced_without_failing_a_delivery(
    database_url, tmp_path, services_factory, pg_server
) -> None:  # type: ignore[no-untyped-def]
    services = services_factory(make_settings(database_url, tmp_path / "d"), REGISTRY)
    services.inbox.start()
    try:

        async def accept(item: IncomingDelivery) -> Receipt:
            return await services.inbox.accept(item)

        first = [asyncio.run(accept(incoming(f"before-{i}"))) for i in range(4)]
        # The database drops every connection (a restart, a failover) while the inbox's kept
        # connections are idle.
        dsn = f"host=127.0.0.1 port={pg_server.port} user=voicehooks dbname=voicehooks"
        with psycopg.connect(dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database_url.rsplit("/", 1)[1],),
            ).fetchall()
        assert killed
        after = [asyncio.run(accept(incoming(f"after-{i}"))) for i in range(4)]
    finally:
        services.inbox.stop()
    assert all(not r.duplicate for r in first + after)
    assert min(r.delivery_id for r in after) > max(r.delivery_id for r in first)
    with services.engine.connect() as conn:
        keys = {k for (k,) in conn.execute(select(deliveries.c.dedupe_key)).all()}
    assert keys == {f"k-{when}-{i}" for when in ("before", "after") for i in range(4)}
