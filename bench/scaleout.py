"""Scale-out on one Postgres: receivers and workers in separate processes, two of them killed.

Two ``voicehooks serve --no-worker`` and three ``voicehooks worker`` processes share one
PostgreSQL database. Client threads send a steady stream of signed ``post_call_transcription``
deliveries (each a new conversation with three turns) round-robin to the receivers; a request
that finds its receiver dead is sent again to the other one, as a sender retries. Mid-stream one
worker and then one receiver are killed with SIGKILL. When the stream ends, the surviving workers
drain the backlog (jobs of the killed worker are claimed again when their lease expires), and the
ledger is checked:

- every 2xx delivery is stored, byte for byte (sha256);
- every stored delivery's jobs end ``done``;
- the effects happen once per delivery: the ``bench.scaleout_plugin`` handler's row count per
  delivery is exactly 1, and the built-in handlers stored one conversation per delivery and three
  turns per conversation, none twice.

    .venv/bin/python -m bench.scaleout                 # 30 s at 150 deliveries/s
    .venv/bin/python -m bench.scaleout --seconds 60 --rate 200
    .venv/bin/python -m bench.scaleout --quick         # 5 s at 60/s

It starts its own durable PostgreSQL (tests/pgserver.py), prints a table and writes every number
to ``bench/out/scaleout.json``; exit status 1 if the ledger does not balance.
``tests/test_scaleout.py`` runs the same harness, small.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from bench.scaleout_plugin import CREATE_TABLE, TABLE
from receiver.sources.elevenlabs import sign

ROOT = Path(__file__).resolve().parent.parent
SECRET = "wsec_scaleout_bench_secret"
TURNS = 3


def body_for(n: int, run: str) -> bytes:
    turns = [
        {"role": "agent" if t % 2 == 0 else "user", "message": f"turn {t}", "time_in_call_secs": t}
        for t in range(TURNS)
    ]
    return json.dumps(
        {
            "type": "post_call_transcription",
            "event_timestamp": 1760000000 + n,
            "data": {
                "agent_id": "agent_scaleout",
                "conversation_id": f"scaleout-{run}-{n}",
                "status": "done",
                "transcript": turns,
                "metadata": {"start_time_unix_secs": 1760000000, "call_duration_secs": TURNS},
            },
        }
    ).encode()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    role: str
    popen: subprocess.Popen[bytes]
    url: str | None = None
    killed: bool = False

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self.killed = True


@dataclass
class Cluster:
    database_url: str
    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "VOICEHOOKS_DATABASE_URL": self.database_url,
            "VOICEHOOKS_DATA_DIR": str(self.workdir / "data"),
            "VOICEHOOKS_ELEVENLABS_SECRETS": SECRET,
            "VOICEHOOKS_PLUGINS": "bench.scaleout_plugin",
            "VOICEHOOKS_JOB_LEASE_SECONDS": "3",
            "VOICEHOOKS_WORKER_POLL_SECONDS": "0.2",
            "VOICEHOOKS_LOG_LEVEL": "warning",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }

    def _spawn(self, role: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{role}.log", "ab")  # noqa: SIM115  # the child keeps it
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "receiver", *args],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        finally:
            log.close()

    def start_receiver(self, name: str) -> Proc:
        port = free_port()
        popen = self._spawn(name, ["serve", "--no-worker", "--port", str(port)])
        proc = Proc(name, popen, f"http://127.0.0.1:{port}")
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log_tail(name)}")
            try:
                if httpx.get(f"{proc.url}/readyz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready: {self.log_tail(name)}")

    def start_worker(self, name: str) -> Proc:
        proc = Proc(name, self._spawn(name, ["worker"]))
        self.procs.append(proc)
        return proc

    def wait_running(self, proc: Proc, timeout: float = 60) -> None:
        """Until the worker says it runs (its store is open and migrated)."""
        deadline = time.monotonic() + timeout
        while "worker running" not in self.log_tail(proc.role):
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{proc.role} did not start: {self.log_tail(proc.role)}")
            time.sleep(0.1)

    def log_tail(self, role: str) -> str:
        return (self.workdir / f"{role}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in self.procs:
            try:
                proc.popen.wait(20)
            except subprocess.TimeoutExpired:
                proc.popen.kill()


class Stream:
    """Client threads sending at a steady total rate, retrying on another receiver."""

    def __init__(self, receivers: list[Proc], rate: float, clients: int, run: str) -> None:
        self.receivers = receivers
        self.interval = clients / rate
        self.run = run
        self.acked: dict[int, str] = {}  # delivery id -> sha256 of the body
        self.latencies: list[float] = []
        self.sent = 0
        self.non_2xx = 0
        self.connection_errors = 0
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(c,)) for c in range(clients)]

    def __enter__(self) -> Stream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _number(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _client(self, c: int) -> None:
        due = time.monotonic() + c * self.interval / len(self._threads)
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                due += self.interval
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                n = self._number()
                self._send(http, n, body_for(n, self.run))

    def _send(self, http: httpx.Client, n: int, body: bytes) -> None:
        sha = hashlib.sha256(body).hexdigest()
        for attempt in range(len(self.receivers) * 3):
            receiver = self.receivers[(n + attempt) % len(self.receivers)]
            if receiver.killed:
                continue
            started = time.monotonic()
            try:
                response = http.post(
                    f"{receiver.url}/webhooks/elevenlabs",
                    content=body,
                    headers={
                        "ElevenLabs-Signature": sign(SECRET, body),
                        "Content-Type": "application/json",
                    },
                )
            except httpx.HTTPError:
                with self._lock:
                    self.connection_errors += 1
                continue  # a sender retries elsewhere
            with self._lock:
                self.sent += 1
                if response.status_code == 200:
                    self.acked[response.json()["delivery_id"]] = sha
                    self.latencies.append(time.monotonic() - started)
                    return
                self.non_2xx += 1


def ledger(database_url: str, acked: dict[int, str]) -> dict[str, Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            stored = dict(conn.execute(text("SELECT id, sha256 FROM deliveries")).all())
            jobs = conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
            reclaimed = conn.execute(text("SELECT count(*) FROM jobs WHERE attempts > 1")).scalar()
            effects = dict(
                conn.execute(
                    text(f"SELECT delivery_id, count(*) FROM {TABLE} GROUP BY delivery_id")
                ).all()
            )
            by_pid = conn.execute(
                text(f"SELECT pid, count(*) FROM {TABLE} GROUP BY pid ORDER BY pid")
            ).all()
            conversations = conn.execute(text("SELECT count(*) FROM conversations")).scalar()
            turns = conn.execute(text("SELECT count(*) FROM conversation_turns")).scalar()
            duplicate_turns = conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT conversation_id, turn_index FROM "
                    "conversation_turns GROUP BY 1, 2 HAVING count(*) > 1) AS d"
                )
            ).scalar()
    finally:
        engine.dispose()
    states = {status: count for status, count in jobs}
    return {
        "acknowledged": len(acked),
        "stored": len(stored),
        "acknowledged_not_stored": sum(1 for i, sha in acked.items() if stored.get(i) != sha),
        "jobs": states,
        "jobs_not_done": sum(n for s, n in states.items() if s != "done"),
        "jobs_claimed_again": reclaimed,
        "effects_missing": sum(1 for i in stored if effects.get(i, 0) == 0),
        "effects_duplicated": sum(1 for n in effects.values() if n > 1),
        "effects_by_worker_pid": {pid: n for pid, n in by_pid},
        "conversations": conversations,
        "turns": turns,
        "turns_expected": len(stored) * TURNS,
        "duplicate_turns": duplicate_turns,
    }


def balanced(result: dict[str, Any]) -> bool:
    book = result["ledger"]
    return (
        book["acknowledged"] > 0
        and book["acknowledged_not_stored"] == 0
        and book["jobs_not_done"] == 0
        and book["effects_missing"] == 0
        and book["effects_duplicated"] == 0
        and book["conversations"] == book["stored"]
        and book["turns"] == book["turns_expected"]
        and book["duplicate_turns"] == 0
    )


def run_scaleout(
    database_url: str,
    workdir: Path,
    *,
    seconds: float,
    rate: float,
    clients: int = 4,
    drain_timeout: float = 120,
) -> dict[str, Any]:
    """Run the whole scenario on an empty, reachable Postgres database; returns the figures."""
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(CREATE_TABLE))
    engine.dispose()
    cluster = Cluster(database_url, workdir)
    try:
        receivers = [cluster.start_receiver(f"receiver-{n}") for n in range(2)]
        workers = [cluster.start_worker(f"worker-{n}") for n in range(3)]
        for worker in workers:
            cluster.wait_running(worker)
        events: list[tuple[float, str]] = []
        started = time.monotonic()
        with Stream(receivers, rate, clients, run=str(int(time.time() * 1000))) as stream:
            time.sleep(seconds * 0.4)
            workers[0].kill()
            events.append((round(time.monotonic() - started, 2), "SIGKILL worker-0"))
            time.sleep(seconds * 0.2)
            receivers[0].kill()
            events.append((round(time.monotonic() - started, 2), "SIGKILL receiver-0"))
            time.sleep(seconds * 0.4)
        streamed = time.monotonic() - started
        for proc in workers[1:]:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.role} died: {cluster.log_tail(proc.role)}")
        drain_started = time.monotonic()
        deadline = drain_started + drain_timeout
        while True:
            book = ledger(database_url, stream.acked)
            if book["jobs_not_done"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        drained = time.monotonic() - drain_started
    finally:
        cluster.stop()
    latencies = sorted(stream.latencies)
    return {
        "seconds": round(streamed, 2),
        "rate_target": rate,
        "rate_acknowledged": round(len(stream.acked) / streamed, 1),
        "requests": stream.sent,
        "non_2xx": stream.non_2xx,
        "connection_errors": stream.connection_errors,
        "ack_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "ack_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1)
        if latencies
        else None,
        "kills": events,
        "drain_seconds": round(drained, 2),
        "ledger": book,
    }


@contextmanager
def _postgres() -> Iterator[str]:
    from tests.pgserver import PostgresServer

    with PostgresServer(durable=True) as server:
        yield server.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=float, default=150, help="deliveries per second, in all")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="5 s at 60/s")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "scaleout.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rate, args.clients = 5, 60, 4
    with tempfile.TemporaryDirectory(prefix="voicehooks-scaleout-") as tmp, _postgres() as url:
        result = run_scaleout(
            url, Path(tmp), seconds=args.seconds, rate=args.rate, clients=args.clients
        )
    result["balanced"] = balanced(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    book = result["ledger"]
    rows = [
        ("stream", f"{result['seconds']} s at {args.rate:g}/s target, {args.clients} clients"),
        ("acknowledged (2xx)", f"{book['acknowledged']} ({result['rate_acknowledged']}/s)"),
        ("non-2xx answers", str(result["non_2xx"])),
        ("requests cut by the kill, resent", str(result["connection_errors"])),
        ("ack latency p50 / p99", f"{result['ack_p50_ms']} / {result['ack_p99_ms']} ms"),
        ("kills", ", ".join(f"{what} at {t} s" for t, what in result["kills"])),
        ("stored deliveries", str(book["stored"])),
        ("acknowledged but not stored", str(book["acknowledged_not_stored"])),
        ("jobs not done at the end", f"{book['jobs_not_done']} (states {book['jobs']})"),
        ("jobs claimed again (lease expired)", str(book["jobs_claimed_again"])),
        ("backlog drained after the stream", f"{result['drain_seconds']} s"),
        ("plugin effects missing / twice",
         f"{book['effects_missing']} / {book['effects_duplicated']}"),
        ("effects per worker pid", str(book["effects_by_worker_pid"])),
        ("conversations / stored", f"{book['conversations']} / {book['stored']}"),
        ("turns / expected, duplicated",
         f"{book['turns']} / {book['turns_expected']}, {book['duplicate_turns']}"),
        ("ledger balances", "yes" if result["balanced"] else "NO"),
    ]  # fmt: skip
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0 if result["balanced"] else 1


if __name__ == "__main__":
    sys.exit(main())
