"""``voicehooks tasks list|show``: what an operator sees of recorded kie.ai dialogue tasks.

Tasks are recorded by the real handler (audio from a loopback HTTP server); the CLI then opens the
same store from the environment, exactly as it would from a shell.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from receiver.cli.main import app
from tests import test_kie_handler as handler_tests
from tests.test_kie_handler import MP3, REGISTRY, body_with, deliver, drain
from tests.test_kie_source import FAIL_ID, SUCCESS_ID, kie_settings

CALLBACK_TOKEN = "cli-secret-callback-token"
runner = CliRunner()
audio_server = handler_tests.audio_server  # the loopback file host, as a fixture here too


@pytest.fixture
def store(database_url, tmp_path, services_factory, audio_server, monkeypatch):  # type: ignore[no-untyped-def]
    """A store holding one successful task (with audio) and one failed task."""
    data_dir = tmp_path / "data"
    services = services_factory(kie_settings(database_url, data_dir), REGISTRY)
    url = audio_server.route("/cli.mp3")
    document = json.loads(body_with("success", [url]))
    param = json.loads(document["data"]["param"])
    param["callBackUrl"] = f"https://hooks.example.com/webhooks/kie?token={CALLBACK_TOKEN}"
    document["data"]["param"] = json.dumps(param)
    deliver(services, json.dumps(document).encode())
    deliver(services, body_with("fail"))
    assert drain(services) == 2
    for name in list(os.environ):
        if name.startswith("VOICEHOOKS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VOICEHOOKS_DATABASE_URL", database_url)
    monkeypatch.setenv("VOICEHOOKS_DATA_DIR", str(data_dir))
    return {"url": url, "data_dir": data_dir}


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


def words(text: str) -> str:
    """Terminal output with wrapping undone."""
    return " ".join(text.split())


def test_list_shows_every_task_and_filters_by_state(store) -> None:  # type: ignore[no-untyped-def]
    result = run("tasks", "list", "--json")
    assert result.exit_code == 0, result.output
    tasks = {t["task_id"]: t for t in json.loads(result.stdout)}
    assert set(tasks) == {SUCCESS_ID, FAIL_ID}
    assert tasks[SUCCESS_ID]["state"] == "success"
    assert tasks[SUCCESS_ID]["audio_blob_path"].endswith(".mp3")
    assert (tasks[FAIL_ID]["state"], tasks[FAIL_ID]["fail_code"]) == ("fail", "500")

    failed = json.loads(run("tasks", "list", "--state", "fail", "--json").stdout)
    assert [t["task_id"] for t in failed] == [FAIL_ID]
    assert len(json.loads(run("tasks", "list", "--limit", "1", "--json").stdout)) == 1

    result = run("tasks", "list")
    assert result.exit_code == 0, result.output
    text = words(result.stdout)
    assert "success" in text and "fail" in text
    assert CALLBACK_TOKEN not in result.stdout


def test_show_gives_state_turns_urls_and_the_audio_file(store) -> None:  # type: ignore[no-untyped-def]
    result = run("tasks", "show", SUCCESS_ID, "--json")
    assert result.exit_code == 0, result.output
    task = json.loads(result.stdout)
    assert task["state"] == "success"
    assert [(t["voice"], t["text"][:8]) for t in task["dialogue"]] == [
        ("Rachel", "Welcome "),
        ("Adam", "Thanks, "),
        ("Rachel", "Sure, bu"),
        ("Adam", "Then you"),
    ]
    assert task["result_urls"] == [store["url"]]
    assert Path(task["audio_file"]).read_bytes() == MP3
    assert Path(task["audio_file"]).is_relative_to(store["data_dir"].resolve())
    # the record holds our callback URL, but its token is never shown
    assert CALLBACK_TOKEN not in result.stdout
    assert "token=<redacted>" in task["raw_record"]["param"]

    result = run("tasks", "show", SUCCESS_ID)
    assert result.exit_code == 0, result.output
    text = words(result.stdout)
    assert "state: success" in text and "dialogue (4 turns)" in text
    # dialogue tags like [laughs] are text, not terminal markup
    assert "Adam: Thanks, Rachel. [laughs] Webhooks are just HTTP callbacks, really." in text
    assert f"result url: {store['url']}" in text and ".mp3" in text
    assert CALLBACK_TOKEN not in result.stdout

    failed = words(run("tasks", "show", FAIL_ID).stdout)
    assert "state: fail" in failed and "fail_code: 500" in failed

    result = run("tasks", "show", "no-such-task")
    assert result.exit_code == 1
    assert "no kie.ai task with id 'no-such-task'" in words(result.output)
