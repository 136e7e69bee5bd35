"""What the dialogue fakes share: scripted error answers, and serving on loopback.

A fake answers as its provider documents, including errors: a test queues the next answers
(``fail_next``) and the fake gives them, in order, before answering normally again.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response

MP3 = (Path(__file__).resolve().parents[2] / "fixtures" / "audio" / "hello.mp3").read_bytes()
# hello.mp3 is MPEG-2 layer III at 32 kb/s, 22050 Hz: its length is its size in bits / 32000.
MP3_FORMAT = "mp3_22050_32"
MP3_SECONDS = len(MP3) * 8 / 32000


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


@dataclass
class Scripted:
    """Queued answers for one route, taken in order before the normal answer."""

    queue: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def push(self, answer: Answer, times: int = 1) -> None:
        with self.lock:
            self.queue.extend([answer] * times)

    def take(self) -> Answer | None:
        with self.lock:
            return self.queue.pop(0) if self.queue else None


@contextlib.contextmanager
def serving(app: Starlette) -> Iterator[str]:
    from tests.conftest import serve_in_thread

    with serve_in_thread(app) as url:
        yield url


def audio_response() -> Response:
    return Response(MP3, media_type="audio/mpeg")


def run_main(description: str, build: Any) -> None:
    """``python -m tests.fakes.<name> --port N``: serve a fake for a manual run (README)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--api-key", default="test-api-key")
    parser.add_argument("--hmac-key", default=None)
    parser.add_argument("--no-callback", action="store_true")
    args = parser.parse_args()
    fake = build(args)
    fake.base_url = f"http://127.0.0.1:{args.port}"
    uvicorn.run(fake.app(), host="127.0.0.1", port=args.port, log_level="warning")
