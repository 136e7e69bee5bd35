"""Issue 14, plugins as the README tells a newcomer to write them.

- The recipe: ``myplugin.py`` in the working directory and ``VOICEHOOKS_PLUGINS=myplugin``, run
  with the ``voicehooks`` console script (whose sys.path does not include the working directory
  by itself), handles a real signed delivery.
- ``examples/call-log``: a complete plugin package (handler, own table, own Alembic branch, own
  command) pip-installed into a directory of its own and driven through a real ``serve``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from receiver.sources.elevenlabs import sign
from tests.conftest import ROOT, SECRET, event_body, free_port, wait_until
from tests.serverproc import ServerProcess

EXAMPLE = ROOT / "examples" / "call-log"
VOICEHOOKS = Path(sys.executable).with_name("voicehooks")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEHOOKS_")}
    env.pop("PYTHONPATH", None)
    env.update(VOICEHOOKS_ELEVENLABS_SECRETS=SECRET, VOICEHOOKS_LOG_LEVEL="warning", **extra)
    return env


def post_signed(url: str, body: bytes) -> httpx.Response:
    headers = {"ElevenLabs-Signature": sign(SECRET, body), "Content-Type": "application/json"}
    return httpx.post(f"{url}/webhooks/elevenlabs", content=body, headers=headers, timeout=30)


README_PLUGIN = """
from receiver.registry import Blueprint

blueprint = Blueprint("myplugin")


@blueprint.handler("elevenlabs", "post_call_transcription")
def log_call(event, ctx):
    with open("calls.txt", "a") as calls:
        calls.write(f"{event.payload.data.conversation_id}\\n")
"""


def test_the_readme_recipe_works_from_the_console_script(tmp_path: Path) -> None:
    assert VOICEHOOKS.exists(), "the voicehooks console script is installed in the venv"
    readme = (ROOT / "README.md").read_text()
    assert "VOICEHOOKS_PLUGINS=myplugin voicehooks serve" in readme
    assert textwrap.dedent(README_PLUGIN).strip() in readme  # the README shows this very file
    (tmp_path / "myplugin.py").write_text(README_PLUGIN)
    port = free_port()
    proc = subprocess.Popen(
        [str(VOICEHOOKS), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(VOICEHOOKS_PLUGINS="myplugin"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "listening" in line:
                break
        else:
            pytest.fail("serve exited before listening")
        body = event_body(conversation_id="recipe-conv")
        assert post_signed(f"http://127.0.0.1:{port}", body).status_code == 200
        calls = tmp_path / "calls.txt"
        wait_until(lambda: calls.exists() and calls.read_text())
        assert calls.read_text() == "recipe-conv\n"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install examples/call-log (a copy, so no build files land in the repository)."""
    source = tmp_path_factory.mktemp("src") / "call-log"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--target", str(target), str(source)),
        ],
        check=True,
        capture_output=True,
    )
    assert any(p.name.startswith("voicehooks_call_log") for p in target.iterdir())
    return target


def test_the_example_plugin_package_is_installed_and_runs(
    installed_example: Path, tmp_path: Path
) -> None:
    database = tmp_path / "vh.db"
    url = f"sqlite:///{database}"
    server = ServerProcess(url, tmp_path / "data", PYTHONPATH=str(installed_example))
    server.start()
    try:
        body = event_body(conversation_id="example-conv", status="done")
        response = post_signed(server.url, body)
        assert response.status_code == 200

        engine = create_engine(url)

        def logged() -> object:
            with engine.connect() as conn:
                return conn.execute(text("SELECT conversation_id, delivery_id FROM call_log")).all()

        rows = wait_until(logged)
    finally:
        server.stop()
    assert [tuple(r) for r in rows] == [("example-conv", response.json()["delivery_id"])]  # type: ignore[union-attr]
    with engine.connect() as conn:
        heads = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    assert "call_log_0001" in heads  # its own branch, applied by serve's migrate

    # Its command is part of `voicehooks`, found through the entry point too.
    listed = subprocess.run(
        [sys.executable, "-m", "receiver", "call-log", "list", "--json"],
        env={
            **clean_env(VOICEHOOKS_DATABASE_URL=url, VOICEHOOKS_DATA_DIR=str(tmp_path / "data")),
            "PYTHONPATH": os.pathsep.join([str(installed_example), str(ROOT)]),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert '"conversation_id": "example-conv"' in listed.stdout
    assert '"status": "done"' in listed.stdout
