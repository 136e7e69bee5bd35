"""`voicehooks migrate` and `voicehooks deliveries list|show|retry`, with --json for scripts."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from receiver.cli.main import app
from receiver.inbox import IncomingDelivery
from receiver.registry import HandlerSpec, Registry
from receiver.service import Services
from receiver.sources.base import Authenticity, Identity
from tests.conftest import make_settings


def _boom(event, ctx) -> None:  # type: ignore[no-untyped-def]
    raise RuntimeError("handler bug")


@pytest.fixture
def cli_env(database_url, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VOICEHOOKS_DATABASE_URL", database_url)
    monkeypatch.setenv("VOICEHOOKS_DATA_DIR", str(tmp_path / "data"))
    return make_settings(database_url, tmp_path / "data")


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_deliveries_commands(cli_env) -> None:  # type: ignore[no-untyped-def]
    assert "up to date" in run("migrate")
    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", _boom)])
    services = Services.create(cli_env, registry)
    services.settings.job_max_attempts = 1
    incoming = IncomingDelivery(
        "elevenlabs",
        Identity("post_call_transcription", "k", "conv-9"),
        Authenticity("hmac", 0),
        "ab" * 32,
        2,
        body=b"{}",
    )
    delivery_id = services.inbox.accept_now(incoming).delivery_id
    import asyncio

    asyncio.run(services.worker.drain())
    services.close()

    listed = json.loads(run("deliveries", "list", "--json"))
    assert [(d["id"], d["subject_id"], d["status"]) for d in listed] == [
        (delivery_id, "conv-9", "dead")
    ]
    assert json.loads(run("deliveries", "list", "--status", "done", "--json")) == []
    shown = json.loads(run("deliveries", "show", str(delivery_id), "--json"))
    assert shown["jobs"][0]["last_error"] == "RuntimeError: handler bug"
    assert "lease_token" not in shown["jobs"][0]
    assert "conv-9" in run("deliveries", "list")  # the human table

    assert json.loads(run("deliveries", "retry", "--dead", "--json")) == {"requeued": 1}
    listed = json.loads(run("deliveries", "list", "--json"))
    assert listed[0]["status"] == "pending"


def test_show_unknown_delivery_is_a_clear_error(cli_env) -> None:  # type: ignore[no-untyped-def]
    run("migrate")  # admin commands never create the store themselves (#14.4)
    result = CliRunner().invoke(app, ["deliveries", "show", "999"])
    assert result.exit_code == 1
    assert "no delivery with id 999" in result.output
    assert "Traceback" not in result.output


def test_invalid_setting_is_named_without_a_traceback_or_its_value(
    tmp_path, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    from receiver.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VOICEHOOKS_DB_POOL_SIZE", "0")
    monkeypatch.setenv("VOICEHOOKS_ELEVENLABS_SECRETS", "wsec_do_not_print_me")
    monkeypatch.setattr("sys.argv", ["voicehooks", "deliveries", "list"])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "VOICEHOOKS_DB_POOL_SIZE" in err and "greater than or equal to 1" in err
    assert "Traceback" not in err and "wsec_do_not_print_me" not in err


def test_pool_size_setting_sizes_the_connection_pool(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path / "data", db_pool_size=3)
    services = Services.create(settings, Registry())
    try:
        assert services.engine.pool.size() == 3  # type: ignore[attr-defined]
    finally:
        services.close()
