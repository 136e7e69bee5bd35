"""Issue 14.9: a kie.ai task is shown by ``voicehooks tasks`` from its first stored callback,
whatever happens to the download, with the callback's result URLs and the download's error.

The result audio is served (or refused) by the loopback file host of the kie handler tests; the
real handler runs through the real worker; the CLI opens the store from the environment.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from typer.testing import CliRunner

from receiver.cli.main import app
from tests import test_kie_handler as handler_tests
from tests.test_kie_handler import REGISTRY, Reply, body_with, deliver, drain
from tests.test_kie_source import SUCCESS_ID, kie_settings

runner = CliRunner()
audio_server = handler_tests.audio_server  # the loopback file host, as a fixture here too
quick_retries = handler_tests.quick_retries


@pytest.fixture
def cli_store(monkeypatch: pytest.MonkeyPatch) -> Any:
    def use(database_url: str, data_dir: Any) -> None:
        for name in list(os.environ):
            if name.startswith("VOICEHOOKS_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("VOICEHOOKS_DATABASE_URL", database_url)
        monkeypatch.setenv("VOICEHOOKS_DATA_DIR", str(data_dir))

    return use


def shown(*args: str) -> str:
    result = runner.invoke(app, ["tasks", *args], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    ("reply", "job_status", "audio"),
    [
        (Reply(502, b"bad gateway", "text/plain"), "pending", "retrying"),  # retried later
        (Reply(410, b"gone", "text/plain"), "dead", "error"),  # expired: dead, row kept
    ],
)
def test_a_task_whose_download_fails_is_listed_with_its_urls_and_the_error(  # type: ignore[no-untyped-def]
    database_url, tmp_path, services_factory, audio_server, cli_store, reply, job_status, audio
) -> None:
    settings = kie_settings(
        database_url, tmp_path / "data", job_retry_base_seconds=60, job_retry_max_seconds=60
    )
    services = services_factory(settings, REGISTRY)
    url = audio_server.route("/result.mp3", reply)
    deliver(services, body_with("success", [url]))
    drain(services)
    cli_store(database_url, tmp_path / "data")

    (task,) = json.loads(shown("list", "--json"))
    assert task["task_id"] == SUCCESS_ID and task["state"] == "success"
    assert task["result_urls"] == [url]
    assert str(reply.status) in task["audio_error"]
    listed = shown("list")
    assert SUCCESS_ID in listed and audio in listed

    detail = json.loads(shown("show", SUCCESS_ID, "--json"))
    assert detail["result_urls"] == [url] and detail["audio_error"] == task["audio_error"]
    text = shown("show", SUCCESS_ID)
    assert f"result url: {url}" in text
    assert f"HTTP {reply.status}" in text
    if job_status == "pending":
        assert detail["job_status"] == "pending"


def test_a_task_recorded_later_is_listed_once(  # type: ignore[no-untyped-def]
    tmp_path, services_factory, audio_server, cli_store
) -> None:
    url = f"sqlite:///{tmp_path / 'kie.db'}"
    services = services_factory(kie_settings(url, tmp_path / "data"), REGISTRY)
    audio = audio_server.route("/ok.mp3", Reply(503, b"busy", "text/plain"), Reply())
    deliver(services, body_with("success", [audio]))
    drain(services)  # 503 then the audio, retried in place: recorded, job done
    cli_store(url, tmp_path / "data")
    tasks = json.loads(shown("list", "--json"))
    assert [t["task_id"] for t in tasks] == [SUCCESS_ID]
    assert tasks[0]["audio_blob_path"] and "job_status" not in tasks[0]
