"""A local stand-in for ElevenLabs' ``POST /v1/text-to-dialogue/with-timestamps``.

It answers as the OpenAPI page documents (reference/elevenlabs-text-to-dialogue.md): header
``xi-api-key`` (401 ``invalid_api_key`` otherwise), 422 ``HTTPValidationError`` for a request
that misses fields or names an unknown ``output_format``, and for a good request an
``AudioWithTimestampsAndVoiceSegmentsResponseModel``: the real MP3 ``fixtures/audio/hello.mp3``
as ``audio_base64``, one voice segment per input (times shared out by characters over the
audio), and a character alignment. ``anomaly="repeated"`` answers the repeated timestamps users
report on long inputs. A test checks these answers parse with the ``elevenlabs`` SDK's own type.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.dialogue.script import ELEVENLABS_OUTPUT_FORMATS
from tests.fakes.scripted import MP3, MP3_SECONDS, Answer, Scripted, run_main

# The segments end a little before the file does (the MP3's last frames are silence).
SPOKEN_SECONDS = round(MP3_SECONDS - 0.25, 3)


def answer_for(inputs: list[dict[str, Any]], anomaly: str | None = None) -> dict[str, Any]:
    text = "".join(item["text"] for item in inputs)
    per_char = SPOKEN_SECONDS / max(1, len(text))
    starts = [round(i * per_char, 3) for i in range(len(text))]
    ends = [round((i + 1) * per_char, 3) for i in range(len(text))]
    segments = []
    position = 0
    for index, item in enumerate(inputs):
        first, last = position, position + len(item["text"])
        segments.append(
            {
                "voice_id": item["voice_id"],
                "start_time_seconds": starts[first] if first < len(starts) else 0.0,
                "end_time_seconds": ends[last - 1] if last > 0 else 0.0,
                "character_start_index": first,
                "character_end_index": last,
                "dialogue_input_index": index,
            }
        )
        position = last
    if anomaly == "repeated" and len(segments) >= 2:
        # What users report on long inputs: later segments stuck on one timestamp.
        stuck = segments[0]["end_time_seconds"]
        for seg in segments[1:]:
            seg["start_time_seconds"] = seg["end_time_seconds"] = stuck
        cut = segments[1]["character_start_index"]
        starts[cut:] = ends[cut:] = [stuck] * (len(text) - cut)
    alignment = {
        "characters": list(text),
        "character_start_times_seconds": starts,
        "character_end_times_seconds": ends,
    }
    return {
        "audio_base64": base64.b64encode(MP3).decode("ascii"),
        "alignment": alignment,
        "normalized_alignment": alignment,
        "voice_segments": segments,
    }


def _missing(loc: list[Any]) -> dict[str, Any]:
    return {"loc": loc, "msg": "Field required", "type": "missing"}


@dataclass
class ElevenLabsDialogueFake:
    api_key: str = "xi-test-api-key"
    anomaly: str | None = None
    base_url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    answers: Scripted = field(default_factory=Scripted)

    def fail_next(self, answer: Answer, times: int = 1) -> None:
        self.answers.push(answer, times)

    async def with_timestamps(self, request: Request) -> Response:
        if request.headers.get("xi-api-key") != self.api_key:
            detail = {"status": "invalid_api_key", "message": "Invalid API key"}
            return JSONResponse({"detail": detail}, status_code=401)
        body = await request.json()
        self.requests.append({"body": body, "params": dict(request.query_params)})
        scripted = self.answers.take()
        if scripted is not None:
            return scripted.response()
        errors = []
        output_format = request.query_params.get("output_format")
        if output_format is not None and output_format not in ELEVENLABS_OUTPUT_FORMATS:
            errors.append(
                {
                    "loc": ["query", "output_format"],
                    "msg": f"Input should be one of the documented formats, not {output_format}",
                    "type": "enum",
                }
            )
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list):
            errors.append(_missing(["body", "inputs"]))
            inputs = []
        for n, item in enumerate(inputs):
            for key in ("text", "voice_id"):
                if not isinstance(item, dict) or not isinstance(item.get(key), str):
                    errors.append(_missing(["body", "inputs", n, key]))
        if errors:
            return JSONResponse({"detail": errors}, status_code=422)
        return JSONResponse(answer_for(inputs, self.anomaly))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(
                    "/v1/text-to-dialogue/with-timestamps",
                    self.with_timestamps,
                    methods=["POST"],
                )
            ]
        )


if __name__ == "__main__":
    run_main(
        "A local ElevenLabs text-to-dialogue with-timestamps endpoint.",
        lambda a: ElevenLabsDialogueFake(api_key=a.api_key),
    )
