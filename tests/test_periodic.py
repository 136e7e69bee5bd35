"""``Blueprint.periodic``: how a plugin gives the workers a periodic task, with no core import
of the plugin (the ElevenLabs reconciliation is one; tests/test_elevenlabs_backfill.py)."""

from __future__ import annotations

import time
from pathlib import Path

from receiver.events import PeriodicContext
from receiver.registry import Blueprint, Registry
from receiver.settings import Settings
from tests.conftest import make_settings, wait_until


def test_workers_run_a_plugins_periodic_tasks_and_survive_their_errors(
    tmp_path: Path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []

    async def tick(ctx: PeriodicContext) -> None:
        assert ctx.inbox is not None and ctx.http is not None and ctx.sources
        calls.append("tick")

    async def broken(ctx: PeriodicContext) -> None:
        calls.append("broken")
        raise RuntimeError("a bad day")

    async def never(ctx: PeriodicContext) -> None:
        calls.append("never")

    blueprint = Blueprint("timers")
    blueprint.periodic(0.05, tick)
    blueprint.periodic(lambda settings: settings.worker_poll_seconds, broken)
    blueprint.periodic(lambda settings: settings.elevenlabs_reconcile_seconds, never)  # 0: off
    registry = Registry([blueprint])
    assert [spec.name.rsplit(".", 1)[-1] for spec in registry.periodics()] == [
        "tick",
        "broken",
        "never",
    ]
    settings: Settings = make_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path / "data")
    services = services_factory(settings, registry)
    services.worker.start_in_thread()
    try:
        wait_until(lambda: calls.count("tick") >= 3 and calls.count("broken") >= 3)
    finally:
        services.worker.stop()
    stopped = len(calls)
    time.sleep(0.2)
    assert len(calls) == stopped  # the tasks stop with the worker
    assert "never" not in calls
