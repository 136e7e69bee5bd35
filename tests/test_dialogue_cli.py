"""Issue 11, item 3: ``voicehooks dialogue submit|list|show`` as a user runs them, one real
render per provider against the local fakes (``--wait`` runs the work in-process when no
worker runs against the store)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from receiver.cli.main import app
from tests.dialogue_support import write_script
from tests.fakes.elevenlabs_dialogue import ElevenLabsDialogueFake
from tests.fakes.kie_api import KieFake
from tests.fakes.scripted import MP3, MP3_FORMAT, serving
from tests.fakes.sonna_api import SonnaFake

SHA = hashlib.sha256(MP3).hexdigest()


def base_env(tmp_path: Path) -> dict[str, str]:
    return {
        "VOICEHOOKS_DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}",
        "VOICEHOOKS_DATA_DIR": str(tmp_path / "data"),
        "VOICEHOOKS_FETCH_ALLOW_PRIVATE": "true",
        "VOICEHOOKS_KIE_POLL_SECONDS": "0.2",
        "VOICEHOOKS_JOB_RETRY_BASE_SECONDS": "0.01",
    }


def run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("provider", ["kie", "elevenlabs", "sonna"])
def test_submit_wait_json_then_show_and_list(tmp_path: Path, provider: str) -> None:
    kie, eleven, sonna = (
        KieFake(call_back=False, polls_before_final=1),
        ElevenLabsDialogueFake(),
        SonnaFake(),
    )
    with (
        serving(kie.app()) as kie_url,
        serving(eleven.app()) as el_url,
        serving(sonna.app()) as sonna_url,
    ):
        kie.base_url, sonna.base_url = kie_url, sonna_url
        env = base_env(tmp_path) | {
            "VOICEHOOKS_KIE_API_KEY": kie.api_key,
            "VOICEHOOKS_KIE_BASE_URL": kie_url,
            "VOICEHOOKS_ELEVENLABS_API_KEY": eleven.api_key,
            "VOICEHOOKS_ELEVENLABS_BASE_URL": el_url,
            "VOICEHOOKS_SONNA_API_KEY": sonna.api_key,
            "VOICEHOOKS_SONNA_BASE_URL": sonna_url,
        }
        script = write_script(tmp_path, output_format=MP3_FORMAT)
        code, out, err = run(
            ["dialogue", "submit", str(script), "-p", provider, "--wait", "--json"], env
        )
    assert code == 0, err
    waited = json.loads(out)
    assert waited["state"] == "succeeded" and waited["provider"] == provider
    code, out, _ = run(["dialogue", "show", str(waited["id"]), "--json"], env)
    shown = json.loads(out)
    assert code == 0
    assert (shown["provider"], shown["state"], shown["sha256"], shown["size"]) == (
        provider,
        "succeeded",
        SHA,
        len(MP3),
    )
    assert Path(shown["audio"]["file"]).read_bytes() == MP3
    assert shown["error"] is None
    if provider == "elevenlabs":
        assert [s["voice_id"] for s in shown["voice_segments"]] == ["Rachel", "Adam"]
    if provider == "kie":
        code, out, _ = run(["dialogue", "show", shown["task_id"], "--json"], env)
        assert json.loads(out)["id"] == shown["id"]
    code, out, _ = run(["dialogue", "list", "--json"], env)
    assert [r["id"] for r in json.loads(out)] == [shown["id"]]
    code, out, _ = run(["dialogue", "list"], env)
    assert code == 0 and provider in out and "succeeded" in out


def test_submit_json_without_wait_prints_the_id_and_leaves_the_job(tmp_path: Path) -> None:
    env = base_env(tmp_path) | {"VOICEHOOKS_SONNA_API_KEY": "k"}
    code, out, _ = run(
        ["dialogue", "submit", str(write_script(tmp_path)), "-p", "sonna", "--json"], env
    )
    assert code == 0
    submitted = json.loads(out)
    assert submitted == {"id": 1, "provider": "sonna", "state": "queued"}
    code, out, _ = run(["deliveries", "list", "--json"], env)
    (delivery,) = json.loads(out)
    assert delivery["source"] == "local" and delivery["status"] == "pending"


def test_a_failed_render_shows_its_error_and_exits_1(tmp_path: Path) -> None:
    sonna = SonnaFake()
    with serving(sonna.app()) as url:
        sonna.base_url = url
        env = base_env(tmp_path) | {
            "VOICEHOOKS_SONNA_API_KEY": "wrong-key",
            "VOICEHOOKS_SONNA_BASE_URL": url,
        }
        code, out, err = run(
            ["dialogue", "submit", str(write_script(tmp_path)), "-p", "sonna", "--wait"], env
        )
    assert code == 1
    assert "error: UNAUTHORIZED: Invalid or missing API key" in out
    assert "wrong-key" not in out + err
    code, out, _ = run(["dialogue", "show", "1", "--json"], env)
    assert json.loads(out)["error"] == {
        "code": "UNAUTHORIZED",
        "message": "Invalid or missing API key",
    }


def test_untrusted_text_is_never_markup(tmp_path: Path) -> None:
    env = base_env(tmp_path) | {"VOICEHOOKS_SONNA_API_KEY": "k"}
    script = write_script(tmp_path, title="[bold red]pwn[/] :smile:")
    run(["dialogue", "submit", str(script), "-p", "sonna"], env)
    code, out, _ = run(["dialogue", "show", "1"], env)
    assert code == 0 and "[bold red]pwn[/] :smile:" in out


def test_show_unknown_id_is_one_line(tmp_path: Path) -> None:
    assert run(["migrate"], base_env(tmp_path))[0] == 0  # `show` never creates a store
    code, out, err = run(["dialogue", "show", "nope"], base_env(tmp_path))
    assert code == 1 and (out + err).strip() == "error: no render with id or kie.ai taskId 'nope'"
