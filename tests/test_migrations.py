"""Schema management: migrations reach head on both databases, and readiness reports it."""

from __future__ import annotations

import httpx
from sqlalchemy import inspect

from receiver.registry import Registry
from receiver.service import Services
from receiver.store import migrate
from tests.conftest import make_settings


def test_upgrade_reaches_every_head_and_is_idempotent(settings) -> None:  # type: ignore[no-untyped-def]
    services = Services.create(settings, Registry())
    try:
        assert migrate.pending_revisions(services.engine)  # a fresh database is behind
        services.migrate()
        services.migrate()  # running it again changes nothing
        assert migrate.pending_revisions(services.engine) == set()
        tables = set(inspect(services.engine).get_table_names())
        assert {"deliveries", "jobs", "alembic_version"} <= tables
    finally:
        services.close()


def test_readyz_is_503_until_migrations_are_applied(
    database_url,
    tmp_path,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    settings = make_settings(database_url, tmp_path / "d", migrate_on_start=False)
    services = Services.create(settings, Registry())
    server = live_server(services, run_worker=False)
    not_ready = httpx.get(f"{server.url}/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["error"] == "migrations_pending"
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive, just not ready
    services.migrate()
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
