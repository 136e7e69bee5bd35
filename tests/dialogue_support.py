"""Helpers for the dialogue render tests: scripts, services with the real plugins, running a
render's jobs to the end."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from handlers.dialogue import store
from handlers.dialogue.script import parse_script
from receiver.registry import load_registry
from receiver.service import Services

TURNS = [
    {"text": "Hello there, how are you?", "voice": "Rachel"},
    {"text": "Very well, thank you!", "voice": "Adam"},
]


def script_doc(**extra: Any) -> dict[str, Any]:
    return {"title": "Test call", "turns": [dict(t) for t in TURNS], **extra}


def write_script(directory: Path, **extra: Any) -> Path:
    path = directory / "script.json"
    path.write_text(json.dumps(script_doc(**extra)))
    return path


def build_services(services_factory: Any, settings: Any) -> Services:
    """Services with every installed plugin (the dialogue, kie.ai and ElevenLabs blueprints)."""
    return services_factory(settings, load_registry())  # type: ignore[no-any-return]


def submit(services: Services, provider: str, **extra: Any) -> int:
    return store.submit(
        services.engine, services.registry, parse_script(script_doc(**extra)), provider
    )


def render(services: Services, ident: int | str) -> dict[str, Any]:
    found = store.get(services.engine, str(ident))
    assert found is not None
    return found


def run_until_final(
    services: Services, render_id: int, timeout: float = 20.0, *, max_runs: int = 100
) -> dict[str, Any]:
    """Drain the render's jobs (waiting for retries to come due) until it is final."""
    deadline = time.monotonic() + timeout
    delivery_id = render(services, render_id)["delivery_id"]
    runs = 0
    while True:
        runs += asyncio.run(services.worker.drain(delivery_id))
        current = render(services, render_id)
        if current["state"] in ("succeeded", "failed"):
            return current
        if time.monotonic() > deadline or runs > max_runs:
            raise AssertionError(f"render {render_id} not final: {current}")
        time.sleep(0.02)


def job_of(services: Services, render_id: int) -> dict[str, Any]:
    from receiver import jobs

    delivery = jobs.get_delivery(services.engine, render(services, render_id)["delivery_id"])
    assert delivery is not None
    (job,) = [j for j in delivery["jobs"] if j["handler"].startswith("handlers.dialogue")]
    return job  # type: ignore[no-any-return]
