"""Issue 14, the commands as a newcomer meets them: literal output, one-line errors, no stores
created by accident, the small things (version, .env, completion, 80 columns), and retention.

Commands run through the real ``main()`` (the console script's entry) or typer's CliRunner,
against real SQLite files and, where the store matters, the throwaway Postgres too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from receiver.cli.main import app, main
from receiver.events import PermanentFailure
from receiver.inbox import IncomingDelivery
from receiver.registry import HandlerSpec, Registry, load_registry
from receiver.retention import prune
from receiver.service import Services
from receiver.sources.base import Authenticity, Identity
from receiver.store.models import Delivery
from receiver.store.types import utcnow
from tests.conftest import event_body, make_settings

runner = CliRunner()
MARKUP_ID = "conv-[/]-[bold red]x[/bold red]"
DEDUPE_KEY = "post_call_audio:abc:1739537319"  # the docs' key; :abc: is an emoji code in rich


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No VOICEHOOKS_ setting from the caller's environment, and an empty working directory."""
    for name in list(os.environ):
        if name.startswith("VOICEHOOKS_"):
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


def use_store(monkeypatch: pytest.MonkeyPatch, database_url: str, data_dir: Path) -> None:
    monkeypatch.setenv("VOICEHOOKS_DATABASE_URL", database_url)
    monkeypatch.setenv("VOICEHOOKS_DATA_DIR", str(data_dir))


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: Any, *args: str) -> tuple[int, str, str]:
    """``voicehooks ARGS`` through the console script's ``main()``: (status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["voicehooks", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def store_delivery(services: Services, identity: Identity, body: bytes, **fields: Any) -> int:
    incoming = IncomingDelivery(
        "elevenlabs", identity, Authenticity("hmac", 0), "0" * 64, len(body), body, **fields
    )
    return services.inbox.accept_now(incoming).delivery_id


# -- 2. nothing from a payload or the store is markup ------------------------------------------


def test_ids_with_markup_and_emoji_codes_print_literally(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'vh.db'}", tmp_path / "data")
    services = Services.create(settings, load_registry())
    services.migrate()
    body = event_body(conversation_id=MARKUP_ID)
    store_delivery(services, Identity("post_call_transcription", "k", MARKUP_ID), body)
    store_delivery(services, Identity("post_call_audio", DEDUPE_KEY, MARKUP_ID), b"{}")
    asyncio.run(services.worker.drain())
    services.close()
    use_store(monkeypatch, settings.database_url, tmp_path / "data")

    for args in (
        ["deliveries", "list"],
        ["deliveries", "show", "2"],
        ["conversations", "list"],
        ["conversations", "show", MARKUP_ID],
    ):
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0, (args, result.output)
        assert MARKUP_ID in result.output, (args, result.output)
    shown = runner.invoke(app, ["deliveries", "show", "2"], env={"COLUMNS": "200"}).output
    assert DEDUPE_KEY in shown  # not "post_call_audio🔤1739537319"


# -- 3. every bad setting: one line naming it, exit 2; an unreachable database: exit 1 ---------

BAD_SETTINGS = [
    ("VOICEHOOKS_DATABASE_URL", "garbage", "not a database URL"),
    ("VOICEHOOKS_DATABASE_URL", "postgres://u:hunter2@127.0.0.1/db", "unknown database"),
    ("VOICEHOOKS_LOG_LEVEL", "garbage", "must be one of debug"),
    ("VOICEHOOKS_PLUGINS", "nosuchmodule", "No module named 'nosuchmodule'"),
    ("VOICEHOOKS_MAX_BODY_BYTES", "-1", "greater than or equal to 1"),
    ("VOICEHOOKS_WORKER_CONCURRENCY", "0", "greater than or equal to 1"),
    ("VOICEHOOKS_RETENTION_DAYS", "-3", "greater than 0"),
]


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["deliveries", "list"]])
@pytest.mark.parametrize(("name", "value", "rule"), BAD_SETTINGS)
def test_a_bad_setting_is_one_line_and_exit_2(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    command: list[str],
    name: str,
    value: str,
    rule: str,
) -> None:
    monkeypatch.setenv("VOICEHOOKS_DATABASE_URL", "sqlite:///vh.db")
    monkeypatch.setenv(name, value)
    code, out, err = run_main(monkeypatch, capsys, *command)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    setting = "VOICEHOOKS_PLUGINS" if name == "VOICEHOOKS_PLUGINS" else name
    assert rule in lines[0] and (setting in lines[0] or "'nosuchmodule'" in lines[0]), lines[0]
    assert "hunter2" not in err + out
    assert not (clean_env / "vh.db").exists()


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["deliveries", "list"]])
def test_an_unusable_data_dir_is_one_line_and_exit_2(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, command: list[str]
) -> None:
    (clean_env / "vh.db").touch()
    blocker = clean_env / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("VOICEHOOKS_DATABASE_URL", "sqlite:///vh.db")
    monkeypatch.setenv("VOICEHOOKS_DATA_DIR", str(blocker / "data"))
    code, _, err = run_main(monkeypatch, capsys, *command)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "VOICEHOOKS_DATA_DIR" in line and str(blocker / "data") in line


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["deliveries", "list"]])
def test_an_unreachable_database_is_one_line_exit_1_without_the_password(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, command: list[str]
) -> None:
    from tests.conftest import free_port

    url = f"postgresql+psycopg://vh:hunter2@127.0.0.1:{free_port()}/vh"
    monkeypatch.setenv("VOICEHOOKS_DATABASE_URL", url)
    monkeypatch.setenv("VOICEHOOKS_DATA_DIR", str(clean_env / "data"))
    code, out, err = run_main(monkeypatch, capsys, *command)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert "cannot use the database postgresql+psycopg://vh:***@127.0.0.1" in line
    assert "Connection refused" in line
    assert "hunter2" not in out + err


# -- 4. admin commands never create a store ----------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["deliveries", "list"],
        ["deliveries", "show", "1"],
        ["conversations", "list"],
        ["tasks", "list"],
        ["prune", "--older-than", "30"],
    ],
)
def test_admin_commands_say_where_they_looked_and_create_nothing(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    result = runner.invoke(app, command, env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert f"no store at {clean_env / 'voicehooks.db'}" in result.output
    assert list(clean_env.iterdir()) == []  # no database file, no data directory


def test_migrate_creates_the_store_that_admin_commands_then_open(clean_env: Path) -> None:
    assert runner.invoke(app, ["migrate"]).exit_code == 0
    result = runner.invoke(app, ["deliveries", "list", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []


# -- 6. no Alembic chatter on commands ---------------------------------------------------------


def test_commands_print_no_alembic_lines(clean_env: Path) -> None:
    result = runner.invoke(app, ["migrate"])
    assert result.output.strip() == "database is up to date"


# -- 10. the small things ----------------------------------------------------------------------


def test_version(clean_env: Path) -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"voicehooks {version('voicehooks')}"


def test_shell_completion_is_offered(clean_env: Path) -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert "--install-completion" in result.output and "--show-completion" in result.output


def test_a_dotenv_file_in_the_working_directory_is_read(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    (clean_env / ".env").write_text("VOICEHOOKS_DATABASE_URL=sqlite:///from-dotenv.db\n")
    assert runner.invoke(app, ["migrate"]).exit_code == 0
    assert (clean_env / "from-dotenv.db").exists()
    # ... and its values are checked like the environment's.
    (clean_env / ".env").write_text("VOICEHOOKS_JOB_MAX_ATTEMPTS=0\n")
    code, _, err = run_main(monkeypatch, capsys, "deliveries", "list")
    assert code == 2 and "VOICEHOOKS_JOB_MAX_ATTEMPTS" in err


def cell_text(output: str, column: int) -> str:
    """Column ``column`` of a rich table's body rows, the folded pieces joined."""
    rows = [line for line in output.splitlines() if line.startswith("│")]
    return "".join(line.split("│")[column + 1].strip() for line in rows)


def test_output_fits_80_columns_and_never_cuts_ids(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_id = "conv_" + "0123456789abcdef" * 4
    settings = make_settings(f"sqlite:///{tmp_path / 'vh.db'}", tmp_path / "data")
    services = Services.create(settings, load_registry())
    services.migrate()
    body = event_body(conversation_id=long_id)
    store_delivery(services, Identity("post_call_transcription", "k1", long_id), body)
    asyncio.run(services.worker.drain())
    services.close()
    use_store(monkeypatch, settings.database_url, tmp_path / "data")
    for command, column in ((["deliveries", "list"], 4), (["conversations", "list"], 0)):
        result = runner.invoke(app, command, env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.output.splitlines()) <= 80, result.output
        assert "…" not in result.output
        assert cell_text(result.output, column) == long_id, result.output


# -- 10. prune and retention -------------------------------------------------------------------


def _noop(event: Any, ctx: Any) -> None:
    return None


def _dies(event: Any, ctx: Any) -> None:
    raise PermanentFailure("kept for a replay")


RETENTION_REGISTRY = Registry.of(
    [HandlerSpec("elevenlabs", "ok", _noop), HandlerSpec("elevenlabs", "bad", _dies)]
)


def age(services: Services, delivery_id: int, days: float) -> None:
    with services.engine.begin() as conn:
        conn.execute(
            update(Delivery.__table__)  # type: ignore[attr-defined]
            .where(Delivery.__table__.c.id == delivery_id)  # type: ignore[attr-defined]
            .values(received_at=utcnow() - timedelta(days=days))
        )


def old_store(database_url: str, data_dir: Path) -> tuple[Services, dict[str, Any]]:
    """Deliveries of every kind prune must tell apart, all but one more than 40 days old."""
    settings = make_settings(database_url, data_dir)
    services = Services.create(settings, RETENTION_REGISTRY)
    services.migrate()
    blobs = services.blobs

    def blob(content: bytes, suffix: str) -> str:
        with blobs.writer(suffix) as writer:
            writer.write(content)
            return writer.commit()

    shared = blob(b'{"big": "body shared by two deliveries"}', ".body")
    own = blob(b'{"big": "body of one old delivery"}', ".body")
    handler_audio = blob(b"ID3 call audio a handler stored", ".mp3")
    ids = {
        "old_shared": store_delivery(services, Identity("ok", "a", "s1"), b"", blob_path=shared),
        "new_shared": store_delivery(services, Identity("ok", "b", "s2"), b"", blob_path=shared),
        "old_own": store_delivery(services, Identity("ok", "c", "s3"), b"", blob_path=own),
        "old_inline": store_delivery(services, Identity("ok", "d", "s4"), b'{"inline": 1}'),
        "old_dead": store_delivery(services, Identity("bad", "e", "s5"), b'{"dead": 1}'),
    }
    asyncio.run(services.worker.drain())
    for name, delivery_id in ids.items():
        if name != "new_shared":
            age(services, delivery_id, 40)
    paths = {"shared": shared, "own": own, "handler_audio": handler_audio}
    return services, {"ids": ids, "paths": paths}


def delivery_rows(services: Services) -> dict[int, Any]:
    with services.engine.connect() as conn:
        rows = conn.execute(select(Delivery.__table__)).all()  # type: ignore[attr-defined]
    return {row.id: row for row in rows}


def test_prune_forgets_old_finished_bodies_and_keeps_rows_and_handler_data(
    database_url: str, tmp_path: Path
) -> None:
    services, store = old_store(database_url, tmp_path / "data")
    ids, paths = store["ids"], store["paths"]
    before = delivery_rows(services)

    dry = prune(services.engine, services.blobs, 30, dry_run=True)
    assert (dry.deliveries, dry.blob_paths) == (3, [paths["own"]])
    assert delivery_rows(services) == before

    result = prune(services.engine, services.blobs, 30)
    assert result.deliveries == 3 and result.blob_paths == [paths["own"]]
    rows = delivery_rows(services)
    assert len(rows) == 5  # every row kept
    for name in ("old_shared", "old_own", "old_inline"):
        row = rows[ids[name]]
        assert row.pruned_at is not None and row.body is None and row.blob_path is None
    for name in ("new_shared", "old_dead"):  # too recent; a dead job still needs its body
        assert rows[ids[name]].pruned_at is None
    assert rows[ids["old_dead"]].body == b'{"dead": 1}'
    assert not services.blobs.path(paths["own"]).exists()
    assert services.blobs.path(paths["shared"]).exists()  # new_shared still refers to it
    assert services.blobs.path(paths["handler_audio"]).exists()  # what handlers stored
    assert prune(services.engine, services.blobs, 30).deliveries == 0  # idempotent
    services.close()


def test_prune_command(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services, store = old_store(f"sqlite:///{tmp_path / 'vh.db'}", tmp_path / "data")
    services.close()
    use_store(monkeypatch, f"sqlite:///{tmp_path / 'vh.db'}", tmp_path / "data")
    dry = runner.invoke(app, ["prune", "--older-than", "30", "--dry-run"])
    assert dry.exit_code == 0 and dry.output.startswith("would prune 3 delivery bodies")
    done = runner.invoke(app, ["prune", "--older-than", "30", "--json"])
    assert json.loads(done.stdout) == {"dry_run": False, "deliveries": 3, "bytes": 13, "blobs": 1}
    shown = runner.invoke(app, ["deliveries", "show", str(store["ids"]["old_own"]), "--json"])
    assert json.loads(shown.stdout)["body_stored"] == "pruned"
    exported = runner.invoke(
        app, ["deliveries", "export", str(store["ids"]["old_own"]), "-o", str(tmp_path / "x")]
    )
    assert exported.exit_code == 1 and "its body was pruned on" in exported.output
    again = runner.invoke(app, ["prune", "--older-than", "30"])
    assert re.match(r"pruned 0 delivery bodies", again.output)


def test_retention_setting_prunes_inside_serve(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import wait_until
    from tests.serverproc import ServerProcess

    services, store = old_store(database_url, tmp_path / "data")
    server = ServerProcess(database_url, tmp_path / "data", VOICEHOOKS_RETENTION_DAYS="30")
    server.start()
    try:
        wait_until(lambda: delivery_rows(services)[store["ids"]["old_own"]].pruned_at, 30)
    finally:
        server.stop()
    rows = delivery_rows(services)
    assert rows[store["ids"]["new_shared"]].pruned_at is None
    assert rows[store["ids"]["old_dead"]].pruned_at is None
    services.close()


def test_the_license_file_matches_pyproject() -> None:
    import tomllib

    from tests.conftest import ROOT

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
