"""``voicehooks conversations list|show`` over a store filled through the real ingest path."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from receiver.cli.main import app
from tests.conftest import FIXTURES, event_body, fixture_bytes
from tests.test_elevenlabs_handlers import REGISTRY

HELLO_MP3 = (FIXTURES / "audio" / "hello.mp3").read_bytes()
MARKUP = "[bold red]not markup[/bold red] [link=https://x.example]"


@pytest.fixture
def filled(settings, services_factory, live_server):  # type: ignore[no-untyped-def]
    """Three transcribed conversations (one with audio), one audio-only, one with markup text."""
    server = live_server(services_factory(settings, REGISTRY), run_worker=False)
    bodies = [
        fixture_bytes("elevenlabs/transcription_tool_calls.json"),
        fixture_bytes("elevenlabs/transcription_minimal.json"),
        fixture_bytes("elevenlabs/transcription_extra_fields.json"),
        fixture_bytes("elevenlabs/post_call_audio.json"),
        event_body(
            "post_call_audio",
            conversation_id="conv-audio-only",
            full_audio=base64.b64encode(HELLO_MP3).decode(),
        ),
        event_body(
            conversation_id="conv-markup",
            status="done",
            transcript=[{"role": "user", "message": MARKUP, "time_in_call_secs": 1}],
            metadata={"start_time_unix_secs": 1700000000, "call_duration_secs": 3},
        ),
    ]
    for body in bodies:
        assert server.post_signed(body).status_code == 200
    asyncio.run(server.services.worker.drain())
    return settings


@pytest.fixture
def cli(filled):  # type: ignore[no-untyped-def]
    """Run the CLI against the filled store, the way an operator would (environment only)."""
    runner = CliRunner()
    env = {
        "VOICEHOOKS_DATABASE_URL": filled.database_url,
        "VOICEHOOKS_DATA_DIR": str(filled.data_dir),
        "COLUMNS": "300",
    }

    def invoke(*args: str) -> Any:
        return runner.invoke(app, list(args), env=env)

    return invoke


def as_json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_is_newest_first_with_outcome_and_audio_as_json_and_table(cli) -> None:  # type: ignore[no-untyped-def]
    rows = as_json(cli("conversations", "list", "--json"))
    # The audio-only row has no call start yet, so it sorts by when it arrived: now, the newest.
    assert [r["conversation_id"] for r in rows] == [
        "conv-audio-only",
        "conv_fixture_0003",
        "conv_fixture_0002",
        "conv_fixture_0001",
        "conv-markup",
    ]
    by_id = {r["conversation_id"]: r for r in rows}
    assert by_id["conv_fixture_0001"] == {
        "conversation_id": "conv_fixture_0001",
        "agent_id": "agent_fixture",
        "status": "done",
        "start_time": "2025-10-09T08:53:20+00:00",
        "duration_secs": 29.0,
        "call_successful": "success",
        "turns": 8,
        "audio": True,
    }
    assert by_id["conv-audio-only"]["status"] is None and by_id["conv-audio-only"]["audio"]
    assert by_id["conv-audio-only"]["turns"] == 0
    assert not by_id["conv_fixture_0002"]["audio"]
    assert by_id["conv_fixture_0003"]["call_successful"] == "unknown"

    limited = as_json(cli("conversations", "list", "--limit", "2", "--json"))
    assert [r["conversation_id"] for r in limited] == ["conv-audio-only", "conv_fixture_0003"]
    assert as_json(cli("conversations", "list", "--agent", "agent-1", "--json")) == [
        {**by_id["conv-audio-only"]},
        {**by_id["conv-markup"]},
    ]

    result = cli("conversations", "list")
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "2025-10-09 08:53:20" in lines["conv_fixture_0001"]
    assert "0:29" in lines["conv_fixture_0001"] and "yes" in lines["conv_fixture_0001"]
    assert "unknown" in lines["conv-audio-only"] and "yes" in lines["conv-audio-only"]
    assert lines["conv_fixture_0002"].rstrip("│ ").endswith("no")


def test_show_gives_analysis_transcript_and_audio_as_json_and_dialogue(cli, filled) -> None:  # type: ignore[no-untyped-def]
    info = as_json(cli("conversations", "show", "conv_fixture_0001", "--json"))
    document = json.loads(fixture_bytes("elevenlabs/transcription_tool_calls.json"))
    data = document["data"]
    assert info["agent_id"] == "agent_fixture" and info["user_id"] == "user_fixture_42"
    assert info["transcript_summary"] == data["analysis"]["transcript_summary"]
    assert (
        info["dynamic_variables"]
        == data["conversation_initiation_client_data"]["dynamic_variables"]
    )
    assert {e["criteria_id"]: e["result"] for e in info["evaluations"]} == {
        key: value["result"]
        for key, value in data["analysis"]["evaluation_criteria_results"].items()
    }
    assert {d["field_id"]: d["value"] for d in info["data_collection"]} == {
        key: value["value"] for key, value in data["analysis"]["data_collection_results"].items()
    }
    assert [(t["role"], t["message"]) for t in info["transcript"]] == [
        (t["role"], t["message"]) for t in data["transcript"]
    ]
    tool_names = [c["tool_name"] for t in info["transcript"] for c in t["tool_calls"]]
    assert "check_availability" in tool_names
    assert info["data"] == data

    audio = info["audio"]
    assert audio["stored"] is True and audio["size"] == len(HELLO_MP3)
    with open(audio["path"], "rb") as fh:
        assert fh.read() == HELLO_MP3
    assert audio["path"].startswith(str(filled.data_dir.resolve()))

    bare = as_json(cli("conversations", "show", "conv_fixture_0002", "--json"))
    assert bare["audio"] == {"stored": False}
    assert bare["evaluations"] == [] and bare["data_collection"] == []

    result = cli("conversations", "show", "conv_fixture_0001")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Conversation conv_fixture_0001" in out
    assert "Appointment moved to Friday 14:30" in out  # the summary's title
    assert "0:00 Agent Hi, this is Ava from Downtown Dental." in out
    assert "0:04 User  Yes, hi. I need to move my Wednesday appointment to Friday." in out
    assert '↳ calls check_availability {"date": "2025-10-10", "duration_minutes": 30}' in out
    assert "↳ check_availability returned" in out and "(0.41 s)" in out
    assert "failed:" in out  # the client tool result with is_error
    assert f"stored, {len(HELLO_MP3):,} bytes: /" in out and ".mp3" in out

    markup = cli("conversations", "show", "conv-markup")
    assert MARKUP in markup.stdout  # transcript text is printed as text, never as markup
    assert "not stored" in markup.stdout

    missing = cli("conversations", "show", "no-such-conversation", "--json")
    assert missing.exit_code == 1
    assert "no conversation with id no-such-conversation" in missing.stderr
    assert missing.stdout == ""
