"""A database that goes away: 503 in bounded time, never a 200 or a hang, and a full recovery.

The store is a real PostgreSQL server that is shut down under a stream of deliveries and started
again (same port, same data), and a real lock that leaves the inbox waiting. What senders and
operators rely on:
- while the store cannot commit, every delivery is answered ``503 store_unavailable`` within
  ``VOICEHOOKS_STORE_TIMEOUT_SECONDS`` (so the sender retries), and ``/readyz`` says 503;
- when it is back, ingest and the in-process workers resume without a restart, everything
  acknowledged before is stored, and every job ends done.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from receiver.events import Event, HandlerContext
from receiver.registry import HandlerSpec, Registry
from receiver.service import Services
from receiver.sources.elevenlabs import sign
from receiver.store.models import Delivery, Job
from tests.conftest import SECRET, LiveServer, event_body, make_settings, wait_until
from tests.pgserver import PostgresServer

STORE_TIMEOUT = 2.0
# What a request may take beyond the store timeout: the HTTP round trip and scheduling on a
# machine shared with other test runs.
SLACK = 2.0


HOLD = threading.Event()  # a "hold-..." conversation's handler runs until this is set


def slow_probe(event: Event, ctx: HandlerContext) -> None:
    """Slow enough that jobs are running when the database goes away; a held one for sure."""
    if (event.subject_id or "").startswith("hold"):
        HOLD.wait(60)
    time.sleep(0.05)


REGISTRY = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", slow_probe)])


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A Postgres of this test's own: it is stopped and started, which others must not see."""
    with PostgresServer() as server:
        yield server


@dataclass
class Answer:
    sent: float
    answered: float
    status: int | None  # None: no HTTP answer at all
    error: str | None
    delivery_id: int | None
    sha256: str


def post(url: str, body: bytes) -> httpx.Response:
    headers = {"ElevenLabs-Signature": sign(SECRET, body), "Content-Type": "application/json"}
    return httpx.post(f"{url}/webhooks/elevenlabs", content=body, headers=headers, timeout=30)


class Stream:
    """Two clients posting distinct deliveries back to back, recording every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(2)]

    def __enter__(self) -> Stream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def acknowledged(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.status == 200]

    def _client(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            body = event_body(conversation_id=f"outage-{n}-{i}")
            sent = time.monotonic()
            try:
                response = post(self.url, body)
                status, error = response.status_code, response.json().get("error")
                delivery_id = response.json().get("delivery_id")
            except httpx.HTTPError as exc:
                status, error, delivery_id = None, type(exc).__name__, None
            answer = Answer(
                sent, time.monotonic(), status, error, delivery_id, hashlib.sha256(body).hexdigest()
            )
            with self._lock:
                self.answers.append(answer)
            time.sleep(0.01)


def job_states(services: Services) -> dict[int, list[str]]:
    jobs = Job.__table__.c  # type: ignore[attr-defined]
    with services.engine.connect() as conn:
        rows = conn.execute(select(jobs.delivery_id, jobs.status)).all()
    states: dict[int, list[str]] = {}
    for delivery_id, status in rows:
        states.setdefault(delivery_id, []).append(status)
    return states


@pytest.mark.slow
def test_postgres_outage_is_503_then_ingest_and_workers_resume_without_restart(
    own_postgres: PostgresServer,
    tmp_path: Path,
    services_factory: Callable[..., Services],
    live_server: Callable[..., LiveServer],
) -> None:
    settings = make_settings(
        own_postgres.url,
        tmp_path / "data",
        store_timeout_seconds=STORE_TIMEOUT,
        job_lease_seconds=3,
    )
    services = services_factory(settings, REGISTRY)
    claims: list[float] = []  # when the workers tried to claim jobs
    claim = services.worker._claim_batch  # what the worker's loops call (on a worker thread)

    def counted_claim(limit: int) -> object:
        claims.append(time.monotonic())
        return claim(limit)

    services.worker._claim_batch = counted_claim  # type: ignore[method-assign,assignment]
    server = live_server(services)

    HOLD.clear()
    held = post(server.url, event_body(conversation_id="hold-1")).json()["delivery_id"]
    with Stream(server.url) as stream:
        wait_until(lambda: len(stream.acknowledged()) >= 30, timeout=60)
        wait_until(lambda: job_states(services).get(held) == ["running"])
        own_postgres.pause()
        down = time.monotonic()
        # A job whose handler finishes while the database is away cannot record its outcome at
        # all (the bug this test was written for: that killed the worker's loops for good).
        HOLD.set()
        time.sleep(STORE_TIMEOUT + 2)  # long enough for requests to time out and workers to fail
        started = time.monotonic()
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        readyz_seconds = time.monotonic() - started
        assert ready.status_code == 503, ready.text
        assert readyz_seconds < STORE_TIMEOUT + SLACK
        up = time.monotonic()
        own_postgres.resume()
        # Ingest recovers without a restart.
        wait_until(lambda: any(a.sent > up and a.status == 200 for a in stream.answers), 30)
        acked_before_end = len(stream.acknowledged())
        wait_until(lambda: len(stream.acknowledged()) >= acked_before_end + 20, timeout=30)

    # The workers backed off rather than spinning: at their 50 ms poll interval, four loops
    # would have tried about 80 times a second.
    tries = sum(1 for t in claims if down + 0.5 < t < up)
    assert tries < 40, f"{tries} claims in {up - down - 0.5:.1f} s of outage"

    during = [a for a in stream.answers if a.sent > down and a.answered < up]
    assert during, "no request was made while the database was down"
    assert all(a.status == 503 and a.error == "store_unavailable" for a in during), {
        (a.status, a.error) for a in during
    }
    slowest = max(a.answered - a.sent for a in stream.answers)
    assert slowest < STORE_TIMEOUT + SLACK, f"a request took {slowest:.1f} s"
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200

    # A delivery made after the outage is processed promptly: the workers are alive.
    fresh = post(server.url, event_body(conversation_id="after-the-outage"))
    assert fresh.status_code == 200
    fresh_id = fresh.json()["delivery_id"]
    wait_until(lambda: job_states(services).get(fresh_id) == ["done"], timeout=15)

    # Everything acknowledged is stored byte for byte, and every job ends done (jobs that were
    # running when the database went away are claimed again when their lease expires).
    acknowledged = {a.delivery_id: a.sha256 for a in stream.acknowledged()}
    acknowledged[held] = hashlib.sha256(event_body(conversation_id="hold-1")).hexdigest()
    deliveries = Delivery.__table__.c  # type: ignore[attr-defined]
    with services.engine.connect() as conn:
        stored = dict(conn.execute(select(deliveries.id, deliveries.sha256)).all())
    assert {i: stored.get(i) for i in acknowledged} == acknowledged
    wait_until(
        lambda: all(job_states(services).get(i) == ["done"] for i in acknowledged), timeout=30
    )


@contextlib.contextmanager
def store_locked(database_url: str) -> Iterator[None]:
    """Another session holds the lock every inbox write needs (a stuck store)."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.rollback()
            conn.close()
        return
    with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as pg:
        pg.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
        yield
        pg.rollback()


def test_a_stuck_store_is_answered_503_in_time_not_a_hang(
    database_url: str,
    tmp_path: Path,
    services_factory: Callable[..., Services],
    live_server: Callable[..., LiveServer],
) -> None:
    settings = make_settings(database_url, tmp_path / "data", store_timeout_seconds=1)
    server = live_server(services_factory(settings, REGISTRY), run_worker=False)
    body = event_body(conversation_id="stuck")
    with store_locked(database_url):
        started = time.monotonic()
        response = post(server.url, body)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["error"] == "store_unavailable"
    assert elapsed < 1 + SLACK, f"answered after {elapsed:.1f} s"
    # Once the lock is gone, the sender's retry is stored (or found stored) and acknowledged.
    retry = post(server.url, body)
    assert retry.status_code == 200, retry.text


def test_an_unreachable_postgres_is_503_in_time_not_a_hang(
    tmp_path: Path, live_server: Callable[..., LiveServer]
) -> None:
    """A host that accepts TCP connections and then never answers (a hung server, a black-holed
    network): connecting must give up in time, and so must ingest and /readyz."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes handshakes; nobody ever answers
        port = silent.getsockname()[1]
        settings = make_settings(
            f"postgresql+psycopg://voicehooks@127.0.0.1:{port}/voicehooks",
            tmp_path / "data",
            store_timeout_seconds=STORE_TIMEOUT,
            migrate_on_start=False,
        )
        services = Services.create(settings, REGISTRY)
        try:
            server = live_server(services)
            for path in ("/webhooks/elevenlabs", "/readyz"):
                started = time.monotonic()
                if path == "/readyz":
                    response = httpx.get(f"{server.url}{path}", timeout=60)
                else:
                    response = post(server.url, event_body(conversation_id="nobody-home"))
                elapsed = time.monotonic() - started
                assert response.status_code == 503, (path, response.text)
                assert elapsed < STORE_TIMEOUT + SLACK, f"{path} answered after {elapsed:.1f} s"
            # What the inbox writers and the workers' claims wait for is bounded too (without
            # connect_timeout libpq would wait for the server's answer forever, and a writer
            # thread stuck there would fail every later delivery even after the server is back).
            outcome: list[BaseException] = []

            def connect() -> None:
                try:
                    services.engine.connect().close()
                except BaseException as exc:
                    outcome.append(exc)

            attempt = threading.Thread(target=connect, daemon=True)  # a hang must not hang us
            attempt.start()
            attempt.join(STORE_TIMEOUT + SLACK)
            assert not attempt.is_alive(), "connecting to a silent server did not give up"
            assert isinstance(outcome[0], OperationalError)
        finally:
            services.close()
