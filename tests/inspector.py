"""A real receiver with the inspector: built-in handlers, an admin token, uvicorn on loopback.

Shared by the plain-HTTP tests (tests/test_ui_http.py) and the browser tests
(tests/test_ui_browser.py). The store is filled through the real ingest path (signed POSTs),
and the worker is drained by hand so a test decides when jobs run.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from receiver.cli.main import app as cli_app
from receiver.registry import load_registry
from tests.conftest import (
    FIXTURES,
    SECRET,
    LiveServer,
    event_body,
    fixture_bytes,
    make_settings,
)

TOKEN = "admin-token-for-the-inspector-tests"
KIE_KEY = "kie-hmac-key-for-the-inspector-tests"
HELLO_MP3 = (FIXTURES / "audio" / "hello.mp3").read_bytes()
XSS = "<img src=x onerror=alert(1)>"
# A post_call_audio whose full_audio is not base64: its job dies at once (PermanentFailure).
BROKEN_AUDIO = "elevenlabs/post_call_audio_doc_example.json"


@dataclass
class Inspector:
    server: LiveServer

    @property
    def url(self) -> str:
        return self.server.url

    def post(self, body: bytes) -> int:
        response = self.server.post_signed(body)
        assert response.status_code == 200, response.text
        return int(response.json()["delivery_id"])

    def replay(self, *paths: Path) -> None:
        """``voicehooks replay PATH... --url`` against this receiver, signed as providers do."""
        result = CliRunner().invoke(
            cli_app,
            ["replay", *map(str, paths), "--url", self.url],
            env={
                "VOICEHOOKS_ELEVENLABS_SECRETS": SECRET,
                "VOICEHOOKS_KIE_HMAC_KEYS": KIE_KEY,
                "VOICEHOOKS_DATA_DIR": str(self.server.services.settings.data_dir),
            },
        )
        assert result.exit_code == 0, result.output

    def drain(self) -> int:
        return asyncio.run(self.server.services.worker.drain())

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)


def start_inspector(database_url: str, tmp_path: Any, services_factory: Any, live_server: Any):  # type: ignore[no-untyped-def]
    settings = make_settings(
        database_url, tmp_path / "data", admin_token=TOKEN, kie_hmac_keys=[KIE_KEY]
    )
    services = services_factory(settings, load_registry())
    return Inspector(live_server(services, run_worker=False))


def audio_body(conversation_id: str) -> bytes:
    return event_body(
        "post_call_audio",
        conversation_id=conversation_id,
        full_audio=base64.b64encode(HELLO_MP3).decode(),
    )


def transcription_body(conversation_id: str, *messages: str) -> bytes:
    """A finished call whose turns alternate agent/user, a second apart."""
    turns = [
        {"role": "agent" if i % 2 == 0 else "user", "message": text, "time_in_call_secs": i}
        for i, text in enumerate(messages)
    ]
    return event_body(
        conversation_id=conversation_id,
        status="done",
        transcript=turns,
        metadata={"start_time_unix_secs": 1700000000, "call_duration_secs": len(messages)},
        analysis={
            "call_successful": "success",
            "transcript_summary": "The caller asked for the opening hours.",
            "call_summary_title": "Opening hours",
            "evaluation_criteria_results": {},
            "data_collection_results": {
                "city": {"data_collection_id": "city", "value": "Lyon", "rationale": "said so"}
            },
        },
    )


def broken_audio_body() -> bytes:
    return fixture_bytes(BROKEN_AUDIO)
