"""Third-party handlers: found through the entry-point group and through VOICEHOOKS_PLUGINS."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.registry import PluginError, load_registry
from tests.conftest import ROOT, event_body, pip_install_into, wait_until
from tests.serverproc import ServerProcess


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install tests/plugin_pkg into its own directory (a real install with dist-info)."""
    return pip_install_into(ROOT / "tests" / "plugin_pkg", tmp_path_factory.mktemp("site"))


def test_entry_point_plugin_is_called_by_a_real_receiver(
    installed_plugin: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "calls.txt"
    server = ServerProcess(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        tmp_path / "data",
        PYTHONPATH=str(installed_plugin),
        VH_PLUGIN_MARKER=str(marker),
    )
    server.start()
    try:
        import httpx

        from receiver.sources.elevenlabs import sign
        from tests.conftest import SECRET

        body = event_body(conversation_id="plugin-conv")
        response = httpx.post(
            f"{server.url}/webhooks/elevenlabs",
            content=body,
            headers={"ElevenLabs-Signature": sign(SECRET, body)},
        )
        assert response.status_code == 200
        wait_until(lambda: marker.exists() and marker.read_text())
    finally:
        server.stop()
    delivery_id = response.json()["delivery_id"]
    assert marker.read_text() == f"{delivery_id} plugin-conv agent-1\n"


def test_plugins_setting_imports_named_modules() -> None:
    for reference in ("tests.plugins_inline", "tests.plugins_inline:blueprint"):
        registry = load_registry([reference], use_entry_points=False)
        (spec,) = registry.handlers_for("elevenlabs", "plugin_probe")
        assert spec.name == "tests.plugins_inline:slow_ack"


def test_a_missing_plugin_is_reported_by_name() -> None:
    with pytest.raises(PluginError, match="cannot load handler plugin 'no_such_module:x'"):
        load_registry(["no_such_module:x"], use_entry_points=False)
    with pytest.raises(PluginError, match="is not a voicehooks Blueprint"):
        load_registry(["tests.plugins_inline:slow_ack"], use_entry_points=False)
