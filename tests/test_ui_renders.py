"""The dialogue renders pages and API (issue 13 with issue 11): list, render, audio, submit.

A real receiver under uvicorn on loopback (SQLite and Postgres) with every installed plugin;
renders run against the local ElevenLabs and kie.ai fakes (tests/fakes/) when the test drains
the worker. The browser test of the timeline is in test_ui_renders_browser.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from receiver import jobs
from receiver.cli.main import app as cli_app
from tests.dialogue_support import script_doc
from tests.fakes.elevenlabs_dialogue import ElevenLabsDialogueFake
from tests.fakes.kie_api import KieFake
from tests.fakes.scripted import MP3, MP3_FORMAT, Answer
from tests.inspector import TOKEN, XSS, Inspector
from tests.renders_inspector import renders_inspector

Setup = tuple[Inspector, ElevenLabsDialogueFake, KieFake]


@pytest.fixture
def setup(database_url, tmp_path, services_factory, live_server) -> Iterator[Setup]:  # type: ignore[no-untyped-def]
    with renders_inspector(database_url, tmp_path, services_factory, live_server) as running:
        yield running


def submitted(inspector: Inspector, provider: str, **extra: Any) -> int:
    """Submit through the API (Bearer, so no CSRF token) and run the jobs that are due."""
    response = inspector.api(
        "POST", "/api/v1/renders", json={**script_doc(**extra), "provider": provider}
    )
    assert response.status_code == 201, response.text
    assert inspector.drain() >= 1
    return int(response.json()["id"])


def cli_json(database_url: str, tmp_path: Path, *args: str) -> Any:
    env = {"VOICEHOOKS_DATABASE_URL": database_url, "VOICEHOOKS_DATA_DIR": str(tmp_path / "data")}
    result = CliRunner().invoke(cli_app, ["dialogue", *args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_api_gives_the_same_data_as_dialogue_list_and_show_json(
    setup: Setup, database_url: str, tmp_path: Path
) -> None:
    inspector, eleven, kie = setup
    el_id = submitted(inspector, "elevenlabs", output_format=MP3_FORMAT)
    kie_id = submitted(inspector, "kie", language_code="en")
    assert len(eleven.requests) == 1 and kie.tasks

    listed = inspector.api("GET", "/api/v1/renders")
    assert listed.status_code == 200
    assert listed.json() == cli_json(database_url, tmp_path, "list")
    assert [(r["id"], r["provider"], r["state"]) for r in listed.json()] == [
        (kie_id, "kie", "running"),
        (el_id, "elevenlabs", "succeeded"),
    ]
    shown = inspector.api("GET", f"/api/v1/renders/{el_id}").json()
    assert shown == cli_json(database_url, tmp_path, "show", str(el_id))
    assert shown["sha256"] and shown["size"] == len(MP3)
    assert [s["voice_id"] for s in shown["voice_segments"]] == ["Rachel", "Adam"]
    # A kie.ai taskId works as the id, as it does for `dialogue show`.
    task_id = inspector.api("GET", f"/api/v1/renders/{kie_id}").json()["task_id"]
    assert task_id
    by_task = inspector.api("GET", f"/api/v1/renders/{task_id}")
    assert by_task.json() == cli_json(database_url, tmp_path, "show", task_id)
    assert by_task.json()["id"] == kie_id
    missing = inspector.api("GET", "/api/v1/renders/999")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("provider", "extra", "codes"),
    [
        ("kie", {"stability": 0.3}, ["invalid_stability"]),
        ("kie", {"language_code": "xx-nowhere"}, ["invalid_language_code"]),
        ("kie", {"turns": [{"text": "x" * 5001, "voice": "Rachel"}]}, ["text_too_long"]),
        ("elevenlabs", {"output_format": "mp3_1_1"}, ["invalid_output_format"]),
        (
            "elevenlabs",
            {"turns": [{"text": "hi", "voice": f"v{n}"} for n in range(11)]},
            ["too_many_voices"],
        ),
        ("elevenlabs", {"turns": [{"text": "", "voice": "Rachel"}]}, ["empty_turn"]),
    ],
)
def test_a_refused_script_answers_422_with_the_codes_and_stores_nothing(
    setup: Setup, provider: str, extra: dict[str, Any], codes: list[str]
) -> None:
    inspector, eleven, kie = setup
    response = inspector.api(
        "POST", "/api/v1/renders", json={**script_doc(**extra), "provider": provider}
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "script_refused"
    assert [e["code"] for e in body["errors"]] == codes
    assert inspector.api("GET", "/api/v1/renders").json() == []
    assert jobs.list_deliveries(inspector.server.services.engine, limit=10) == []
    assert eleven.requests == [] and kie.tasks == {}


def test_bad_bodies_and_a_missing_provider_key_are_clear_json_errors(setup: Setup) -> None:
    inspector, _, _ = setup

    def post(**kwargs: Any) -> httpx.Response:
        return inspector.api("POST", "/api/v1/renders", **kwargs)

    not_json = post(content=b"{turns", headers={"Content-Type": "application/json"})
    assert (not_json.status_code, not_json.json()["error"]) == (400, "invalid_script")
    no_provider = post(json=script_doc())
    assert (no_provider.status_code, no_provider.json()["error"]) == (400, "invalid_provider")
    no_turns = post(json={"provider": "kie", "title": "x"})
    assert (no_turns.status_code, no_turns.json()["error"]) == (400, "invalid_script")
    # Sonna has no key in this receiver's settings: one clear line naming the setting.
    no_key = post(json={**script_doc(), "provider": "sonna"})
    assert no_key.status_code == 400
    assert no_key.json() == {
        "error": "missing_api_key",
        "detail": "VOICEHOOKS_SONNA_API_KEY is not set: cannot submit to sonna",
    }
    huge = post(content=b" " * (1024 * 1024 + 1), headers={"Content-Type": "application/json"})
    assert huge.status_code == 413
    assert inspector.api("GET", "/api/v1/renders").json() == []


def test_submitting_with_the_session_cookie_needs_the_csrf_token(setup: Setup) -> None:
    inspector, eleven, _ = setup
    client = httpx.Client(base_url=inspector.url, timeout=30)
    assert client.post("/ui/login", data={"token": TOKEN, "next": "/ui/renders"}).status_code == 303
    page = client.get("/ui/renders")
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
    body = {**script_doc(), "provider": "elevenlabs"}

    assert client.post("/api/v1/renders", json=body).status_code == 403
    assert (
        client.post("/api/v1/renders", json=body, headers={"X-CSRF-Token": "0" * 64}).status_code
        == 403
    )
    assert inspector.api("GET", "/api/v1/renders").json() == []

    accepted = client.post("/api/v1/renders", json=body, headers={"X-CSRF-Token": token})
    assert accepted.status_code == 201
    render_id = accepted.json()["id"]
    assert accepted.headers["location"] == f"/api/v1/renders/{render_id}"
    inspector.drain()
    assert client.get(f"/api/v1/renders/{render_id}").json()["state"] == "succeeded"
    assert len(eleven.requests) == 1


def test_render_audio_is_served_with_range_requests(setup: Setup) -> None:
    inspector, _, _ = setup
    render_id = submitted(inspector, "elevenlabs", output_format=MP3_FORMAT)
    for path in (f"/api/v1/renders/{render_id}/audio", f"/ui/renders/{render_id}/audio"):
        whole = inspector.api("GET", path)
        assert whole.status_code == 200 and whole.content == MP3
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-type"] == "audio/mpeg"
        part = inspector.api("GET", path, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.content == MP3[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(MP3)}"
    queued = inspector.api(
        "POST", "/api/v1/renders", json={**script_doc(), "provider": "elevenlabs"}
    ).json()["id"]
    assert inspector.api("GET", f"/api/v1/renders/{queued}/audio").status_code == 404


def test_the_pages_escape_script_text_and_link_task_and_delivery(setup: Setup) -> None:
    inspector, _, _ = setup
    turns = [{"text": XSS, "voice": "Rachel"}, {"text": "Fine.", "voice": XSS}]
    el_id = submitted(inspector, "elevenlabs", title=XSS, turns=turns, output_format=MP3_FORMAT)
    kie_id = submitted(inspector, "kie", title="Kie call")
    escaped = "&lt;img src=x onerror=alert(1)&gt;"

    page = inspector.api("GET", f"/ui/renders/{el_id}")
    assert page.status_code == 200
    assert XSS not in page.text and "<img" not in page.text
    assert page.text.count(escaped) >= 4  # title (twice), the script's turn, its segment, a voice
    assert 'id="timeline" data-timeline-for="player"' in page.text
    assert (
        len(re.findall(r'class="turn segment" data-start="[0-9.]+" data-end="[0-9.]+"', page.text))
        == 2
    )
    assert f'src="/ui/renders/{el_id}/audio"' in page.text

    listing = inspector.api("GET", "/ui/renders")
    assert XSS not in listing.text and escaped in listing.text
    assert listing.text.index(f'data-id="{kie_id}"') < listing.text.index(f'data-id="{el_id}"')
    assert (
        '<a href="/ui/renders">Renders</a>' in listing.text
        or 'href="/ui/renders" class="active"' in listing.text
    )

    task_id = inspector.api("GET", f"/api/v1/renders/{kie_id}").json()["task_id"]
    kie_page = inspector.api("GET", f"/ui/renders/{kie_id}")
    assert f'<a id="task-link" href="/ui/tasks/{task_id}">' in kie_page.text
    assert 'id="timeline"' not in kie_page.text
    # A render's job is a `local` delivery whose subject links back to the render.
    delivery_id = inspector.api("GET", f"/api/v1/renders/{el_id}").json()["delivery_id"]
    delivery = inspector.api("GET", f"/ui/deliveries/{delivery_id}")
    assert f'<a href="/ui/renders/{el_id}" id="subject">' in delivery.text
    assert inspector.api("GET", "/ui/renders/999").status_code == 404


def test_the_render_page_shows_the_providers_error_and_the_segment_warning(setup: Setup) -> None:
    inspector, eleven, _ = setup
    eleven.fail_next(
        Answer(402, {"detail": {"status": "quota_exceeded", "message": "No <b>credits</b>"}})
    )
    failed = submitted(inspector, "elevenlabs", output_format=MP3_FORMAT)
    eleven.anomaly = "repeated"  # the repeated timestamps users report on long inputs
    warned = submitted(inspector, "elevenlabs", output_format=MP3_FORMAT)

    failed_api = inspector.api("GET", f"/api/v1/renders/{failed}").json()
    assert failed_api["state"] == "failed" and failed_api["error"]["message"]
    page = inspector.api("GET", f"/ui/renders/{failed}").text
    error = re.search(r'<p class="error" id="render-error">([^<]*)</p>', page)
    assert error and "No &lt;b&gt;credits&lt;/b&gt;" in error.group(1)
    assert 'id="player"' not in page

    warning = inspector.api("GET", f"/api/v1/renders/{warned}").json()["warning"]
    assert warning
    page = inspector.api("GET", f"/ui/renders/{warned}").text
    assert 'id="render-warning"' in page and 'id="render-error"' not in page
