"""`voicehooks serve` runs its workers in a supervised, lower-priority child process (issue 16).

Real processes throughout: a `voicehooks serve` subprocess on loopback, its `voicehooks worker`
child found through /proc, real signed deliveries, the SQLite store read directly.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest

from receiver.sources.elevenlabs import sign
from tests.conftest import SECRET, event_body, wait_until
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def command(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def workers(server: ServerProcess) -> list[int]:
    """Its `voicehooks worker` children (serve's other child is its inbox process)."""
    assert server.proc is not None
    pids = children(server.proc.pid)
    return [pid for pid in pids if command(pid)[-3:-1] == [b"receiver", b"worker"]]


def inbox_child(server: ServerProcess) -> int:
    assert server.proc is not None
    (pid,) = [p for p in children(server.proc.pid) if b"receiver.inbox_process" in command(p)]
    return pid


def worker_child(server: ServerProcess) -> int:
    pids = wait_until(lambda: workers(server), timeout=20)
    assert isinstance(pids, list) and len(pids) == 1, pids
    return pids[0]


def deliver(server: ServerProcess, conversation_id: str) -> int:
    body = event_body(conversation_id=conversation_id)
    response = httpx.post(
        f"{server.url}/webhooks/elevenlabs",
        content=body,
        headers={"ElevenLabs-Signature": sign(SECRET, body)},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return int(response.json()["delivery_id"])


def job_states(db: Path, delivery_id: int) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status FROM jobs WHERE delivery_id = ?", (delivery_id,))
        return [status for (status,) in rows]


def processed(db: Path, delivery_id: int) -> bool:
    states = job_states(db, delivery_id)
    return bool(states) and all(s == "done" for s in states)


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, Path]:
    db = tmp_path / "store.db"
    return f"sqlite:///{db}", db


@pytest.mark.slow
def test_serve_processes_in_a_niced_child_and_stops_it(
    store: tuple[str, Path], tmp_path: Path
) -> None:
    url, db = store
    server = ServerProcess(url, tmp_path / "data").start()
    try:
        child = worker_child(server)
        assert server.proc is not None
        # The kernel favours the receiver: the worker runs 10 nice levels below it.
        nice = os.getpriority(os.PRIO_PROCESS, child)
        assert nice == min(19, os.getpriority(os.PRIO_PROCESS, server.proc.pid) + 10)
        # The serve process runs no worker thread of its own: the child did the work.
        threads = {
            (task / "comm").read_text().strip()
            for task in Path(f"/proc/{server.proc.pid}/task").iterdir()
        }
        assert "voicehooks-work" not in threads  # comm is cut at 15 characters
        delivery = deliver(server, "child-1")
        wait_until(lambda: processed(db, delivery), timeout=20)
    finally:
        server.stop()
    # (uvicorn re-raises SIGTERM after its graceful shutdown, so the exit code says -15)
    wait_until(lambda: not alive(child), timeout=10)


@pytest.mark.slow
def test_a_worker_child_that_dies_is_restarted(store: tuple[str, Path], tmp_path: Path) -> None:
    url, db = store
    server = ServerProcess(url, tmp_path / "data").start()
    try:
        first = worker_child(server)
        os.kill(first, signal.SIGKILL)
        second = wait_until(lambda: [p for p in workers(server) if p != first], timeout=20)
        assert isinstance(second, list) and len(second) == 1
        delivery = deliver(server, "after-restart")
        wait_until(lambda: processed(db, delivery), timeout=30)
    finally:
        server.stop()


@pytest.mark.slow
def test_a_killed_serve_takes_its_worker_child_with_it(
    store: tuple[str, Path], tmp_path: Path
) -> None:
    url, db = store
    server = ServerProcess(url, tmp_path / "data").start()
    child, inbox = worker_child(server), inbox_child(server)
    delivery = deliver(server, "before-kill")
    wait_until(lambda: processed(db, delivery), timeout=20)  # the child is up and working
    server.kill()  # SIGKILL: serve cannot stop its children itself
    wait_until(lambda: not alive(child) and not alive(inbox), timeout=15)


@pytest.mark.slow
def test_worker_process_false_keeps_the_workers_in_serve(
    store: tuple[str, Path], tmp_path: Path
) -> None:
    url, db = store
    server = ServerProcess(url, tmp_path / "data", VOICEHOOKS_WORKER_PROCESS="false").start()
    try:
        assert server.proc is not None
        assert workers(server) == [] and inbox_child(server)
        delivery = deliver(server, "in-process")
        wait_until(lambda: processed(db, delivery), timeout=20)
    finally:
        server.stop()
