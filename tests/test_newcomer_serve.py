"""Issue 14, ``voicehooks serve`` and HTTP as a newcomer meets them: the store line with the
password masked, "listening" only once the port accepts, a busy port in one line before anything
is migrated, one log format (uvicorn's records included), JSON errors for every status, webhook
paths with a trailing slash, the bearer scheme in any case, and the backlog gauges.

``serve`` runs as a real subprocess (its stdout and stderr are pipes, not a terminal); the HTTP
checks go through the real app under uvicorn on loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.events import PermanentFailure
from receiver.registry import HandlerSpec, Registry
from tests.conftest import ROOT, SECRET, event_body, free_port, make_settings, wait_until

ADMIN_TOKEN = "admin-token-for-tests"


def serve_command(port: int) -> list[str]:
    return [sys.executable, "-m", "receiver", "serve", "--port", str(port)]


def serve_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEHOOKS_")}
    env.update(
        VOICEHOOKS_DATABASE_URL=database_url,
        VOICEHOOKS_DATA_DIR=str(data_dir),
        VOICEHOOKS_ELEVENLABS_SECRETS=SECRET,
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def test_serve_names_its_store_masked_and_listens_when_it_says_so(
    database_url: str, tmp_path: Path
) -> None:
    # The test cluster trusts loopback, so a password is accepted and ignored: what matters is
    # that it is never printed.
    url = database_url.replace("//voicehooks@", "//voicehooks:hunter2@")
    shown = url.replace(":hunter2@", ":***@")
    port = free_port()
    proc = subprocess.Popen(
        serve_command(port),
        # The access log is off by default; on here, to see that its records are JSON too.
        env=serve_env(
            url, tmp_path / "data", VOICEHOOKS_LOG_LEVEL="info", VOICEHOOKS_ACCESS_LOG="true"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        store_line = proc.stdout.readline()
        assert store_line.startswith(f"voicehooks store: {shown} (data: ")
        assert "hunter2" not in store_line
        inspector = proc.stdout.readline()  # the sign-in link (a token made for this run)
        assert inspector.startswith(f"inspector: sign in at http://127.0.0.1:{port}/ui/login#")
        proc.stdout.readline()  # its second line says how to keep a token
        listening = proc.stdout.readline()
        assert listening.strip() == f"voicehooks listening on http://127.0.0.1:{port}"
        # Said once the server accepts: the very next request is answered.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "hunter2" not in err
    # 6. One log format: every line on stderr (not a terminal) is JSON, uvicorn's included.
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    loggers = {r.get("logger") for r in records}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers, loggers
    assert any(r["event"] == "receiver_started" for r in records)
    assert not any("Context impl" in r["event"] for r in records)  # no Alembic chatter
    access = next(r for r in records if r.get("logger") == "uvicorn.access")
    assert "GET /healthz" in access["event"] and access["level"] == "info"


def test_a_busy_port_is_one_line_before_anything_is_migrated(tmp_path: Path) -> None:
    database = tmp_path / "vh.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            serve_command(port),
            env=serve_env(f"sqlite:///{database}", tmp_path / "data"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stdout == ""  # neither "listening" nor the store line
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert not database.exists() and not (tmp_path / "data").exists()
    assert time.monotonic() - started < 30


# -- HTTP --------------------------------------------------------------------------------------


def _dies(event: Any, ctx: Any) -> None:
    raise PermanentFailure("for the dead gauge")


@pytest.fixture
def server(database_url: str, tmp_path: Path, services_factory: Any, live_server: Any) -> Any:
    settings = make_settings(database_url, tmp_path / "data", admin_token=ADMIN_TOKEN)
    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", _dies)])
    return live_server(services_factory(settings, registry), run_worker=False)


def test_every_http_error_is_the_documented_json(server: Any) -> None:
    for method, path, status, code in (
        ("GET", "/nowhere", 404, "not_found"),
        ("POST", "/webhooks/nosuchsource", 404, "unknown_source"),
        ("GET", "/webhooks/elevenlabs", 405, "method_not_allowed"),
        ("POST", "/healthz", 405, "method_not_allowed"),
    ):
        response = httpx.request(method, server.url + path)
        assert response.status_code == status, (method, path)
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]
    assert httpx.get(server.url + "/webhooks/elevenlabs").headers["allow"] == "POST"


def test_a_trailing_slash_is_the_same_webhook_without_a_redirect(server: Any) -> None:
    from receiver.sources.elevenlabs import sign

    body = event_body(conversation_id="slash")
    response = httpx.post(
        server.url + "/webhooks/elevenlabs/",
        content=body,
        headers={"ElevenLabs-Signature": sign(SECRET, body), "Content-Type": "application/json"},
        follow_redirects=False,
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "received"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_matched_in_any_case(server: Any, scheme: str) -> None:
    ok = httpx.get(server.url + "/metrics", headers={"Authorization": f"{scheme} {ADMIN_TOKEN}"})
    assert ok.status_code == 200
    for wrong in (f"{scheme} not-the-token", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN, ""):
        refused = httpx.get(server.url + "/metrics", headers={"Authorization": wrong})
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"


def gauges(server: Any) -> dict[str, float]:
    text = httpx.get(
        server.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).text
    names = (
        "voicehooks_jobs_pending",
        "voicehooks_jobs_dead",
        "voicehooks_oldest_pending_job_age_seconds",
    )
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            values[name] = float(value)
    assert set(values) == set(names), text
    return values


def test_metrics_report_the_job_backlog_at_scrape_time(server: Any) -> None:
    import asyncio

    assert gauges(server) == {
        "voicehooks_jobs_pending": 0,
        "voicehooks_jobs_dead": 0,
        "voicehooks_oldest_pending_job_age_seconds": 0,
    }
    for conversation in ("a", "b"):
        assert server.post_signed(event_body(conversation_id=conversation)).status_code == 200
    time.sleep(1.1)
    values = gauges(server)
    assert values["voicehooks_jobs_pending"] == 2 and values["voicehooks_jobs_dead"] == 0
    assert 1.0 <= values["voicehooks_oldest_pending_job_age_seconds"] < 60
    asyncio.run(server.services.worker.drain())
    wait_until(lambda: gauges(server)["voicehooks_jobs_dead"] == 2)
    assert gauges(server)["voicehooks_jobs_pending"] == 0
    assert gauges(server)["voicehooks_oldest_pending_job_age_seconds"] == 0
