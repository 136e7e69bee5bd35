"""The structure's promises: the core knows no plugin, plugins arrive only through entry points,
and a provider written outside the repository works end to end."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import receiver
from receiver.registry import ENTRY_POINT_GROUP, PluginError, load_registry
from tests.conftest import ROOT, pip_install_into
from tests.serverproc import ServerProcess

RECEIVER = ROOT / "receiver"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_receiver_imports_nothing_from_handlers() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted(RECEIVER.rglob("*.py"))
        for name in _imported_modules(path)
        if name == "handlers" or name.startswith("handlers.")
    ]
    assert offenders == []


def test_importing_every_core_module_loads_no_plugin() -> None:
    """The same promise at run time (a dynamic import would slip past the source scan)."""
    script = (
        "import importlib, pkgutil, sys, receiver\n"
        "SKIP = {'receiver.__main__', 'receiver.cli.main'}\n"
        "for m in pkgutil.walk_packages(receiver.__path__, 'receiver.'):\n"
        "    if m.name not in SKIP and not m.name.startswith('receiver.store.migrations'):\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'handlers' or n.startswith('handlers.')))\n"
    )
    # Running ``__main__`` would run the CLI, and ``cli.main`` loads plugins' commands when it
    # builds the CLI (by design, through entry points); Alembic's scripts run only under Alembic.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_core_modules_have_no_import_cycle_through_the_cli() -> None:
    for module in pkgutil.walk_packages(receiver.__path__, "receiver."):
        if module.name.startswith("receiver.cli") and module.name != "receiver.cli.main":
            source = Path(importlib.util.find_spec(module.name).origin)  # type: ignore[union-attr, arg-type]
            assert "receiver.cli.main" not in _imported_modules(source), module.name


def _without_group(group: str) -> Any:
    real = importlib.metadata.entry_points

    def entry_points(**params: Any) -> Any:
        if params.get("group") == group:
            return importlib.metadata.EntryPoints(())
        return real(**params)

    return entry_points


def test_builtin_handlers_come_only_through_their_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = load_registry()
    names = {spec.name for spec in registry}
    assert "handlers.elevenlabs.transcription:store_transcription" in names
    assert "handlers.kie.dialogue:record_dialogue_task" in names
    # Importing the handler modules registers nothing: with the group gone, nothing is there.
    import handlers.elevenlabs  # noqa: F401

    monkeypatch.setattr("receiver.registry.entry_points", _without_group(ENTRY_POINT_GROUP))
    assert len(load_registry()) == 0


def test_a_broken_handler_entry_point_stops_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = importlib.metadata.EntryPoint(
        "broken", "handlers.elevenlabs:no_such_blueprint", ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(
        "receiver.registry.entry_points",
        lambda **params: importlib.metadata.EntryPoints((broken,)),
    )
    with pytest.raises(PluginError, match="cannot load handler plugin 'broken'"):
        load_registry()


@pytest.fixture(scope="module")
def installed_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install tests/source_pkg into a directory of its own (a real dist-info)."""
    return pip_install_into(ROOT / "tests" / "source_pkg", tmp_path_factory.mktemp("site"))


def test_an_out_of_tree_source_receives_and_replays(installed_source: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(installed_source), "VOICEHOOKS_ACME_SECRET": "acme-secret"}
    server = ServerProcess(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "data", **env)
    server.start()
    try:
        import hashlib
        import hmac

        body = b'{"event": "order.paid", "id": "o-1"}'
        signature = hmac.new(b"acme-secret", body, hashlib.sha256).hexdigest()
        direct = httpx.post(
            f"{server.url}/webhooks/acme", content=body, headers={"X-Acme-Signature": signature}
        )
        assert direct.status_code == 200, direct.text
        forged = httpx.post(
            f"{server.url}/webhooks/acme", content=body, headers={"X-Acme-Signature": "0" * 64}
        )
        assert forged.status_code == 401

        payload = tmp_path / "second.json"
        payload.write_bytes(b'{"event": "order.paid", "id": "o-2"}')
        replayed = subprocess.run(
            [
                sys.executable,
                "-m",
                "receiver",
                "replay",
                str(payload),
                "--source",
                "acme",
                "--url",
                server.url,
                "--json",
            ],
            capture_output=True,
            text=True,
            env={**server.env},
            cwd=ROOT,
        )
        assert replayed.returncode == 0, replayed.stderr
        (result,) = json.loads(replayed.stdout)
        assert result["source"] == "acme" and result["status_code"] == 200
        inferred = subprocess.run(
            [
                sys.executable,
                "-m",
                "receiver",
                "replay",
                str(payload),
                "--url",
                server.url,
                "--json",
            ],
            capture_output=True,
            text=True,
            env={**server.env},
            cwd=ROOT,
        )
        assert json.loads(inferred.stdout)[0]["duplicate"] is True, inferred.stderr
    finally:
        server.stop()
    listed = subprocess.run(
        [sys.executable, "-m", "receiver", "deliveries", "list", "--source", "acme", "--json"],
        capture_output=True,
        text=True,
        env={**server.env},
        cwd=ROOT,
        check=True,
    )
    subjects = sorted(row["subject_id"] for row in json.loads(listed.stdout))
    assert subjects == ["o-1", "o-2"]
