"""`voicehooks demo`, run for real: a throwaway receiver, every bundled fixture, the handlers,
the report, and the clean-up; and a failing run when a handler fails unexpectedly."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from receiver.cli.main import app as cli_app
from tests.conftest import FIXTURES, ROOT


def run_demo(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEHOOKS_")}
    env |= {"COLUMNS": "220", "PYTHONPATH": str(ROOT), **settings}
    return subprocess.run(
        [sys.executable, "-m", "receiver", "demo", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rows_with(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


def test_demo_end_to_end() -> None:
    done = run_demo()
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    fixtures = sorted(p for p in FIXTURES.rglob("*.json"))
    # Every fixture acknowledged (one is sent twice); the doc examples' twins are duplicates.
    assert f"{len(fixtures) + 1} of {len(fixtures) + 1} acknowledged" in out
    twilio = rows_with(out, "call_initiation_failure_twilio.json: same event as")
    assert twilio and "call_initiation_failure_sip.json" in twilio[0]
    # What the handlers stored, read back from the store.
    size = (FIXTURES / "audio" / "hello.mp3").stat().st_size
    assert f"{size:,} B mp3" in rows_with(out, "conv_fixture_0001")[0]
    success = rows_with(out, "5f1c0a9e3b7d4c2a8e6f1b0d9c8a7e01")[0]
    assert "success" in success and "audio/mpeg" in success  # downloaded from the local server
    failed = rows_with(out, "9d2e4b6a8c0f1e3d5b7a9c1e3f5d7b02")[0]
    assert "fail" in failed
    assert rows_with(out, "voice_removed")
    assert re.search(r"abc\W+busy\W+sip\W+486", out)
    # The doc's invalid base64 audio is the one dead job, and it is labelled as expected.
    assert "Dead jobs (1)" in out
    assert "EXPECTED: the docs' example elides the MP3" in out
    assert "not valid base64" in out
    assert "Everything expected happened." in out
    # The temporary store is gone.
    workdir = re.search(r"SQLite store in (\S+)", out)
    assert workdir is not None and not Path(workdir.group(1)).exists()


def test_demo_is_self_contained_whatever_the_environment_configures() -> None:
    """A user's provider keys and periodic tasks must not reach the throwaway receiver: with a
    kie.ai key it would confirm the fixtures' callbacks against the real API (and fail)."""
    done = run_demo(
        VOICEHOOKS_KIE_API_KEY="a-real-looking-key",
        VOICEHOOKS_ELEVENLABS_API_KEY="another-key",
        VOICEHOOKS_ELEVENLABS_RECONCILE_SECONDS="60",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Everything expected happened." in done.stdout


def test_demo_fails_on_an_unexpected_dead_job(tmp_path: Path) -> None:
    fixtures = tmp_path / "fixtures"
    (fixtures / "kie").mkdir(parents=True)
    shutil.copytree(FIXTURES / "audio", fixtures / "audio")
    success = (FIXTURES / "kie" / "success.json").read_text()
    (fixtures / "kie" / "success.json").write_text(success)
    gone = success.replace("5f1c0a9e3b7d4c2a8e6f1b0d9c8a7e01", "0" * 32).replace(".mp3", ".wav")
    (fixtures / "kie" / "gone.json").write_text(gone)

    done = run_demo("--fixtures", str(fixtures), "--timeout", "30")
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "Not everything went as expected" in out and "UNEXPECTED" in out
    assert re.search(r"kie/gone\.json: \S+ failed: kie task 0{32}: the result URL", out)
    assert rows_with(out, "5f1c0a9e3b7d4c2a8e6f1b0d9c8a7e01")  # the good one still worked


def test_demo_without_fixtures_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("receiver.demo.find_fixtures", lambda: None)
    result = CliRunner().invoke(cli_app, ["demo"])
    assert result.exit_code == 1
    assert "fixtures are not installed with this package" in " ".join(result.output.split())
