"""Worker throughput against a peer: no-op jobs per second, voicehooks and procrastinate.

    .venv/bin/python -m bench.workers [--jobs 5000] [--rounds 3] [--concurrency 4] [--quick]

Both sides get the same work on the same durable PostgreSQL (fsync and synchronous_commit on):
``--jobs`` no-op jobs already queued, then one worker process with ``--concurrency`` concurrent
jobs started, and the time from its first finished job to its last measured from the
database's own timestamps (so process start-up is not counted on either side):

- ``voicehooks``: deliveries stored through the inbox, each with one job for the no-op handler
  of bench/probe_handler.py; ``voicehooks worker`` (``VOICEHOOKS_WORKER_CONCURRENCY``);
  ``jobs.finished_at``;
- ``procrastinate``: ``batch_defer_async`` of a no-op task (bench/procrastinate_app.py);
  ``procrastinate worker --concurrency``; the ``succeeded`` rows of ``procrastinate_events``;
- ``voicehooks-sqlite``: the voicehooks side on the default SQLite store, for reference.

procrastinate is installed for the benchmark only (the ``bench`` extra); if it is missing the
script installs it into the running virtualenv with pip. Rounds are interleaved; the table shows
the median jobs/s and the ratio to procrastinate's median. Writes bench/out/workers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bodies import Bodies
from bench.procs import base_env, machine, process_cpu_seconds, voicehooks_argv
from bench.targets import SECRET, _durable_postgres, _new_pg_database

OUT = Path(__file__).resolve().parent / "out" / "workers.json"
PEER = "procrastinate>=3.0"
SIDES = ("voicehooks", "procrastinate", "voicehooks-sqlite")


def ensure_procrastinate() -> None:
    if importlib.util.find_spec("procrastinate") is None:
        print(f"installing {PEER} for the benchmark (pip)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", PEER], check=True)


# -- filling the queues -----------------------------------------------------------------------


def fill_voicehooks(database_url: str, data_dir: Path, jobs: int) -> None:
    """``jobs`` deliveries for the probe handler, stored through the inbox (one job each)."""
    from bench.probe_handler import PROBE_EVENT
    from receiver.body import ReceivedBody
    from receiver.inbox import IncomingDelivery
    from receiver.service import Services
    from receiver.settings import Settings

    settings = Settings(
        database_url=database_url,
        data_dir=data_dir,
        elevenlabs_secrets=[SECRET],  # type: ignore[list-item]  # validated from str
        plugins=["bench.probe_handler"],
    )
    services = Services.create(settings)
    services.migrate()
    source = services.sources["elevenlabs"]
    bodies = Bodies(SECRET, event_type=PROBE_EVENT)
    from receiver.sources.base import Authenticity

    async def store_all() -> None:
        services.inbox.start()
        try:
            pending = []
            for index in bodies.take(jobs):
                data = bodies.body(index)
                body = ReceivedBody(len(data), "0" * 64, data=data)
                incoming = IncomingDelivery(
                    source="elevenlabs",
                    identity=source.identify(body),
                    auth=Authenticity("bench"),
                    sha256=body.sha256,
                    size=body.size,
                    body=data,
                )
                pending.append(services.inbox.accept(incoming))
            receipts = await asyncio.gather(*pending)
            assert sum(r.jobs for r in receipts) == jobs, "not one job per delivery"
        finally:
            services.inbox.stop()

    try:
        asyncio.run(store_all())
    finally:
        services.close()


def fill_procrastinate(dsn: str, jobs: int) -> None:
    import procrastinate

    # An app of this round's database; the worker process runs bench/procrastinate_app.py's,
    # whose task has the same name.
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")
    async def noop() -> None:
        """Deferred from here, run by the worker's identical task."""

    async def defer_all() -> None:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            batch = 1000
            for start in range(0, jobs, batch):
                await noop.batch_defer_async(*[{}] * min(batch, jobs - start))

    asyncio.run(defer_all())


# -- running one worker process until the queue is empty --------------------------------------


def run_until_done(
    argv: list[str],
    env: dict[str, str],
    log: Path,
    done: Callable[[], int],
    jobs: int,
    timeout: float,
) -> tuple[float, float]:
    """Start the worker process, wait until ``done()`` reaches ``jobs``, stop it: wall seconds
    and the worker process's CPU seconds."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    started = time.monotonic()
    try:
        while done() < jobs:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{log.read_text()[-2000:]}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"worker did not finish {jobs} jobs in {timeout} s")
            time.sleep(0.2)
        return time.monotonic() - started, process_cpu_seconds(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _scalar(database_url: str, sql: str) -> Any:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).one()
    finally:
        engine.dispose()


def _seconds(first: Any, last: Any) -> float:
    if isinstance(first, str):  # SQLite keeps datetimes as text
        first, last = datetime.fromisoformat(first), datetime.fromisoformat(last)
    return float((last - first).total_seconds())


def measure_voicehooks(
    database_url: str, workdir: Path, name: str, jobs: int, concurrency: int, timeout: float
) -> dict[str, Any]:
    data_dir = workdir / f"{name}-data"
    fill_voicehooks(database_url, data_dir, jobs)
    env = base_env() | {
        "VOICEHOOKS_DATABASE_URL": database_url,
        "VOICEHOOKS_DATA_DIR": str(data_dir),
        "VOICEHOOKS_ELEVENLABS_SECRETS": SECRET,
        "VOICEHOOKS_PLUGINS": "bench.probe_handler",
        "VOICEHOOKS_WORKER_CONCURRENCY": str(concurrency),
        "VOICEHOOKS_LOG_LEVEL": "warning",  # procrastinate's worker logs nothing per job either
    }
    argv = [*voicehooks_argv()[:-1], "worker"]

    def done() -> int:
        return int(_scalar(database_url, "SELECT count(*) FROM jobs WHERE status = 'done'")[0])

    wall, cpu = run_until_done(argv, env, workdir / f"{name}.log", done, jobs, timeout)
    first, last, states = _scalar(
        database_url,
        "SELECT min(finished_at), max(finished_at), count(DISTINCT status) FROM jobs",
    )
    return _result(jobs, _seconds(first, last), wall, cpu, all_done=states == 1)


def measure_procrastinate(
    dsn_url: str, workdir: Path, name: str, jobs: int, concurrency: int, timeout: float
) -> dict[str, Any]:
    dsn = dsn_url.replace("postgresql+psycopg://", "postgresql://")
    fill_procrastinate(dsn, jobs)
    env = base_env() | {"BENCH_PROCRASTINATE_DSN": dsn}
    procrastinate = Path(sys.executable).with_name("procrastinate")
    argv = [
        str(procrastinate) if procrastinate.exists() else sys.executable,
        *([] if procrastinate.exists() else ["-m", "procrastinate"]),
        "--app=bench.procrastinate_app.app",
        "worker",
        f"--concurrency={concurrency}",
    ]

    def done() -> int:
        sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        return int(_scalar(dsn_url, sql)[0])

    wall, cpu = run_until_done(argv, env, workdir / f"{name}.log", done, jobs, timeout)
    first, last = _scalar(
        dsn_url, "SELECT min(at), max(at) FROM procrastinate_events WHERE type = 'succeeded'"
    )
    return _result(jobs, _seconds(first, last), wall, cpu, all_done=done() == jobs)


def _result(jobs: int, busy: float, wall: float, cpu: float, *, all_done: bool) -> dict[str, Any]:
    return {
        "jobs": jobs,
        "first_to_last_done_s": round(busy, 3),
        "jobs_per_s": round((jobs - 1) / busy, 1) if busy > 0 else None,
        "wall_s_with_startup": round(wall, 2),
        "worker_cpu_ms_per_job": round(cpu * 1000 / jobs, 2),  # start-up included
        "all_done": all_done,
    }


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--jobs", type=int, default=5000, help="no-op jobs per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent jobs per worker")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"from {','.join(SIDES)}")
    parser.add_argument("--nice", type=int, help="run at this nice value (root for < 0)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="200 jobs, 1 round (smoke run)")
    args = parser.parse_args(argv)
    jobs, rounds = (200, 1) if args.quick else (args.jobs, max(1, args.rounds))
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := set(sides) - set(SIDES):
        raise SystemExit(f"unknown sides {sorted(unknown)}; choose from {', '.join(SIDES)}")
    if args.nice is not None:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    if "procrastinate" in sides:
        ensure_procrastinate()
    started = datetime.now(UTC)
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    cleanup: list[Callable[[], None]] = []
    timeout = max(120.0, jobs / 20)
    with tempfile.TemporaryDirectory(prefix="voicehooks-bench-workers-") as tmp:
        workdir = Path(tmp)
        try:
            postgres = _durable_postgres(cleanup) if set(sides) - {"voicehooks-sqlite"} else None
            for round_no in range(1, rounds + 1):
                for side in sides:
                    name = f"{side}-r{round_no}"
                    print(f"-- round {round_no}/{rounds}, {side}", file=sys.stderr, flush=True)
                    if side == "voicehooks-sqlite":
                        url = f"sqlite:///{workdir / name}.db"
                    else:
                        url = _new_pg_database(postgres, name)
                    measure = (
                        measure_procrastinate if side == "procrastinate" else measure_voicehooks
                    )
                    record = measure(url, workdir, name, jobs, args.concurrency, timeout)
                    print(f"   {record}", file=sys.stderr, flush=True)
                    results[side].append(record)
        finally:
            for stop in reversed(cleanup):
                stop()
    summary = {
        side: {
            "jobs_per_s": statistics.median(r["jobs_per_s"] or 0.0 for r in records),
            "rounds": [r["jobs_per_s"] for r in records],
            "all_done": all(r["all_done"] for r in records),
        }
        for side, records in results.items()
    }
    peer = summary.get("procrastinate", {}).get("jobs_per_s")
    lines = ["| worker | store | jobs/s (median) | rounds | vs procrastinate | every job done |"]
    lines.append("|---|---|---|---|---|---|")
    for side, s in summary.items():
        store = "SQLite" if side.endswith("sqlite") else "PostgreSQL"
        ratio = f"{s['jobs_per_s'] / peer:.1f}x" if peer else "-"
        rounds_text = ", ".join(f"{r:,.0f}" for r in s["rounds"] if r is not None)
        lines.append(
            f"| {side.split('-')[0]} | {store} | {s['jobs_per_s']:,.0f} | {rounds_text} "
            f"| {ratio} | {'yes' if s['all_done'] else 'NO'} |"
        )
    table = "\n".join(lines)
    document = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": "python -m bench.workers " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "jobs": jobs,
        "concurrency": args.concurrency,
        "summary": summary,
        "rounds": results,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(table)
    print(f"(written to {args.out})", file=sys.stderr)
    return 0 if all(s["all_done"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
