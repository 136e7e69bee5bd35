"""Shared test harness: a real SQLite file or a real Postgres server, and a real uvicorn server.

Storage-touching tests take the ``database_url`` fixture, which runs them once on SQLite and once
on a throwaway PostgreSQL cluster started by ``tests/pgserver.py`` (one cluster per test session,
one fresh database per test).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from receiver.app import create_app
from receiver.registry import Registry, load_registry
from receiver.service import Services
from receiver.settings import Settings
from receiver.sources.elevenlabs import sign
from tests.pgserver import PostgresServer

SECRET = "wsec_test_secret_for_voicehooks"
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'voicehooks.db'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin_dsn = f"host=127.0.0.1 port={server.port} user=voicehooks dbname=voicehooks"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://voicehooks@127.0.0.1:{server.port}/{name}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "elevenlabs_secrets": [SECRET],
        "job_retry_base_seconds": 0.01,
        "job_retry_max_seconds": 0.05,
        "worker_poll_seconds": 0.05,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path / "data")


@pytest.fixture
def services_factory(tmp_path: Path) -> Iterator[Callable[..., Services]]:
    created: list[Services] = []

    def build(settings: Settings, registry: Registry | None = None) -> Services:
        services = Services.create(settings, registry if registry is not None else Registry())
        services.migrate()
        created.append(services)
        return services

    yield build
    for services in created:
        services.close()


@dataclass
class LiveServer:
    url: str
    services: Services

    def post(
        self,
        body: bytes,
        *,
        headers: dict[str, str] | None = None,
        source: str = "elevenlabs",
        **kwargs: object,
    ) -> httpx.Response:
        return httpx.post(
            f"{self.url}/webhooks/{source}",
            content=body,
            headers=headers or {},
            timeout=30,
            **kwargs,
        )  # type: ignore[arg-type]

    def post_signed(self, body: bytes, secret: str = SECRET, **kwargs: object) -> httpx.Response:
        headers = {"ElevenLabs-Signature": sign(secret, body), "Content-Type": "application/json"}
        return self.post(body, headers=headers, **kwargs)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app under a real uvicorn on a loopback port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    """Start the real app under uvicorn on a loopback port, in a background thread."""
    with contextlib.ExitStack() as servers:

        def start(
            services: Services, *, run_worker: bool = True, inbox_process: bool = False
        ) -> LiveServer:
            app = create_app(services=services, run_worker=run_worker, inbox_process=inbox_process)
            return LiveServer(servers.enter_context(serve_in_thread(app)), services)

        yield start


def fixture_bytes(relative: str) -> bytes:
    return (FIXTURES / relative).read_bytes()


def event_body(
    event_type: str = "post_call_transcription",
    conversation_id: str = "conv-1",
    timestamp: int = 1739537297,
    **data: object,
) -> bytes:
    return json.dumps(
        {
            "type": event_type,
            "event_timestamp": timestamp,
            "data": {"agent_id": "agent-1", "conversation_id": conversation_id, **data},
        }
    ).encode()


def wait_until(
    predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.02
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


__all__ = ["load_registry"]


def pip_install_into(package: Path, target: Path) -> Path:
    """A real ``pip install`` of a test package into a directory of its own (with dist-info,
    so its entry points are found when the directory is on PYTHONPATH)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(package),
        ],
        check=True,
        capture_output=True,
    )
    assert any(p.name.endswith(".dist-info") for p in target.iterdir())
    return target
