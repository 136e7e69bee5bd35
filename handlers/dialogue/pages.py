"""The dialogue renders pages and API: ``/ui/renders`` and ``/api/v1/renders``.

Registered through the entry-point group ``voicehooks.pages`` (pyproject.toml). The data comes
from the functions behind ``voicehooks dialogue list|show --json`` (``store.list_renders``,
``store.show``), so the page, the API and the CLI cannot disagree; ``POST /api/v1/renders`` is
``dialogue submit``: the same script parser, the same per-provider checks (a refused script
stores nothing), the same refusal when the provider's API key is not configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from handlers.dialogue import store
from handlers.dialogue.cli import KEY_SETTINGS
from handlers.dialogue.script import ScriptError, check, parse_script
from handlers.dialogue.store import EVENT_TYPE
from receiver.sources.local import NAME as LOCAL
from receiver.ui.api import int_param
from receiver.ui.plugins import NavEntry, Pages
from receiver.ui.render import JSON, api_error, audio_file, not_found_page, render, services

HERE = Path(__file__).parent
# A script is at most a few thousand characters (kie.ai: 5,000); a megabyte is generous and
# keeps a hostile client from making the receiver buffer an unbounded body.
MAX_SCRIPT_BYTES = 1024 * 1024


def _render(request: Request) -> dict[str, Any] | None:
    svc = services(request)
    return store.show(svc.engine, svc.blobs, request.path_params["render_id"])


def _rows(request: Request) -> list[dict[str, Any]]:
    return store.list_renders(
        services(request).engine,
        limit=int_param(request, "limit", 50),
        state=request.query_params.get("state") or None,
    )


def renders_page(request: Request) -> Response:
    return render(request, "dialogue/renders.html", {"rows": _rows(request)})


def render_page(request: Request) -> Response:
    found = _render(request)
    if found is None:
        return not_found_page(request, "such render")
    turns = (found["script"] or {}).get("turns") or []
    audio_url = f"/ui/renders/{found['id']}/audio" if found["audio"] else None
    task_url = (
        f"/ui/tasks/{quote(found['task_id'], safe='')}"
        if found["provider"] == "kie" and found["task_id"]
        else None
    )
    segments = [
        {
            **seg,
            "text": turns[seg["input_index"]]["text"] if seg["input_index"] < len(turns) else "",
        }
        for seg in found["voice_segments"]
    ]
    return render(
        request,
        "dialogue/render.html",
        {
            "r": found,
            "turns": turns,
            "segments": segments,
            "audio_url": audio_url,
            "task_url": task_url,
        },
    )


def render_audio(request: Request) -> Response:
    found = _render(request)
    if found is None or not found["audio"]:
        return api_error(404, "not_found", "no stored audio for that render")
    return audio_file(Path(found["audio"]["file"]), found["audio"]["content_type"])


def renders_api(request: Request) -> Response:
    return JSON(_rows(request))


def render_api(request: Request) -> Response:
    found = _render(request)
    if found is None:
        return api_error(404, "not_found", "no render with that id or kie.ai taskId")
    return JSON(found)


async def _bounded_body(request: Request) -> bytes | None:
    """The request body, or None once it grows past ``MAX_SCRIPT_BYTES``."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_SCRIPT_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def submit_api(request: Request) -> Response:
    """``dialogue submit --json`` over HTTP: 201 with the render's ``id``, or a JSON refusal."""
    raw = await _bounded_body(request)
    if raw is None:
        return api_error(413, "too_large", f"a script is at most {MAX_SCRIPT_BYTES} bytes")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return api_error(400, "invalid_script", "the body is not valid JSON")
    provider = document.get("provider") if isinstance(document, dict) else None
    if provider not in KEY_SETTINGS:
        return api_error(
            400, "invalid_provider", 'the body needs "provider": "kie", "elevenlabs" or "sonna"'
        )
    try:
        script = parse_script(document)
    except ScriptError as exc:
        return api_error(400, "invalid_script", str(exc))
    result = check(script, provider)
    warnings = [f.__dict__ for f in result.warnings]
    if not result.ok:
        return JSON(
            {
                "error": "script_refused",
                "detail": "; ".join(f"{f.code}: {f.message}" for f in result.errors),
                "errors": [f.__dict__ for f in result.errors],
                "warnings": warnings,
            },
            status_code=422,
        )
    svc = services(request)
    attribute, variable = KEY_SETTINGS[provider]
    key = getattr(svc.settings, attribute)
    if key is None or not key.get_secret_value():
        return api_error(
            400, "missing_api_key", f"{variable} is not set: cannot submit to {provider}"
        )
    render_id = await run_in_threadpool(store.submit, svc.engine, svc.registry, script, provider)
    svc.worker.wake()
    return JSON(
        {"id": render_id, "provider": provider, "state": "queued", "warnings": warnings},
        status_code=201,
        headers={"Location": f"/api/v1/renders/{render_id}"},
    )


pages = Pages(
    name="dialogue",
    routes=[
        Route("/renders", renders_page),
        Route("/renders/{render_id}", render_page),
        Route("/renders/{render_id}/audio", render_audio),
    ],
    api_routes=[
        Route("/renders", renders_api, methods=["GET"]),
        Route("/renders", submit_api, methods=["POST"]),
        Route("/renders/{render_id}", render_api),
        Route("/renders/{render_id}/audio", render_audio),
    ],
    templates=HERE / "templates",
    static=HERE / "static",
    nav=[NavEntry("Renders", "renders")],
    subjects={(LOCAL, EVENT_TYPE): "renders/"},
)
