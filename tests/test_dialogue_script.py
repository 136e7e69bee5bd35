"""Issue 11, item 1 and 2: one script format, checked per provider before any network call.

Each refusal has a named code; ``voicehooks dialogue check`` and ``submit`` exit with status 2
and nothing reaches the provider (the local fakes count every request) or the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from handlers.dialogue.script import check, parse_script
from receiver.cli.main import app
from tests.conftest import make_settings
from tests.dialogue_support import build_services, script_doc, write_script
from tests.fakes.elevenlabs_dialogue import ElevenLabsDialogueFake
from tests.fakes.kie_api import KieFake
from tests.fakes.scripted import serving
from tests.fakes.sonna_api import SonnaFake


def codes(doc: dict[str, object], provider: str) -> list[str]:
    return [f.code for f in check(parse_script(doc), provider).errors]


def test_aliases_of_turns_are_one_format() -> None:
    turns = [{"text": "Hi", "voice": "Rachel"}]
    elevenlabs = parse_script({"inputs": [{"text": "Hi", "voice_id": "Rachel"}]})
    kie = parse_script({"dialogue": turns})
    assert parse_script({"turns": turns}) == elevenlabs == kie


@pytest.mark.parametrize("provider", ["kie", "elevenlabs", "sonna"])
def test_empty_turn_and_no_turns_are_refused_for_every_provider(provider: str) -> None:
    assert codes({"turns": []}, provider) == ["empty_turn"]
    assert codes({"turns": [{"text": "", "voice": "Rachel"}]}, provider) == ["empty_turn"]
    assert codes({"turns": [{"text": "Hi"}]}, provider) == ["empty_turn"]


def test_text_too_long_uses_each_providers_limit() -> None:
    def doc(chars: int) -> dict[str, object]:
        return {"turns": [{"text": "a" * chars, "voice": "Rachel"}]}

    assert codes(doc(2000), "sonna") == []
    assert codes(doc(2001), "sonna") == ["text_too_long"]
    assert codes(doc(5000), "kie") == []
    assert codes(doc(5001), "kie") == ["text_too_long"]
    # ElevenLabs: a warning (its docs advise 2,000 for reliable generation), not a refusal.
    checked = check(parse_script(doc(2001)), "elevenlabs")
    assert checked.ok and [w.code for w in checked.warnings] == ["text_too_long"]


def test_too_many_voices_for_sonna_and_elevenlabs_not_kie() -> None:
    doc = {"turns": [{"text": "hi", "voice": f"v{n}"} for n in range(11)]}
    assert codes(doc, "sonna") == ["too_many_voices"]
    assert codes(doc, "elevenlabs") == ["too_many_voices"]
    assert codes(doc, "kie") == []
    ten = {"turns": [{"text": "hi", "voice": f"v{n % 10}"} for n in range(30)]}
    assert codes(ten, "sonna") == []


def test_kie_stability_and_language_code() -> None:
    for good in (0, 0.5, 1):
        assert codes(script_doc(stability=good), "kie") == []
    assert codes(script_doc(stability=0.3), "kie") == ["invalid_stability"]
    assert codes(script_doc(stability="0.5"), "kie") == ["invalid_stability"]
    assert codes(script_doc(language_code="fil"), "kie") == []
    assert codes(script_doc(language_code="xx"), "kie") == ["invalid_language_code"]
    # Other providers do not take kie.ai's list.
    assert codes(script_doc(stability=0.3, language_code="xx"), "elevenlabs") == []


def test_elevenlabs_output_format_must_be_documented() -> None:
    assert codes(script_doc(output_format="mp3_44100_128"), "elevenlabs") == []
    assert codes(script_doc(output_format="mp3_44100_999"), "elevenlabs") == [
        "invalid_output_format"
    ]


@pytest.mark.parametrize(
    ("provider", "extra", "code"),
    [
        ("kie", {"stability": 0.7}, "invalid_stability"),
        ("elevenlabs", {"output_format": "flac"}, "invalid_output_format"),
        ("sonna", {"turns": [{"text": "a" * 2001, "voice": "Rachel"}]}, "text_too_long"),
    ],
)
def test_submit_refuses_with_exit_2_and_sends_nothing(
    tmp_path: Path, provider: str, extra: dict[str, object], code: str
) -> None:
    """The fakes are running and the keys are set: only the checks stand in the way."""
    kie, eleven, sonna = KieFake(), ElevenLabsDialogueFake(), SonnaFake()
    database = f"sqlite:///{tmp_path / 'v.db'}"
    with (
        serving(kie.app()) as kie_url,
        serving(eleven.app()) as el_url,
        serving(sonna.app()) as sonna_url,
    ):
        env = {
            "VOICEHOOKS_DATABASE_URL": database,
            "VOICEHOOKS_DATA_DIR": str(tmp_path / "data"),
            "VOICEHOOKS_KIE_API_KEY": kie.api_key,
            "VOICEHOOKS_KIE_BASE_URL": kie_url,
            "VOICEHOOKS_ELEVENLABS_API_KEY": eleven.api_key,
            "VOICEHOOKS_ELEVENLABS_BASE_URL": el_url,
            "VOICEHOOKS_SONNA_API_KEY": sonna.api_key,
            "VOICEHOOKS_SONNA_BASE_URL": sonna_url,
        }
        path = write_script(tmp_path, **extra)
        runner = CliRunner()
        checked = runner.invoke(app, ["dialogue", "check", str(path), "-p", provider], env=env)
        submitted = runner.invoke(
            app, ["dialogue", "submit", str(path), "-p", provider, "--wait"], env=env
        )
        as_json = runner.invoke(
            app, ["dialogue", "check", str(path), "-p", provider, "--json"], env=env
        )
    assert checked.exit_code == 2 and submitted.exit_code == 2, submitted.output
    assert f"error: {code}:" in checked.output and f"error: {code}:" in submitted.output
    assert json.loads(as_json.stdout)["errors"][0]["code"] == code
    assert kie.created == [] and eleven.requests == [] and sonna.requests == []
    services = build_services_plain(database, tmp_path)
    from handlers.dialogue import store

    assert store.list_renders(services.engine) == []
    services.close()


def build_services_plain(database: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    from receiver.registry import load_registry
    from receiver.service import Services

    services = Services.create(make_settings(database, tmp_path / "data"), load_registry())
    services.migrate()
    return services


def test_not_json_is_a_named_refusal_too(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    result = CliRunner().invoke(app, ["dialogue", "check", str(path), "-p", "sonna"])
    assert result.exit_code == 2
    assert "invalid_script" in result.output and "Traceback" not in result.output


def test_a_provider_without_its_key_refuses_to_submit_in_one_line(tmp_path: Path) -> None:
    path = write_script(tmp_path)
    env = {
        "VOICEHOOKS_DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}",
        "VOICEHOOKS_DATA_DIR": str(tmp_path / "data"),
        "VOICEHOOKS_SONNA_API_KEY": "",
    }
    result = CliRunner().invoke(app, ["dialogue", "submit", str(path), "-p", "sonna"], env=env)
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: VOICEHOOKS_SONNA_API_KEY is not set: cannot submit to sonna"
    )


__all__ = ["build_services"]
