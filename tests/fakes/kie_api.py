"""A local stand-in for kie.ai's jobs API (``createTask``, ``recordInfo``) and its callbacks.

It speaks the documented protocol (reference/kie-text-to-dialogue-v3.md): Bearer auth, the
``{"code", "msg", "data"}`` envelope (whose ``code`` may be an error inside an HTTP 200), a task
record with ``param`` and ``resultJson`` as JSON strings, states waiting -> generating ->
success|fail, and a 429 past 20 new tasks in 10 s. When a task is created with a
``callBackUrl`` it sends the callback itself, signed as kie.ai signs (``X-Webhook-Timestamp``,
``X-Webhook-Signature`` over ``<taskId>.<timestamp>``), to the real receiver; with
``call_back=False`` it never calls back, so only polling can finish the task. Result URLs point
at this server, which serves ``fixtures/audio/hello.mp3``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.sources.kie import sign_headers
from tests.fakes.scripted import Answer, Scripted, audio_response, run_main

MODEL = "elevenlabs/text-to-dialogue-v3"
RATE_LIMIT, RATE_PERIOD = 20, 10.0


def envelope(code: int, msg: str, data: Any = None, status: int = 200) -> Answer:
    return Answer(status, {"code": code, "msg": msg, "data": data})


@dataclass
class KieFake:
    api_key: str = "kie-test-api-key"
    hmac_key: str | None = None  # sign callbacks with it (kie.ai's "callback signing" on)
    call_back: bool = True  # False: never calls back
    outcome: str = "success"  # or "fail"
    polls_before_final: int = 1  # recordInfo answers "generating" this many times first
    callback_delay: float = 0.05
    base_url: str = ""
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    record_calls: Counter[str] = field(default_factory=Counter)
    callbacks_sent: list[tuple[str, int]] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    create_answers: Scripted = field(default_factory=Scripted)
    record_answers: Scripted = field(default_factory=Scripted)
    _recent: deque[float] = field(default_factory=deque)
    _threads: list[threading.Thread] = field(default_factory=list)

    # -- test controls ---------------------------------------------------------------------

    def fail_create(self, answer: Answer, times: int = 1) -> None:
        self.create_answers.push(answer, times)

    def fail_record(self, answer: Answer, times: int = 1) -> None:
        self.record_answers.push(answer, times)

    def send_callback(
        self,
        task_id: str,
        url: str,
        *,
        body_override: dict[str, Any] | None = None,
    ) -> int:
        """POST the task's record to ``url`` as kie.ai does; returns the HTTP status."""
        document = body_override or {"code": 200, "msg": "success", "data": self.record(task_id)}
        headers = {"Content-Type": "application/json"}
        if self.hmac_key:
            headers |= sign_headers(self.hmac_key, task_id)
        response = httpx.post(url, content=json.dumps(document), headers=headers, timeout=30)
        self.callbacks_sent.append((task_id, response.status_code))
        return response.status_code

    def join(self, timeout: float = 10) -> None:
        for thread in self._threads:
            thread.join(timeout)

    # -- the task records ------------------------------------------------------------------

    def record(self, task_id: str) -> dict[str, Any]:
        task = self.tasks[task_id]
        state = task["state"]
        result = ""
        if state == "success":
            result = json.dumps({"resultUrls": [f"{self.base_url}/files/{task_id}.mp3"]})
        return {
            "taskId": task_id,
            "model": MODEL,
            "state": state,
            "param": json.dumps(task["request"]),
            "resultJson": result,
            "failCode": "500" if state == "fail" else None,
            "failMsg": "Audio generation failed: voice not found" if state == "fail" else None,
            "costTime": 4200 if state in ("success", "fail") else None,
            "completeTime": int(time.time() * 1000) if state in ("success", "fail") else None,
            "createTime": task["created_ms"],
        }

    def _finish(self, task_id: str) -> None:
        self.tasks[task_id]["state"] = self.outcome

    # -- HTTP ------------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    async def create_task(self, request: Request) -> Response:
        if not self._authorised(request):
            return envelope(401, "You do not have access permissions", status=401).response()
        scripted = self.create_answers.take()
        if scripted is not None:
            return scripted.response()
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - RATE_PERIOD:
            self._recent.popleft()
        if len(self._recent) >= RATE_LIMIT:
            return envelope(429, "Rate limit exceeded", status=429).response()
        self._recent.append(now)
        body = await request.json()
        if body.get("model") != MODEL:
            return envelope(422, f"model {body.get('model')!r} is not supported").response()
        dialogue = (body.get("input") or {}).get("dialogue")
        if not isinstance(dialogue, list) or not dialogue:
            return envelope(422, "input.dialogue is required").response()
        task_id = secrets.token_hex(16)
        self.created.append(body)
        self.tasks[task_id] = {
            "state": "waiting",
            "request": body,
            "created_ms": int(time.time() * 1000),
            "polls": 0,
        }
        callback = body.get("callBackUrl")
        if callback and self.call_back:
            thread = threading.Thread(target=self._call_back_later, args=(task_id, callback))
            self._threads.append(thread)
            thread.start()
        return JSONResponse({"code": 200, "msg": "success", "data": {"taskId": task_id}})

    def _call_back_later(self, task_id: str, url: str) -> None:
        time.sleep(self.callback_delay)
        self._finish(task_id)
        self.send_callback(task_id, url)

    async def record_info(self, request: Request) -> Response:
        if not self._authorised(request):
            return envelope(401, "You do not have access permissions", status=401).response()
        task_id = request.query_params.get("taskId", "")
        self.record_calls[task_id] += 1
        scripted = self.record_answers.take()
        if scripted is not None:
            return scripted.response()
        task = self.tasks.get(task_id)
        if task is None:
            return envelope(404, "task not found").response()
        if task["state"] not in ("success", "fail") and not self.call_back:
            task["polls"] += 1
            if task["polls"] > self.polls_before_final:
                self._finish(task_id)
            else:
                task["state"] = "generating"
        return JSONResponse({"code": 200, "msg": "success", "data": self.record(task_id)})

    async def file(self, request: Request) -> Response:
        self.downloads.append(request.path_params["name"])
        task_id = request.path_params["name"].removesuffix(".mp3")
        if task_id not in self.tasks:
            return Response(b"not found", status_code=404)
        return audio_response()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v1/jobs/createTask", self.create_task, methods=["POST"]),
                Route("/api/v1/jobs/recordInfo", self.record_info, methods=["GET"]),
                Route("/files/{name}", self.file, methods=["GET"]),
            ]
        )


if __name__ == "__main__":
    run_main(
        "A local kie.ai jobs API (createTask, recordInfo, signed callbacks).",
        lambda a: KieFake(api_key=a.api_key, hmac_key=a.hmac_key, call_back=not a.no_callback),
    )
