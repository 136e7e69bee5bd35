"""The inbox's writes in a child process (receiver/inbox_process.py), as ``serve`` runs them:
real uvicorn on loopback, real child processes, real SQLite and Postgres."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import select

from receiver.app import create_app
from receiver.registry import HandlerSpec, Registry
from receiver.sources.elevenlabs import sign
from receiver.store.models import Delivery, Job
from tests.conftest import SECRET, event_body, make_settings, serve_in_thread, wait_until

handled: list[str] = []
handled_lock = threading.Lock()


async def _record(event, ctx) -> None:  # type: ignore[no-untyped-def]
    with handled_lock:
        handled.append(event.subject_id)


REGISTRY = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", _record)])


def inbox_children() -> list[int]:
    """The pids of this process's inbox processes."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"receiver.inbox_process" in cmdline:
            pids.append(int(entry.name))
    return pids


def stored(services, delivery_ids: list[int]) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """Delivery id -> number of jobs, for the ids that are stored."""
    table, jobs = Delivery.__table__, Job.__table__  # type: ignore[attr-defined]  # SQLModel adds it
    with services.engine.connect() as conn:
        rows = conn.execute(select(table.c.id).where(table.c.id.in_(delivery_ids))).scalars()
        found = {row: 0 for row in rows}
        for job in conn.execute(select(jobs.c.delivery_id).where(jobs.c.delivery_id.in_(found))):
            found[job.delivery_id] += 1
    return found


def test_deliveries_are_committed_by_the_child_and_their_jobs_run(
    settings,
    services_factory,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    services = services_factory(settings, REGISTRY)
    server = live_server(services, run_worker=True, inbox_process=True)
    (child,) = inbox_children()
    # Its command line is a file descriptor: settings (secrets included) come over the socket.
    arguments = Path(f"/proc/{child}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    assert arguments[-2] == b"receiver.inbox_process" and arguments[-1].isdigit()

    bodies = [event_body(conversation_id=f"conv-{n}") for n in range(40)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(server.post_signed, bodies + bodies[:5]))
    assert [a.status_code for a in answers] == [200] * 45
    first = [a.json() for a in answers[:40]]
    again = [a.json() for a in answers[40:]]
    assert not any(a["duplicate"] for a in first)
    assert [a["delivery_id"] for a in again] == [a["delivery_id"] for a in first[:5]]
    assert all(a["duplicate"] for a in again)
    # Every 200 is a stored delivery with its job, and the in-process worker was told of them.
    ids = [a["delivery_id"] for a in first]
    assert stored(services, ids) == {delivery_id: 1 for delivery_id in ids}
    assert not services.inbox._threads  # nothing was written by the serve process's threads
    wait_until(lambda: {f"conv-{n}" for n in range(40)} <= set(handled), timeout=20)


def test_a_killed_child_means_503_never_a_lost_200_then_a_new_child_stores(
    settings,
    services_factory,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    services = services_factory(settings, REGISTRY)
    server = live_server(services, run_worker=False, inbox_process=True)
    (child,) = inbox_children()
    os.kill(child, signal.SIGKILL)
    answers: list[httpx.Response] = []

    def next_answer() -> bool:
        answers.append(server.post_signed(event_body(conversation_id=f"after-{len(answers)}")))
        return answers[-1].status_code == 200

    wait_until(next_answer, timeout=30, interval=0.1)
    refused = [a for a in answers if a.status_code != 200]
    assert all(a.status_code == 503 for a in refused)
    assert all(a.json()["error"] == "store_unavailable" for a in refused)
    (new_child,) = inbox_children()
    assert new_child != child
    accepted = [a.json()["delivery_id"] for a in answers if a.status_code == 200]
    assert stored(services, accepted) == {accepted[0]: 1}


def test_a_stalled_child_means_503_within_the_store_timeout_and_the_retry_is_a_duplicate(
    database_url,
    tmp_path,
    services_factory,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    """A child that stops answering (a stuck disk, a lock held elsewhere) is not a dead one: its
    requests are answered 503 once the store timeout passes, and what it was sent is stored when
    it goes on, so the sender's retry finds the delivery instead of losing it."""
    settings = make_settings(database_url, tmp_path / "data", store_timeout_seconds=1)
    services = services_factory(settings, REGISTRY)
    server = live_server(services, run_worker=False, inbox_process=True)
    (child,) = inbox_children()
    body = event_body(conversation_id="stalled")
    os.kill(child, signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = server.post_signed(body)
        waited = time.monotonic() - started
    finally:
        os.kill(child, signal.SIGCONT)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "store_unavailable"
    assert 1 <= waited < 10
    retry = server.post_signed(body)
    assert retry.status_code == 200, retry.text
    assert retry.json()["duplicate"] is True
    assert inbox_children() == [child]  # stalled, not dead: the same child goes on
    assert stored(services, [retry.json()["delivery_id"]]) == {retry.json()["delivery_id"]: 1}


def test_stopping_the_server_ends_the_child(settings, services_factory) -> None:  # type: ignore[no-untyped-def]
    services = services_factory(settings, REGISTRY)
    app = create_app(services=services, run_worker=False, inbox_process=True)
    with serve_in_thread(app) as url:
        body = event_body()
        headers = {"ElevenLabs-Signature": sign(SECRET, body), "Content-Type": "application/json"}
        answer = httpx.post(f"{url}/webhooks/elevenlabs", content=body, headers=headers)
        assert answer.status_code == 200
        assert len(inbox_children()) == 1
    assert inbox_children() == []
    assert stored(services, [answer.json()["delivery_id"]]) == {answer.json()["delivery_id"]: 1}
