"""A local stand-in for Sonna's ``POST /api/v1/tts/synthesize-dialogue`` and its audio CDN.

As reference/sonna-dialogue.md documents: Bearer auth, ``turns`` (``inputs`` as an alias) of
``{text, voice}``, 400 ``TEXT_TOO_LONG`` past 2,000 characters, 400 ``PROVIDER_MISMATCH`` for a
voice that is not an ElevenLabs one (here: ids starting ``openai-``), and an answer whose
``url`` points at this same server, which serves ``fixtures/audio/hello.mp3`` there. The common
errors (402, 403 ``PAID_ACCESS_REQUIRED``, 409, 429, 503) are queued by tests (``fail_next``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.scripted import Answer, Scripted, audio_response, run_main

MAX_CHARS = 2000


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {"error": {"code": code, "message": message}}, headers or {})


@dataclass
class SonnaFake:
    api_key: str = "sonna-test-api-key"
    base_url: str = ""
    credits: int = 100_000
    requests: list[dict[str, Any]] = field(default_factory=list)
    files: set[str] = field(default_factory=set)
    downloads: int = 0
    answers: Scripted = field(default_factory=Scripted)

    def fail_next(self, answer: Answer, times: int = 1) -> None:
        self.answers.push(answer, times)

    async def synthesize(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return error(401, "UNAUTHORIZED", "Invalid or missing API key").response()
        body = await request.json()
        self.requests.append(body)
        scripted = self.answers.take()
        if scripted is not None:
            return scripted.response()
        turns = body.get("turns", body.get("inputs"))
        if not isinstance(turns, list) or not turns:
            return error(400, "VALIDATION_ERROR", "turns is required").response()
        total = sum(len(str(t.get("text", ""))) for t in turns)
        if total > MAX_CHARS:
            return error(400, "TEXT_TOO_LONG", f"Total characters {total} exceed 2,000").response()
        for turn in turns:
            if str(turn.get("voice", "")).startswith("openai-"):
                return error(
                    400, "PROVIDER_MISMATCH", "All turns must use ElevenLabs voices"
                ).response()
        name = secrets.token_hex(8)
        self.files.add(name)
        self.credits -= total * 21 // 10
        return JSONResponse(
            {
                "url": f"{self.base_url}/sonna/api-ephemeral/tts/paid/user123/{name}.mp3",
                "remainingCredits": self.credits,
                "turns": len(turns),
                "totalChars": total,
                "projectCreated": "title" in body,
            }
        )

    async def file(self, request: Request) -> Response:
        name = request.path_params["name"].removesuffix(".mp3")
        if name not in self.files:
            return Response(b"expired", status_code=404)
        self.downloads += 1
        return audio_response()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v1/tts/synthesize-dialogue", self.synthesize, methods=["POST"]),
                Route("/sonna/api-ephemeral/tts/paid/user123/{name}", self.file, methods=["GET"]),
            ]
        )


if __name__ == "__main__":
    run_main(
        "A local Sonna dialogue endpoint and audio CDN.",
        lambda a: SonnaFake(api_key=a.api_key),
    )
