"""Secrets never printed (issue 15 item 6): the real server and every ``voicehooks`` command, as
subprocesses with known secrets (a Postgres URL with a password among them), succeeding and
failing, then every byte they printed, logged or answered is searched for those secrets.

One deliberate exception is not exercised: ``voicehooks sign`` for a kie.ai callback when only
the URL token is configured prints the token, because that URL is the credential it was asked for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from receiver.cli.main import app
from receiver.sources.elevenlabs import sign
from tests.conftest import FIXTURES, ROOT, free_port
from tests.serverproc import ServerProcess

SECRETS = {
    "VOICEHOOKS_ELEVENLABS_SECRETS": "wsec-known-eleven-7f3a9c",
    "VOICEHOOKS_KIE_HMAC_KEYS": "kie-known-hmac-5b2d8e",
    "VOICEHOOKS_KIE_URL_TOKEN": "kie-known-token-1c9f4a",
    "VOICEHOOKS_KIE_API_KEY": "kie-known-apikey-8e1b2c",
    "VOICEHOOKS_ELEVENLABS_API_KEY": "el-known-apikey-3d7f0a",
    "VOICEHOOKS_SONNA_API_KEY": "sonna-known-apikey-6a4e9b",
    "VOICEHOOKS_ADMIN_TOKEN": "admin-known-token-2f8c5d",
}
DB_PASSWORD = "dbpw-known-Qx7Lm2"
TRANSCRIPTION = FIXTURES / "elevenlabs" / "post_call_transcription.json"
KIE = FIXTURES / "kie" / "success.json"


@pytest.fixture
def pg_url(pg_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh database, reached with a URL that carries a password (the test cluster trusts
    local connections, so the password is accepted whatever it is)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = f"host=127.0.0.1 port={pg_server.port} user=voicehooks dbname=voicehooks"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://voicehooks:{DB_PASSWORD}@127.0.0.1:{pg_server.port}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _env(database_url: str, data_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        **SECRETS,
        "VOICEHOOKS_DATABASE_URL": database_url,
        "VOICEHOOKS_DATA_DIR": str(data_dir),
        "VOICEHOOKS_LOG_LEVEL": "debug",
        "VOICEHOOKS_WORKER_POLL_SECONDS": "0.1",
        "COLUMNS": "200",
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


def _command_names() -> set[str]:
    """Every command the CLI offers, as "name" or "group name"."""
    names = {c.name or c.callback.__name__ for c in app.registered_commands}  # type: ignore[union-attr]
    for group in app.registered_groups:
        assert group.typer_instance is not None
        for command in group.typer_instance.registered_commands:
            names.add(f"{group.name} {command.name or command.callback.__name__}")  # type: ignore[union-attr]
    return names


def test_no_secret_in_any_output(pg_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    outputs: list[str] = []
    ran: set[str] = set()
    env = _env(pg_url, tmp_path / "data")

    def run(*args: str, env: dict[str, str] = env, ok: bool = True, timeout: float = 90) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "receiver", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=timeout,
        )
        text = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        outputs.append(text)
        assert (result.returncode == 0) == ok, (args, text[-2000:])
        assert "Traceback" not in text, (args, text[-2000:])
        words = [a for a in args if not a.startswith("-")] or ["--help"]
        ran.add(
            " ".join(words[:2])
            if words[0] in {"deliveries", "conversations", "tasks", "dialogue", "elevenlabs"}
            else words[0]
        )
        return text

    run("--help")
    run("migrate")
    server = ServerProcess(
        pg_url, tmp_path / "data", **{k: v for k, v in env.items() if k.startswith("VOICEHOOKS_")}
    )
    server.start()
    try:
        body = TRANSCRIPTION.read_bytes()
        answers = [
            httpx.post(
                f"{server.url}/webhooks/elevenlabs",
                content=body,
                headers={"ElevenLabs-Signature": "t=1,v0=" + "0" * 64},
            ),
            httpx.post(
                f"{server.url}/webhooks/elevenlabs",
                content=body,
                headers={
                    "ElevenLabs-Signature": sign(SECRETS["VOICEHOOKS_ELEVENLABS_SECRETS"], body)
                },
            ),
            httpx.post(f"{server.url}/webhooks/kie?token=wrong", content=KIE.read_bytes()),
            httpx.get(f"{server.url}/metrics"),
            httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer wrong"}),
            httpx.get(
                f"{server.url}/metrics",
                headers={"Authorization": f"Bearer {SECRETS['VOICEHOOKS_ADMIN_TOKEN']}"},
            ),
            httpx.get(f"{server.url}/readyz"),
            httpx.get(f"{server.url}/nope"),
        ]
        assert [a.status_code for a in answers] == [401, 200, 401, 401, 401, 200, 200, 404]
        outputs += [f"{a.headers}\n{a.text}" for a in answers]
        run("sign", str(TRANSCRIPTION))
        run("sign", str(KIE), "--json")
        run("replay", "--url", server.url, str(TRANSCRIPTION), str(KIE))
        run("replay", "--in-process", str(FIXTURES / "elevenlabs" / "transcription_minimal.json"))
    finally:
        server.stop()
    outputs.append(server.log.read_text(errors="replace"))
    ran.add("serve")

    run("deliveries", "list")
    run("deliveries", "list", "--json")
    run("deliveries", "show", "1")
    run("deliveries", "show", "1", "--json")
    run("deliveries", "show", "99999", ok=False)
    run("deliveries", "retry", "1")
    run("deliveries", "retry", "99999", ok=False)
    run("deliveries", "export", "1", "-o", "-")
    run("conversations", "list")
    run("conversations", "show", "conv_does_not_exist", ok=False)
    run("tasks", "list")
    run("tasks", "show", "task_does_not_exist", ok=False)
    run("demo", "--timeout", "30")
    run("gc", "--dry-run")
    run("prune", "--older-than", "30", "--dry-run")

    # The provider APIs are unreachable (nothing listens there): their keys must not show in
    # what the commands say about it.
    closed = f"http://127.0.0.1:{free_port()}"
    providers_down = {
        **env,
        "VOICEHOOKS_SONNA_BASE_URL": closed,
        "VOICEHOOKS_ELEVENLABS_BASE_URL": closed,
        "VOICEHOOKS_KIE_BASE_URL": closed,
    }
    script = tmp_path / "script.json"
    script.write_text('{"turns": [{"text": "Hello there.", "voice": "Rachel"}]}')
    run("dialogue", "check", str(script), "--provider", "kie")
    run("dialogue", "submit", str(script), "--provider", "sonna", "--json", env=providers_down)
    run("dialogue", "list")
    run("dialogue", "show", "1")
    run("elevenlabs", "backfill", env=providers_down, ok=False)

    worker = subprocess.Popen(
        [sys.executable, "-m", "receiver", "worker"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    time.sleep(3)
    worker.terminate()
    outputs.append(worker.communicate(timeout=30)[0].decode(errors="replace"))
    ran.add("worker")

    # Failing: the database is unreachable (a closed port), its URL carries the password.
    dead = make_url(pg_url).set(port=free_port()).render_as_string(hide_password=False)
    assert DB_PASSWORD in dead
    broken = _env(dead, tmp_path / "data")
    run("deliveries", "list", env=broken, ok=False)
    shown = run("migrate", env=broken, ok=False)
    assert "***" in shown  # the URL is shown, masked
    run("replay", "--in-process", str(TRANSCRIPTION), env=broken, ok=False)
    serve = subprocess.run(
        [sys.executable, "-m", "receiver", "serve", "--port", str(free_port())],
        env=broken,
        cwd=tmp_path,
        capture_output=True,
        timeout=90,
    )
    assert serve.returncode != 0
    started = serve.stdout.decode() + serve.stderr.decode()
    assert "error: cannot use the database postgresql+psycopg://voicehooks:***@" in started
    assert "Traceback" not in started
    outputs.append(started)

    assert _command_names() <= ran, f"commands not exercised: {_command_names() - ran}"
    everything = "\n".join(outputs)
    assert "voicehooks listening on" in everything and "deliveries" in everything
    for name, value in [*SECRETS.items(), ("DB password", DB_PASSWORD)]:
        assert value not in everything, f"{name} was printed"
