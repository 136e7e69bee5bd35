"""The servers the ingest benchmark compares, and how to count what each one stored."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Server, base_env, process_tree, voicehooks_argv

SECRET = "wsec_bench_secret_not_for_production"
# The voicehooks targets: (store, workers, extra environment). "sqlite" and "postgres" run
# `serve --no-worker` (the receiving process of a deployment whose workers run apart), so they
# measure ingest alone. "serve" is `voicehooks serve` as the README starts it: default settings,
# its workers (a child process, receiver/worker_process.py) running the built-in handlers on
# every delivery while it receives. "serve-threads" (not run by default) is the same with the
# workers as threads of the serve process (VOICEHOOKS_WORKER_PROCESS=false), as before issue 16.
VOICEHOOKS_TARGETS: dict[str, tuple[str, bool, dict[str, str]]] = {
    "sqlite": ("sqlite", False, {}),
    "postgres": ("postgres", False, {}),
    "serve": ("sqlite", True, {}),
    "serve-threads": ("sqlite", True, {"VOICEHOOKS_WORKER_PROCESS": "false"}),
    "sqlite-threads": ("sqlite", False, {"VOICEHOOKS_INBOX_PROCESS": "false"}),
    "postgres-threads": ("postgres", False, {"VOICEHOOKS_INBOX_PROCESS": "false"}),
}
TARGETS = ("anchor", "naive", "sqlite", "postgres", "serve")  # the default selection
ALL_TARGETS = (*TARGETS, "serve-threads", "sqlite-threads", "postgres-threads")


@dataclass
class Target:
    """How to start one target, and how to count what it stored (None: it stores nothing)."""

    name: str
    describe: str
    make_server: Callable[[str], Server]  # argument: a name, unique per server started
    count_stored: Callable[[str], int] | None = None
    # For the idle ack -> handler completion probe: the database URL of a named server.
    database_url: Callable[[str], str] | None = None
    # Targets whose workers run while they receive: job counts by status, to wait for the
    # backlog to drain after a phase.
    count_jobs: Callable[[str], dict[str, int]] | None = None


def build_targets(
    names: list[str], workdir: Path, cleanup: list[Callable[[], None]]
) -> list[Target]:
    env = base_env()
    postgres: list[Any] = []
    targets: list[Target] = []
    for name in names:
        if name == "anchor":
            targets.append(
                Target(
                    name,
                    "bare Starlette: read body, 200 (access log off)",
                    _app("bench.anchor_app:app", env, workdir),
                )
            )
        elif name == "naive":
            targets.append(_naive(env, workdir))
        elif name in VOICEHOOKS_TARGETS:
            kind, in_process_workers, extra_env = VOICEHOOKS_TARGETS[name]
            if kind == "postgres" and not postgres:
                postgres.append(_durable_postgres(cleanup))
            targets.append(
                _voicehooks(
                    name,
                    in_process_workers,
                    postgres[0] if kind == "postgres" else None,
                    env | extra_env,
                    workdir,
                )
            )
        else:
            raise SystemExit(f"unknown target {name!r}; choose from {', '.join(ALL_TARGETS)}")
    return targets


def _app(
    app: str,
    env: dict[str, str],
    workdir: Path,
    extra: Callable[[str], dict[str, str]] | None = None,
) -> Callable[[str], Server]:
    def make(server_name: str) -> Server:
        argv = [sys.executable, "-m", "bench.serve", app]
        return Server(server_name, argv, env | (extra(server_name) if extra else {}), workdir)

    return make


def _naive(env: dict[str, str], workdir: Path) -> Target:
    def db(server_name: str) -> Path:
        return workdir / f"{server_name}.db"

    def count(server_name: str) -> int:
        with sqlite3.connect(db(server_name)) as conn:
            return int(conn.execute("SELECT count(*) FROM deliveries").fetchone()[0])

    return Target(
        "naive",
        "verify HMAC + 1 SQLite txn/request",
        _app(
            "bench.naive_app:app",
            env,
            workdir,
            lambda server_name: {"BENCH_NAIVE_DB": str(db(server_name)), "BENCH_SECRET": SECRET},
        ),
        count_stored=count,
    )


def _voicehooks(
    name: str, in_process_workers: bool, postgres: Any, env: dict[str, str], workdir: Path
) -> Target:
    """``voicehooks serve`` with a fresh database for each server it starts."""
    urls: dict[str, str] = {}

    def url_for(server_name: str) -> str:
        if server_name not in urls:
            if postgres is None:
                urls[server_name] = f"sqlite:///{workdir / server_name}.db"
            else:
                urls[server_name] = _new_pg_database(postgres, server_name)
        return urls[server_name]

    def make(server_name: str) -> Server:
        extra = {
            "VOICEHOOKS_DATABASE_URL": url_for(server_name),
            "VOICEHOOKS_DATA_DIR": str(workdir / f"{server_name}-data"),
            "VOICEHOOKS_ELEVENLABS_SECRETS": SECRET,
        }
        argv = voicehooks_argv()
        if server_name.endswith(("-probe", "-split")):
            # The idle probe needs workers, and a handler of its own (bench/probe_handler.py):
            # in-process ("-probe"), or in a `voicehooks worker` process beside a
            # `serve --no-worker` ("-split", see bench/ingest.py run_probe).
            extra["VOICEHOOKS_PLUGINS"] = "bench.probe_handler"
            if server_name.endswith("-split"):
                argv.append("--no-worker")
        elif not in_process_workers:
            argv.append("--no-worker")
        server = Server(server_name, argv, env | extra, workdir)
        if postgres is not None:
            server.database_pids = lambda: process_tree(_postmaster_pid(postgres))
        return server

    store = "PostgreSQL" if postgres is not None else "SQLite"
    if not in_process_workers:
        describe = f"voicehooks serve --no-worker, {store}"
        if env.get("VOICEHOOKS_INBOX_PROCESS") == "false":
            describe += ", inbox writes on threads of serve"
    elif env.get("VOICEHOOKS_WORKER_PROCESS") == "false":
        describe = f"voicehooks serve, {store}, workers as threads in the serve process"
    else:
        describe = f"voicehooks serve (default), {store}, built-in handlers in its worker child"
    return Target(
        name,
        describe,
        make,
        count_stored=lambda server_name: count_deliveries(url_for(server_name)),
        database_url=None if in_process_workers else url_for,
        count_jobs=(lambda server_name: count_jobs(url_for(server_name)))
        if in_process_workers
        else None,
    )


def count_deliveries(database_url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one())
    finally:
        engine.dispose()


def count_jobs(database_url: str) -> dict[str, int]:
    """Jobs by status (pending, running, done, dead)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status"))
            return {str(status): int(count) for status, count in rows}
    finally:
        engine.dispose()


def _durable_postgres(cleanup: list[Callable[[], None]]) -> Any:
    """A throwaway PostgreSQL with its durability on (the test server turns fsync off)."""
    from tests.pgserver import PostgresServer

    server = PostgresServer(durable=True).start()
    cleanup.append(server.stop)
    return server


def _postmaster_pid(server: Any) -> int:
    return int((server.datadir / "postmaster.pid").read_text().split()[0])


def _new_pg_database(server: Any, server_name: str) -> str:
    import psycopg

    name = "bench_" + "".join(c if c.isalnum() else "_" for c in server_name)
    dsn = f"host=127.0.0.1 port={server.port} user=voicehooks dbname=voicehooks"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://voicehooks@127.0.0.1:{server.port}/{name}"
