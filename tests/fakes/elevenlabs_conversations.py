"""A local ElevenLabs conversations API: list (paginated), get one, stream its audio.

It speaks the three documented endpoints (``elevenlabs-conversations-api.md``) with their
shapes, which a test checks against the official SDK's pydantic types: ``xi-api-key`` checked
(401 otherwise), ``page_size`` at most 100 (422 past it), ``cursor``/``next_cursor``/``has_more``,
``call_start_after_unix``/``call_start_before_unix``/``agent_id`` filters, newest first, 404 for
an unknown conversation or one without audio. Error answers are injected on demand
(``fail_next``: 429 with ``Retry-After``, 5xx, 401), and every request is recorded.

Run it alone for a demonstration::

    python -m tests.fakes.elevenlabs_conversations --port 8765 --seed
"""

from __future__ import annotations

import argparse
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "xi-test-key-0123456789"
HELLO_MP3 = (Path(__file__).resolve().parents[2] / "fixtures" / "audio" / "hello.mp3").read_bytes()


@dataclass
class Forced:
    status: int
    path_contains: str = ""
    retry_after: str | None = None


@dataclass
class FakeConversations:
    api_key: str = API_KEY
    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    audio: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    forced: list[Forced] = field(default_factory=list)
    audio_chunk: int = 64 * 1024

    # -- scripting ------------------------------------------------------------------------

    def add(
        self,
        conversation_id: str,
        *,
        start: int | None = None,
        duration: int = 42,
        status: str = "done",
        agent_id: str = "agent-1",
        turns: int = 3,
        audio: bytes | None = None,
    ) -> dict[str, Any]:
        """A conversation as ``GET /v1/convai/conversations/{id}`` returns it."""
        start = int(time.time()) - 3600 if start is None else start
        details = {
            "agent_id": agent_id,
            "conversation_id": conversation_id,
            "status": status,
            "user_id": None,
            "transcript": [
                {
                    "role": "agent" if i % 2 == 0 else "user",
                    "message": f"turn {i} of {conversation_id}",
                    "time_in_call_secs": i * 5,
                    "tool_calls": [],
                    "tool_results": [],
                }
                for i in range(turns)
            ],
            "metadata": {
                "start_time_unix_secs": start,
                "call_duration_secs": duration,
                "cost": 120,
                "termination_reason": "end_call tool was called.",
            },
            "analysis": {
                "evaluation_criteria_results": {},
                "data_collection_results": {},
                "call_successful": "success",
                "transcript_summary": f"Summary of {conversation_id}.",
                "call_summary_title": "Recovered call",
            },
            "conversation_initiation_client_data": {"dynamic_variables": {}},
            "has_audio": audio is not None,
            "has_user_audio": audio is not None,
            "has_response_audio": audio is not None,
            "has_auxiliary_audio": False,
        }
        self.conversations[conversation_id] = details
        if audio is not None:
            self.audio[conversation_id] = audio
        return details

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        path_contains: str = "",
        retry_after: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (before anything else)."""
        self.forced.extend(Forced(status, path_contains, retry_after) for _ in range(times))

    def paths(self, kind: str) -> list[str]:
        """Recorded request paths of one kind: ``list``, ``get`` or ``audio``."""
        out = []
        for path, _ in self.requests:
            parts = path.strip("/").split("/")
            found = "list" if len(parts) == 3 else "audio" if parts[-1] == "audio" else "get"
            if found == kind:
                out.append(path)
        return out

    def summary(self, details: dict[str, Any]) -> dict[str, Any]:
        """The list's row for a conversation (``ConversationSummaryResponseModel``)."""
        return {
            "agent_id": details["agent_id"],
            "agent_name": "Support agent",
            "conversation_id": details["conversation_id"],
            "start_time_unix_secs": details["metadata"]["start_time_unix_secs"],
            "call_duration_secs": details["metadata"]["call_duration_secs"],
            "message_count": len(details["transcript"]),
            "status": details["status"],
            "call_successful": details["analysis"]["call_successful"],
            "transcript_summary": details["analysis"]["transcript_summary"],
            "call_summary_title": details["analysis"]["call_summary_title"],
            "direction": "inbound",
        }

    # -- the protocol ---------------------------------------------------------------------

    def _refusal(self, request: Request) -> Response | None:
        self.requests.append((request.url.path, dict(request.query_params)))
        for index, forced in enumerate(self.forced):
            if forced.path_contains in request.url.path:
                del self.forced[index]
                headers = {"Retry-After": forced.retry_after} if forced.retry_after else {}
                return _error(forced.status, "forced", "forced failure", headers)
        if request.headers.get("xi-api-key") != self.api_key:
            return _error(401, "invalid_api_key", "Invalid API key")
        return None

    async def list_conversations(self, request: Request) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        q = request.query_params
        try:
            page_size = int(q.get("page_size", "30"))
            after = int(q["call_start_after_unix"]) if "call_start_after_unix" in q else None
            before = int(q["call_start_before_unix"]) if "call_start_before_unix" in q else None
            offset = int(base64.urlsafe_b64decode(q["cursor"]).decode()) if q.get("cursor") else 0
        except (ValueError, KeyError):
            return _validation_error("invalid query parameter")
        if not 1 <= page_size <= 100:
            return _validation_error("page_size can not exceed 100")
        rows = [
            d
            for d in self.conversations.values()
            if (not q.get("agent_id") or d["agent_id"] == q["agent_id"])
            and (after is None or d["metadata"]["start_time_unix_secs"] >= after)
            and (before is None or d["metadata"]["start_time_unix_secs"] <= before)
        ]
        rows.sort(key=lambda d: (-d["metadata"]["start_time_unix_secs"], d["conversation_id"]))
        page = rows[offset : offset + page_size]
        has_more = offset + page_size < len(rows)
        cursor = base64.urlsafe_b64encode(str(offset + page_size).encode()).decode()
        return JSONResponse(
            {
                "conversations": [self.summary(d) for d in page],
                "next_cursor": cursor if has_more else None,
                "has_more": has_more,
            }
        )

    async def get_conversation(self, request: Request) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        details = self.conversations.get(request.path_params["conversation_id"])
        if details is None:
            return _error(404, "conversation_not_found", "Conversation not found")
        return JSONResponse(details)

    async def get_audio(self, request: Request) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        audio = self.audio.get(request.path_params["conversation_id"])
        if audio is None:
            return _error(404, "audio_not_found", "Audio not found")

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(audio), self.audio_chunk):
                yield audio[start : start + self.audio_chunk]

        return StreamingResponse(chunks(), media_type="audio/mpeg")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/convai/conversations", self.list_conversations),
                Route("/v1/convai/conversations/{conversation_id}", self.get_conversation),
                Route("/v1/convai/conversations/{conversation_id}/audio", self.get_audio),
            ]
        )


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"detail": {"status": code, "message": message}}, status_code=status, headers=headers
    )


def _validation_error(message: str) -> Response:
    return JSONResponse(
        {"detail": [{"loc": ["query"], "msg": message, "type": "value_error"}]}, status_code=422
    )


def seeded(now: int | None = None) -> FakeConversations:
    """A small account for demonstrations: three finished calls (two with audio), one running."""
    now = int(time.time()) if now is None else now
    fake = FakeConversations()
    fake.add("conv_demo_webhooked", start=now - 7200, audio=HELLO_MP3)
    fake.add("conv_demo_missed", start=now - 5400, turns=4, audio=HELLO_MP3)
    fake.add("conv_demo_missed_too", start=now - 3600, turns=2)
    fake.add("conv_demo_running", start=now - 60, status="in-progress")
    return fake


def main() -> None:  # pragma: no cover - a demonstration entry point
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", action="store_true", help="Start with a few conversations.")
    args = parser.parse_args()
    fake = seeded() if args.seed else FakeConversations()
    print(f"fake ElevenLabs API on http://127.0.0.1:{args.port} (xi-api-key: {fake.api_key})")
    uvicorn.run(fake.app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":  # pragma: no cover
    main()
