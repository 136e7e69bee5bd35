"""The conversations pages and API: ``/ui/conversations`` and ``/api/v1/conversations``.

Registered through the entry-point group ``voicehooks.pages`` (pyproject.toml); the data comes
from the same queries as ``voicehooks conversations list|show --json`` (``cli``), so the page,
the API and the CLI cannot disagree. The call audio is served with range requests, so the
player can seek in a long call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from handlers.elevenlabs.cli import get_conversation, list_conversations
from handlers.elevenlabs.tables import SOURCE
from receiver.sources.elevenlabs.models import POST_CALL_AUDIO, POST_CALL_TRANSCRIPTION
from receiver.ui.api import int_param
from receiver.ui.plugins import NavEntry, Pages
from receiver.ui.render import JSON, api_error, audio_file, not_found_page, render, services


def _conversation(request: Request) -> dict[str, Any] | None:
    svc = services(request)
    info = get_conversation(svc.engine, svc.blobs, request.path_params["conversation_id"])
    if info is not None and info["audio"]["stored"]:
        info["audio"]["url"] = f"/ui/conversations/{info['conversation_id']}/audio"
    return info


def _rows(request: Request) -> list[dict[str, Any]]:
    return list_conversations(
        services(request).engine,
        limit=int_param(request, "limit", 50),
        agent_id=request.query_params.get("agent") or None,
    )


def conversations_page(request: Request) -> Response:
    return render(request, "elevenlabs/conversations.html", {"rows": _rows(request)})


def conversation_page(request: Request) -> Response:
    info = _conversation(request)
    if info is None:
        return not_found_page(request, "such conversation")
    return render(request, "elevenlabs/conversation.html", {"c": info})


def conversation_audio(request: Request) -> Response:
    info = _conversation(request)
    if info is None or not info["audio"]["stored"]:
        return api_error(404, "not_found", "no stored audio for that conversation")
    return audio_file(Path(info["audio"]["path"]), "audio/mpeg")


def conversations_api(request: Request) -> Response:
    return JSON(_rows(request))


def conversation_api(request: Request) -> Response:
    info = _conversation(request)
    if info is None:
        return api_error(404, "not_found", "no conversation with that id")
    return JSON(info)


pages = Pages(
    name="elevenlabs",
    routes=[
        Route("/conversations", conversations_page),
        Route("/conversations/{conversation_id}", conversation_page),
        Route("/conversations/{conversation_id}/audio", conversation_audio),
    ],
    api_routes=[
        Route("/conversations", conversations_api),
        Route("/conversations/{conversation_id}", conversation_api),
        Route("/conversations/{conversation_id}/audio", conversation_audio),
    ],
    templates=Path(__file__).parent / "templates",
    nav=[NavEntry("Conversations", "conversations")],
    subjects={
        (SOURCE, POST_CALL_TRANSCRIPTION): "conversations/",
        (SOURCE, POST_CALL_AUDIO): "conversations/",
    },
)
