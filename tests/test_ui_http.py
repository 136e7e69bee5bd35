"""The inspector over plain HTTP: access, sign-in, CSRF, range requests, API shapes, escaping.

Every test runs a real receiver under uvicorn on loopback (SQLite and Postgres) with the
built-in handlers, filled through signed POSTs; the browser tests are in test_ui_browser.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from typer.testing import CliRunner

from receiver import ui
from receiver.cli.main import app as cli_app
from receiver.ui.auth import SESSION_COOKIE
from receiver.ui.plugins import NavEntry, Pages
from tests.conftest import FIXTURES, ROOT, SECRET, event_body, serve_in_thread
from tests.inspector import (
    HELLO_MP3,
    TOKEN,
    XSS,
    Inspector,
    audio_body,
    broken_audio_body,
    start_inspector,
    transcription_body,
)


@pytest.fixture
def inspector(database_url, tmp_path, services_factory, live_server) -> Inspector:  # type: ignore[no-untyped-def]
    return start_inspector(database_url, tmp_path, services_factory, live_server)


@pytest.fixture
def filled(inspector: Inspector) -> Inspector:
    """A conversation with transcript (one turn is an XSS attempt) and audio, and a dead job."""
    inspector.post(transcription_body("conv-a", "Hello, how can I help?", XSS, "Thanks, bye."))
    inspector.post(audio_body("conv-a"))
    inspector.post(broken_audio_body())
    assert inspector.drain() == 3
    return inspector


def signed_in(inspector: Inspector) -> httpx.Client:
    client = httpx.Client(base_url=inspector.url, timeout=30)
    response = client.post("/ui/login", data={"token": TOKEN, "next": "/ui/dead"})
    assert response.status_code == 303
    return client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def test_everything_under_ui_and_api_needs_the_admin_token(filled: Inspector) -> None:
    url = filled.url
    for path in (
        "/api/v1/deliveries",
        "/api/v1/deliveries/1",
        "/api/v1/conversations",
        "/api/v1/conversations/conv-a/audio",
        "/api/v1/tasks",
    ):
        response = httpx.get(url + path)
        assert response.status_code == 401, path
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(url + path, headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401, path
    for path in ("/ui/", "/ui/deliveries/1", "/ui/conversations/conv-a", "/ui/dead", "/ui/tasks"):
        response = httpx.get(url + path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/ui/login?next=%2Fui%2F")
    # Unauthenticated state changes are refused outright, not redirected.
    assert httpx.post(url + "/ui/dead/retry").status_code == 401
    assert httpx.post(url + "/api/v1/deliveries/retry-dead").status_code == 401
    # The scheme is case-insensitive (RFC 7235); the token is not.
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = httpx.get(
            url + "/api/v1/deliveries", headers={"Authorization": f"{scheme} {TOKEN}"}
        )
        assert response.status_code == 200, scheme
    upper = httpx.get(
        url + "/api/v1/deliveries", headers={"Authorization": f"Bearer {TOKEN.upper()}"}
    )
    assert upper.status_code == 401
    # The sign-in page and its assets are the only things reachable without the token.
    assert httpx.get(url + "/ui/login").status_code == 200
    assert httpx.get(url + "/ui/static/style.css").status_code == 200


def test_login_sets_an_httponly_strict_session_cookie_that_is_not_the_token(
    inspector: Inspector,
) -> None:
    url = inspector.url
    refused = httpx.post(url + "/ui/login", data={"token": "guess"})
    assert refused.status_code == 401
    assert "set-cookie" not in refused.headers
    assert "That token is not right" in refused.text

    response = httpx.post(url + "/ui/login", data={"token": TOKEN, "next": "/ui/deliveries"})
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/deliveries"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie
    session = response.cookies[SESSION_COOKIE]
    page = httpx.get(url + "/ui/deliveries", cookies={SESSION_COOKIE: session})
    assert page.status_code == 200
    assert httpx.get(url + "/ui/", cookies={SESSION_COOKIE: session + "0"}).status_code == 303

    # After signing in, the browser only goes back inside the inspector.
    for target in ("//evil.example/", "https://evil.example/", "/ui/\\evil", "/elsewhere"):
        away = httpx.post(url + "/ui/login", data={"token": TOKEN, "next": target})
        assert away.headers["location"] == "/ui/", target


def test_state_changes_with_the_session_cookie_need_the_csrf_token(filled: Inspector) -> None:
    client = signed_in(filled)
    page = client.get("/ui/dead")
    token = csrf_of(page.text)
    job_id = int(re.search(r'data-job="(\d+)"', page.text).group(1))  # type: ignore[union-attr]

    assert client.post("/ui/dead/retry").status_code == 403
    assert client.post("/ui/dead/retry", data={"csrf": "0" * 64}).status_code == 403
    assert client.post(f"/ui/dead/{job_id}/retry", data={"csrf": token[:-1]}).status_code == 403
    assert client.post("/api/v1/deliveries/retry-dead").status_code == 403
    assert filled.api("GET", "/api/v1/jobs/dead").json()[0]["id"] == job_id  # still dead

    done = client.post(f"/ui/dead/{job_id}/retry", data={"csrf": token})
    assert done.status_code == 303
    assert done.headers["location"] == "/ui/dead?requeued=1"
    assert filled.api("GET", "/api/v1/jobs/dead").json() == []
    delivery = filled.api("GET", "/api/v1/deliveries/3").json()
    assert [(j["status"], j["attempts"]) for j in delivery["jobs"]] == [("pending", 0)]

    # The API from the page's scripts: the same token as a header.
    filled.drain()
    again = client.post("/api/v1/deliveries/retry-dead", headers={"X-CSRF-Token": token})
    assert again.json() == {"requeued": 1}
    # Bearer clients need no CSRF token: a browser cannot forge that header cross-site.
    filled.drain()
    assert filled.api("POST", "/api/v1/deliveries/retry-dead").json() == {"requeued": 1}


def test_audio_is_served_with_range_requests(filled: Inspector) -> None:
    for path in ("/ui/conversations/conv-a/audio", "/api/v1/conversations/conv-a/audio"):
        whole = filled.api("GET", path)
        assert whole.status_code == 200
        assert whole.content == HELLO_MP3
        assert whole.headers["content-type"] == "audio/mpeg"
        assert whole.headers["accept-ranges"] == "bytes"

        part = filled.api("GET", path, headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206
        assert part.content == HELLO_MP3[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(HELLO_MP3)}"
        assert part.headers["content-type"] == "audio/mpeg"

        tail = filled.api("GET", path, headers={"Range": "bytes=-100"})
        assert tail.status_code == 206
        assert tail.content == HELLO_MP3[-100:]
        beyond = filled.api("GET", path, headers={"Range": f"bytes={len(HELLO_MP3) + 10}-"})
        assert beyond.status_code == 416
    assert filled.api("GET", "/ui/conversations/nope/audio").status_code == 404


def cli_json(inspector: Inspector, *args: str) -> Any:
    settings = inspector.server.services.settings
    env = {
        "VOICEHOOKS_DATABASE_URL": settings.database_url,
        "VOICEHOOKS_DATA_DIR": str(settings.data_dir),
    }
    result = CliRunner().invoke(cli_app, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_api_gives_the_same_data_as_the_cli_json(filled: Inspector) -> None:
    assert filled.api("GET", "/api/v1/deliveries").json() == cli_json(filled, "deliveries", "list")
    assert filled.api("GET", "/api/v1/deliveries?status=dead").json() == cli_json(
        filled, "deliveries", "list", "--status", "dead"
    )
    for delivery_id in (1, 2, 3):
        assert filled.api("GET", f"/api/v1/deliveries/{delivery_id}").json() == cli_json(
            filled, "deliveries", "show", str(delivery_id)
        )
    assert filled.api("GET", "/api/v1/conversations").json() == cli_json(
        filled, "conversations", "list"
    )
    conversation = filled.api("GET", "/api/v1/conversations/conv-a").json()
    assert conversation["audio"].pop("url") == "/ui/conversations/conv-a/audio"
    assert conversation == cli_json(filled, "conversations", "show", "conv-a")
    assert [t["message"] for t in conversation["transcript"]][1] == XSS
    assert filled.api("GET", "/api/v1/tasks").json() == cli_json(filled, "tasks", "list") == []

    unknown = filled.api("GET", "/api/v1/nothing/here")
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": "not_found",
        "detail": "no API endpoint /api/v1/nothing/here",
    }
    missing = filled.api("GET", "/api/v1/deliveries/99")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "detail": "no delivery with id 99"}
    assert filled.api("GET", "/api/v1/conversations/nope").status_code == 404
    # Actions: the same as `deliveries retry 1 --json` and `deliveries retry --dead --json`.
    assert filled.api("POST", "/api/v1/deliveries/1/retry").json() == {"requeued": 1}
    assert filled.api("POST", "/api/v1/deliveries/99/retry").status_code == 404
    assert filled.api("POST", "/api/v1/deliveries/retry-dead").json() == {"requeued": 1}


def test_kie_tasks_pages_and_api(inspector: Inspector) -> None:
    """The kie plugin's pages: the task list, a task's script and failure, the API = CLI."""
    inspector.replay(FIXTURES / "kie" / "fail.json", FIXTURES / "kie" / "waiting.json")
    # Each callback runs every installed kie handler (the tasks table's and the renders').
    per_callback = len(inspector.server.services.registry.handlers_for("kie", "task_callback"))
    assert inspector.drain() == 2 * per_callback
    task_id = "9d2e4b6a8c0f1e3d5b7a9c1e3f5d7b02"
    tasks = inspector.api("GET", "/api/v1/tasks").json()
    assert tasks == cli_json(inspector, "tasks", "list")
    assert sorted(t["state"] for t in tasks) == ["fail", "waiting"]
    task = inspector.api("GET", f"/api/v1/tasks/{task_id}").json()
    assert task.pop("audio_url") is None
    cli_task = cli_json(inspector, "tasks", "show", task_id)
    assert cli_task.pop("audio_file") is None
    assert task == cli_task
    page = inspector.api("GET", f"/ui/tasks/{task_id}").text
    assert "Can you hear me?" in page
    assert "audio generation failed" in page
    listing = inspector.api("GET", "/ui/tasks").text
    assert f'href="/ui/tasks/{task_id}"' in listing
    assert inspector.api("GET", "/ui/tasks/nope").status_code == 404
    assert inspector.api("GET", "/api/v1/tasks/nope").status_code == 404
    assert inspector.api("GET", f"/ui/tasks/{task_id}/audio").status_code == 404


def test_kie_task_audio_is_served_with_ranges_and_its_content_type(inspector: Inspector) -> None:
    """A task whose audio the kie handler downloaded (written here as the handler would)."""
    from sqlmodel import Session

    from handlers.kie.tables import DialogueTask

    services = inspector.server.services
    with services.blobs.writer(".mp3") as out:
        out.write(HELLO_MP3)
        relpath = out.commit()
    with Session(services.engine) as session:
        session.add(
            DialogueTask(
                task_id="task-with-audio",
                state="success",
                dialogue=[{"text": "Hi <b>there</b>", "voice": "Rachel"}],
                audio_blob_path=relpath,
                audio_size=len(HELLO_MP3),
                audio_content_type="audio/mpeg",
            )
        )
        session.commit()
    task = inspector.api("GET", "/api/v1/tasks/task-with-audio").json()
    assert task["audio_url"] == "/ui/tasks/task-with-audio/audio"
    part = inspector.api("GET", task["audio_url"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206
    assert part.content == HELLO_MP3[:100]
    assert part.headers["content-type"] == "audio/mpeg"
    page = inspector.api("GET", "/ui/tasks/task-with-audio").text
    assert (
        '<audio id="player" controls preload="metadata" src="/ui/tasks/task-with-audio/audio">'
        in page
    )
    assert "Hi &lt;b&gt;there&lt;/b&gt;" in page


def test_deliveries_filter_by_source_type_status_and_search(filled: Inspector) -> None:
    def ids(query: str) -> list[int]:
        return [row["id"] for row in filled.api("GET", "/api/v1/deliveries?" + query).json()]

    assert ids("") == [3, 2, 1]  # newest first
    assert ids("q=conv-a") == [2, 1]  # conversation id
    assert ids("q=2") == [2]  # delivery id
    assert ids("q=abc") == [3]  # the broken audio's conversation
    assert ids("type=post_call_audio") == [3, 2]
    assert ids("type=post_call_audio&status=done") == [2]
    assert ids("status=dead") == [3]
    assert ids("source=kie") == []
    assert ids("source=elevenlabs&q=conv-a&type=post_call_transcription") == [1]
    page = filled.api("GET", "/ui/deliveries?status=dead&q=abc")
    assert 'data-id="3"' in page.text
    assert 'data-id="1"' not in page.text
    # Subjects link to the plugin's page about them (a conversation, a task).
    listing = filled.api("GET", "/ui/deliveries").text
    assert '<a href="/ui/conversations/conv-a">conv-a</a>' in listing
    delivery = filled.api("GET", "/ui/deliveries/2").text
    assert '<a href="/ui/conversations/conv-a" id="subject">conv-a</a>' in delivery
    # The page's live refresh asks the API with the same filters.
    assert 'data-api="/api/v1/deliveries?status=dead&amp;q=abc"' in page.text


def test_overview_counts_deliveries_per_minute_and_the_backlog(filled: Inspector) -> None:
    filled.post(event_body("post_call_transcription", conversation_id="conv-late"))
    info = filled.api("GET", "/api/v1/overview").json()
    assert len(info["per_minute"]) == 60
    assert sum(point["count"] for point in info["per_minute"]) == 4
    assert info["per_minute"][-1]["count"] >= 1  # this minute (the last bucket)
    assert info["pending"] == 1
    assert info["dead"] == 1
    assert info["deliveries_total"] == 4
    assert 0 <= info["oldest_pending_age_seconds"] < 60
    page = filled.api("GET", "/ui/")
    assert '<span class="big" id="pending">1</span>' in page.text
    assert '<span class="big" id="dead">1</span>' in page.text


def test_a_delivery_page_shows_auth_jobs_and_cuts_large_bodies(filled: Inspector) -> None:
    page = filled.api("GET", "/ui/deliveries/3").text
    assert "<dt>authenticated by</dt><dd>hmac (key #1 of the configured keys)</dd>" in page
    assert "data.full_audio is not valid base64" in page  # the dead job's last error
    assert "Retry this delivery" in page
    assert "&#34;type&#34;: &#34;post_call_audio&#34;" in page  # pretty JSON, escaped

    # Past 1 MiB the body lives in the blob store rather than the row: cut on the page, whole
    # in the download.
    big = event_body(conversation_id="conv-big", padding="x" * 1_200_000)
    delivery_id = filled.post(big)
    assert filled.api("GET", f"/api/v1/deliveries/{delivery_id}").json()["body_stored"] == "blob"
    page = filled.api("GET", f"/ui/deliveries/{delivery_id}").text
    assert "Large body: showing the first" in page
    assert "x" * 1000 in page
    assert "x" * 300_000 not in page
    for path in (f"/ui/deliveries/{delivery_id}/body", f"/api/v1/deliveries/{delivery_id}/body"):
        download = filled.api("GET", path)
        assert download.content == big  # the exact bytes
        assert download.headers["content-type"] == "application/octet-stream"
        assert download.headers["content-disposition"].startswith("attachment")
    inline = filled.api("GET", "/ui/deliveries/1/body").content
    assert inline == transcription_body("conv-a", "Hello, how can I help?", XSS, "Thanks, bye.")


def test_pages_escape_payload_text_and_allow_no_inline_script(filled: Inspector) -> None:
    for path in (
        "/ui/",
        "/ui/deliveries",
        "/ui/deliveries/1",
        "/ui/dead",
        "/ui/conversations",
        "/ui/conversations/conv-a",
        "/ui/tasks",
        "/ui/login",
    ):
        response = filled.api("GET", path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert XSS not in response.text, path
        # Every script is a file: no inline <script> and no on* handler attributes.
        for tag in re.findall(r"<script\b[^>]*>", response.text):
            assert "src=" in tag, (path, tag)
        assert not re.search(r"<[^>]+\son\w+=", response.text), path
    page = filled.api("GET", "/ui/conversations/conv-a").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_serve_prints_a_sign_in_link_and_keeps_the_token_out_of_logs(tmp_path: Path) -> None:
    """`voicehooks serve` without VOICEHOOKS_ADMIN_TOKEN: a token for this run, a link on the
    terminal, and that token nowhere else in the output, even with access logs on."""
    import os

    from tests.conftest import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VOICEHOOKS_ADMIN_TOKEN"}
    env |= {
        "VOICEHOOKS_DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}",
        "VOICEHOOKS_DATA_DIR": str(tmp_path / "data"),
        "VOICEHOOKS_ELEVENLABS_SECRETS": SECRET,
        "VOICEHOOKS_LOG_LEVEL": "info",
        "VOICEHOOKS_ACCESS_LOG": "true",  # off by default; on here, where a token could leak
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        match = re.search(rf"{re.escape(url)}/ui/login#token=([\w-]+)", log.read_text())
        assert match, log.read_text()
        token = match.group(1)
        assert len(token) >= 40
        assert httpx.get(url + "/api/v1/deliveries").status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(url + "/api/v1/deliveries", headers=auth).json() == []
        signed = httpx.post(url + "/ui/login", data={"token": token})
        assert signed.status_code == 303
        assert httpx.get(url + "/ui/", cookies=signed.cookies).status_code == 200
        # The run's token opens the inspector only: /metrics stays as the operator set it
        # (open without VOICEHOOKS_ADMIN_TOKEN), so a Prometheus scraper is not locked out.
        assert httpx.get(url + "/metrics").status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)
    output = log.read_text()
    assert "GET /api/v1/deliveries" in output  # access logs were on
    assert output.count(token) == 1  # only the sign-in link


def test_a_plugin_adds_pages_api_routes_static_files_and_nav(
    database_url: str, tmp_path: Path, services_factory: Any
) -> None:
    """The voicehooks.pages mechanism, as the dialogue renders plugin will use it."""
    from tests.conftest import make_settings

    static = tmp_path / "static"
    static.mkdir()
    (static / "timeline.js").write_text("// timeline\n")
    templates = tmp_path / "templates"
    (templates / "renders").mkdir(parents=True)
    (templates / "renders" / "list.html").write_text(
        '{% extends "base.html" %}{% block content %}<p id="r">{{ what }}</p>{% endblock %}'
    )

    def renders_page(request: Any) -> Any:
        from receiver.ui.render import render

        return render(request, "renders/list.html", {"what": "<b>renders</b>"})

    plugin = Pages(
        name="renders",
        routes=[Route("/renders", renders_page)],
        api_routes=[Route("/renders", lambda request: PlainTextResponse("[]"))],
        templates=templates,
        static=static,
        nav=[NavEntry("Renders", "renders")],
    )
    services = services_factory(make_settings(database_url, tmp_path / "data", admin_token=TOKEN))
    app = Starlette()
    app.state.services = services
    ui.mount(app, services, plugins=[plugin])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve_in_thread(app) as url:
        page = httpx.get(url + "/ui/renders", headers=auth)
        assert '<p id="r">&lt;b&gt;renders&lt;/b&gt;</p>' in page.text
        assert '<a href="/ui/renders" class="active">Renders</a>' in page.text
        assert "content-security-policy" in page.headers
        assert httpx.get(url + "/ui/renders").status_code == 303
        assert httpx.get(url + "/api/v1/renders", headers=auth).text == "[]"
        assert httpx.get(url + "/api/v1/renders").status_code == 401
        script = httpx.get(url + "/ui/static/renders/timeline.js")
        assert script.text == "// timeline\n"
        assert httpx.get(url + "/ui/static/player.js").status_code == 200
