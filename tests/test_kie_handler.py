"""The kie.ai dialogue handler: forward-only task state, and the audio fetched from a real server.

The result URLs in the fixtures are rewritten to a small ``http.server`` on loopback that serves
``fixtures/audio/hello.mp3`` (or an error, an HTML page, an oversized file) so every download goes
through httpx, the worker's shared client and the blob store for real.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from handlers.kie import dialogue as kie_dialogue
from handlers.kie.dialogue import merge, record_dialogue_task, task_values
from handlers.kie.tables import get_task
from receiver.body import ReceivedBody
from receiver.download import audio_format, sniff_audio
from receiver.inbox import IncomingDelivery, Receipt
from receiver.registry import HandlerSpec, Registry
from receiver.sources.base import Authenticity
from receiver.sources.kie import EVENT_TYPE
from receiver.sources.kie.models import parse_callback
from receiver.store.models import Job
from tests.test_kie_source import (
    FAIL_ID,
    KEY,
    SUCCESS_ID,
    VARIANT_ID,
    fixture_doc,
    kie_settings,
    post_kie,
)

MP3 = (Path(__file__).resolve().parent.parent / "fixtures" / "audio" / "hello.mp3").read_bytes()
REGISTRY = Registry.of([HandlerSpec("kie", EVENT_TYPE, record_dialogue_task)])
jobs_table = Job.__table__


# -- a stand-in for kie.ai's file host ---------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = MP3
    content_type: str | None = "audio/mpeg"
    send_length: bool = True


@dataclass
class AudioServer:
    """Serves scripted replies per path: each request takes the next one, the last repeats."""

    url: str = ""
    routes: dict[str, list[Reply]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)

    def route(self, path: str, *replies: Reply) -> str:
        self.routes[path] = list(replies) or [Reply()]
        return f"{self.url}{path}"

    def _next(self, path: str) -> Reply:
        self.hits[path] += 1
        queue = self.routes.get(path)
        if not queue:
            return Reply(404, b"not found", "text/plain")
        return queue.pop(0) if len(queue) > 1 else queue[0]


@pytest.fixture
def audio_server() -> Iterator[AudioServer]:
    state = AudioServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            reply = state._next(self.path.split("?")[0])
            self.send_response(reply.status)
            if reply.content_type:
                self.send_header("Content-Type", reply.content_type)
            if reply.send_length:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()  # HTTP/1.0: without a length the body ends when we close
            self.wfile.write(reply.body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


# -- helpers -----------------------------------------------------------------------------------


def body_with(name: str, urls: list[str] | None = None, **data: Any) -> bytes:
    """A fixture callback, its result URLs pointed at ``urls``, other ``data`` fields replaced."""
    document = fixture_doc(name)
    if urls is not None:
        document["data"]["resultJson"] = json.dumps({"resultUrls": urls})
    document["data"].update(data)
    return json.dumps(document, ensure_ascii=False).encode()


def deliver(services, body: bytes) -> Receipt:  # type: ignore[no-untyped-def]
    """Store a callback as the ingest path would (real identify), in-process."""
    sha = hashlib.sha256(body).hexdigest()
    identity = services.sources["kie"].identify(ReceivedBody(len(body), sha, data=body))
    incoming = IncomingDelivery(
        source="kie",
        identity=identity,
        auth=Authenticity("hmac", 0),
        sha256=sha,
        size=len(body),
        body=body,
    )
    return services.inbox.accept_now(incoming)


def drain(services) -> int:  # type: ignore[no-untyped-def]
    return asyncio.run(services.worker.drain())


def jobs(services) -> list[Any]:  # type: ignore[no-untyped-def]
    with services.engine.connect() as conn:
        return conn.execute(select(jobs_table).order_by(jobs_table.c.id)).all()


def task(services, task_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    row = get_task(services.engine, task_id)
    assert row is not None, f"no row for task {task_id}"
    return row


def blob_files(services) -> list[Path]:  # type: ignore[no-untyped-def]
    roots = [services.blobs.root, services.blobs.spool_dir]
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-place download backoff is real, only shorter, to keep the suite fast."""
    monkeypatch.setattr(kie_dialogue, "DOWNLOAD_BACKOFF_SECONDS", 0.01)


@pytest.fixture
def kie_services(database_url, tmp_path, services_factory):  # type: ignore[no-untyped-def]
    return services_factory(kie_settings(database_url, tmp_path / "data"), REGISTRY)


@pytest.fixture
def sqlite_services(tmp_path, services_factory):  # type: ignore[no-untyped-def]
    """For download edge cases, where the database makes no difference."""

    def build(**overrides: object):  # type: ignore[no-untyped-def]
        url = f"sqlite:///{tmp_path / 'kie.db'}"
        return services_factory(kie_settings(url, tmp_path / "data", **overrides), REGISTRY)

    return build


# -- success and the audio ---------------------------------------------------------------------


def test_success_records_the_task_and_stores_the_audio(kie_services, audio_server) -> None:  # type: ignore[no-untyped-def]
    url = audio_server.route(f"/kie/{SUCCESS_ID}.mp3")
    body = body_with("success", [url])
    receipt = deliver(kie_services, body)
    assert drain(kie_services) == 1
    assert [j.status for j in jobs(kie_services)] == ["done"]

    row = task(kie_services, SUCCESS_ID)
    assert row["state"] == "success" and row["model"] == "elevenlabs/text-to-dialogue-v3"
    assert [t["voice"] for t in row["dialogue"]] == ["Rachel", "Adam", "Rachel", "Adam"]
    assert row["dialogue"][1]["text"].startswith("Thanks, Rachel. [laughs]")
    assert (row["stability"], row["language_code"]) == (0.5, "en")
    assert row["result_urls"] == [url]
    assert (row["kie_code"], row["cost_time_ms"]) == (200, 8423)
    assert row["create_time"].startswith("2025-10-09T09:01:43.922")
    assert row["complete_time"].startswith("2025-10-09T09:01:52.345")
    assert row["fail_code"] is None and row["audio_error"] is None
    assert row["raw_record"] == json.loads(body)["data"]
    assert row["last_delivery_id"] == receipt.delivery_id

    assert row["audio_size"] == len(MP3)
    assert row["audio_sha256"] == hashlib.sha256(MP3).hexdigest()
    assert row["audio_content_type"] == "audio/mpeg"
    assert row["audio_blob_path"].endswith(".mp3")
    assert kie_services.blobs.path(row["audio_blob_path"]).read_bytes() == MP3
    assert [f["url"] for f in row["audio_files"]] == [url]
    assert audio_server.hits[f"/kie/{SUCCESS_ID}.mp3"] == 1


def test_task_id_variant_is_recorded_under_its_id(sqlite_services, audio_server) -> None:  # type: ignore[no-untyped-def]
    services = sqlite_services()
    url = audio_server.route("/variant.mp3")
    deliver(services, body_with("task_id_variant", [url]))
    drain(services)
    row = task(services, VARIANT_ID)
    assert row["state"] == "success" and row["audio_size"] == len(MP3)
    assert [t["voice"] for t in row["dialogue"]] == ["Rachel", "Adam", "21m00Tcm4TlvDq8ikWAM"]


def test_every_result_url_is_downloaded(sqlite_services, audio_server) -> None:  # type: ignore[no-untyped-def]
    services = sqlite_services()
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 64
    first = audio_server.route("/a.mp3")
    second = audio_server.route("/b", Reply(body=wav, content_type="application/octet-stream"))
    deliver(services, body_with("success", [first, second]))
    drain(services)
    row = task(services, SUCCESS_ID)
    assert row["audio_sha256"] == hashlib.sha256(MP3).hexdigest()
    assert [(f["format"], f["size"]) for f in row["audio_files"]] == [
        ("mp3", len(MP3)),
        ("wav", len(wav)),
    ]
    assert row["audio_files"][1]["blob_path"].endswith(".wav")


# -- the state machine -------------------------------------------------------------------------


def test_late_waiting_never_downgrades_success(kie_services, audio_server) -> None:  # type: ignore[no-untyped-def]
    url = audio_server.route("/late.mp3")
    success = deliver(kie_services, body_with("success", [url]))
    drain(kie_services)
    deliver(kie_services, body_with("waiting"))
    deliver(kie_services, body_with("waiting", state="generating"))
    assert drain(kie_services) == 2
    assert [j.status for j in jobs(kie_services)] == ["done", "done", "done"]
    row = task(kie_services, SUCCESS_ID)
    assert row["state"] == "success" and row["audio_size"] == len(MP3)
    assert row["result_urls"] == [url] and row["cost_time_ms"] == 8423
    assert row["last_delivery_id"] == success.delivery_id
    assert audio_server.hits["/late.mp3"] == 1


def test_states_move_forward_to_success(kie_services, audio_server) -> None:  # type: ignore[no-untyped-def]
    url = audio_server.route("/forward.mp3")
    deliver(kie_services, body_with("waiting"))
    drain(kie_services)
    waiting = task(kie_services, SUCCESS_ID)
    assert waiting["state"] == "waiting" and waiting["audio_blob_path"] is None
    assert len(waiting["dialogue"]) == 4 and waiting["result_urls"] is None

    deliver(kie_services, body_with("waiting", state="generating"))
    drain(kie_services)
    assert task(kie_services, SUCCESS_ID)["state"] == "generating"

    last = deliver(kie_services, body_with("success", [url]))
    drain(kie_services)
    row = task(kie_services, SUCCESS_ID)
    assert row["state"] == "success" and row["audio_size"] == len(MP3)
    assert row["first_seen_at"] == waiting["first_seen_at"]
    assert row["last_delivery_id"] == last.delivery_id


def test_fail_is_recorded_and_final(kie_services, audio_server) -> None:  # type: ignore[no-untyped-def]
    url = audio_server.route("/never.mp3")
    deliver(kie_services, body_with("fail"))
    drain(kie_services)
    row = task(kie_services, FAIL_ID)
    assert (row["state"], row["kie_code"], row["kie_msg"]) == ("fail", 501, "Generation failed")
    assert row["fail_code"] == "500" and "audio generation failed" in row["fail_msg"]
    assert row["result_urls"] is None and row["audio_blob_path"] is None
    assert len(row["dialogue"]) == 3

    # A success claimed after the failure does not turn it around (and fetches nothing).
    deliver(kie_services, body_with("success", [url], taskId=FAIL_ID))
    drain(kie_services)
    assert task(kie_services, FAIL_ID)["state"] == "fail"
    assert audio_server.hits["/never.mp3"] == 0


def test_duplicate_callback_answers_duplicate_and_runs_nothing_twice(  # type: ignore[no-untyped-def]
    kie_services, audio_server, live_server
) -> None:
    url = audio_server.route("/dup.mp3")
    server = live_server(kie_services, run_worker=False)
    body = body_with("success", [url])
    first = post_kie(server.url, body, key=KEY)
    again = post_kie(server.url, body, key=KEY)  # kie.ai retrying: same bytes, fresh signature
    assert first.json()["duplicate"] is False
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["delivery_id"] == first.json()["delivery_id"]
    assert len(jobs(kie_services)) == 1
    drain(kie_services)

    # The same state in new bytes is a new delivery, but changes nothing and refetches nothing.
    resent = post_kie(server.url, body_with("success", [url], costTime=9999), key=KEY)
    assert resent.json()["duplicate"] is False
    drain(kie_services)
    assert [j.status for j in jobs(kie_services)] == ["done", "done"]
    row = task(kie_services, SUCCESS_ID)
    assert row["cost_time_ms"] == 8423 and row["last_delivery_id"] == first.json()["delivery_id"]
    assert audio_server.hits["/dup.mp3"] == 1


def test_a_second_success_fills_what_the_first_lacked(sqlite_services, audio_server) -> None:  # type: ignore[no-untyped-def]
    services = sqlite_services()
    url = audio_server.route("/fill.mp3")
    deliver(services, body_with("success", [], costTime=None))
    drain(services)
    bare = task(services, SUCCESS_ID)
    assert bare["state"] == "success" and bare["audio_blob_path"] is None
    later = deliver(services, body_with("success", [url]))
    drain(services)
    row = task(services, SUCCESS_ID)
    assert row["audio_size"] == len(MP3) and row["cost_time_ms"] == 8423
    assert row["result_urls"] == [url] and row["last_delivery_id"] == later.delivery_id


def test_other_models_are_left_alone(sqlite_services) -> None:  # type: ignore[no-untyped-def]
    services = sqlite_services()
    deliver(services, body_with("waiting", model="bytedance/seedream-v4"))
    drain(services)
    assert [j.status for j in jobs(services)] == ["done"]
    assert get_task(services.engine, SUCCESS_ID) is None


def values(name: str, delivery_id: int, **data: Any) -> dict[str, Any]:
    document = fixture_doc(name)
    document["data"].update(data)
    callback = parse_callback(document)
    return task_values(callback, callback.task_id or "", document["data"], delivery_id)


def test_merge_rules() -> None:
    waiting, success, fail = values("waiting", 1), values("success", 2), values("fail", 3)
    forward = merge(waiting, success)
    assert forward["state"] == "success" and forward["last_delivery_id"] == 2
    assert merge(success, waiting) == {}
    assert merge(success, success) == {}
    assert merge(fail, success | {"task_id": FAIL_ID}) == {}
    assert merge(success, values("waiting", 4, state="queuing")) == {}
    # behind, but the row lacks a description the late callback has: only that is filled
    described = merge(success | {"dialogue": None}, waiting)
    assert set(described) == {"dialogue", "updated_at", "last_delivery_id"}
    # unknown states never move past known later ones
    assert merge(values("waiting", 5, state="paused"), waiting) == {}
    assert merge(waiting, values("waiting", 6, state="paused")) == {}


# -- download failures -------------------------------------------------------------------------


def test_expired_result_url_ends_the_job_dead_and_says_so(kie_services, audio_server) -> None:  # type: ignore[no-untyped-def]
    secret_query = "X-Amz-Signature=deadbeefcafe"
    forbidden = audio_server.route("/old.mp3", Reply(403, b"<Error>AccessDenied</Error>", None))
    missing = audio_server.route("/older.mp3", Reply(404, b"Not Found", "text/plain"))
    deliver(kie_services, body_with("success", [f"{forbidden}?{secret_query}"]))
    deliver(kie_services, body_with("task_id_variant", [missing]))
    drain(kie_services)
    for job, task_id, status in zip(
        jobs(kie_services), [SUCCESS_ID, VARIANT_ID], [403, 404], strict=True
    ):
        assert job.status == "dead" and job.attempts == 1
        assert f"kie task {task_id}" in job.last_error
        assert "expired or is gone" in job.last_error and f"HTTP {status}" in job.last_error
        assert "deadbeefcafe" not in job.last_error
        # What is known of the task is kept, with the reason the audio is missing.
        row = task(kie_services, task_id)
        assert row["state"] == "success" and row["audio_blob_path"] is None
        assert row["audio_error"] == job.last_error and len(row["dialogue"]) >= 3
    assert audio_server.hits["/old.mp3"] == 1  # no point asking twice
    assert blob_files(kie_services) == []


def test_server_error_then_success_is_retried_in_place(sqlite_services, audio_server) -> None:  # type: ignore[no-untyped-def]
    services = sqlite_services()
    url = audio_server.route("/flaky.mp3", Reply(503, b"busy", "text/plain"), Reply())
    deliver(services, body_with("success", [url]))
    drain(services)
    (job,) = jobs(services)
    assert (job.status, job.attempts) == ("done", 1)
    assert audio_server.hits["/flaky.mp3"] == 2
    assert task(services, SUCCESS_ID)["audio_size"] == len(MP3)


def test_a_host_that_stays_down_retries_the_job_later(sqlite_services, audio_server) -> None:  # type: ignore[no-untyped-def]
    # A long job backoff, so "later" cannot come around within this drain.
    services = sqlite_services(job_retry_base_seconds=60, job_retry_max_seconds=60)
    url = audio_server.route("/down.mp3", Reply(502, b"bad gateway", "text/plain"))
    deliver(services, body_with("success", [url]))
    drain(services)
    (job,) = jobs(services)
    assert (job.status, job.attempts) == ("pending", 1)
    assert "still failing after 3 attempts" in job.last_error and "HTTP 502" in job.last_error
    assert audio_server.hits["/down.mp3"] == 3
    assert get_task(services.engine, SUCCESS_ID) is None  # nothing written by a failed attempt


def test_a_closed_port_is_a_network_error_retried_later(sqlite_services) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import free_port

    services = sqlite_services(job_retry_base_seconds=60, job_retry_max_seconds=60)
    deliver(services, body_with("success", [f"http://127.0.0.1:{free_port()}/gone.mp3"]))
    drain(services)
    (job,) = jobs(services)
    assert job.status == "pending" and "ConnectError" in job.last_error


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=b"<!doctype html><html><body>Not here</body></html>", content_type="text/html"),
        Reply(body=b'{"code": 404, "msg": "file not found"}', content_type="audio/mpeg"),
        Reply(body=b"", content_type="audio/mpeg"),
    ],
    ids=["html-page", "json-labelled-audio", "empty"],
)
def test_content_that_is_not_audio_is_refused(sqlite_services, audio_server, reply) -> None:  # type: ignore[no-untyped-def]
    services = sqlite_services()
    url = audio_server.route("/fake.mp3", reply)
    deliver(services, body_with("success", [url]))
    drain(services)
    (job,) = jobs(services)
    assert job.status == "dead" and "did not return audio" in job.last_error
    assert f"kie task {SUCCESS_ID}" in job.last_error
    assert blob_files(services) == []


@pytest.mark.parametrize("send_length", [True, False], ids=["declared", "streamed"])
def test_audio_over_the_size_cap_is_refused(sqlite_services, audio_server, send_length) -> None:  # type: ignore[no-untyped-def]
    services = sqlite_services(kie_max_audio_bytes=4096)
    url = audio_server.route("/big.mp3", Reply(send_length=send_length))
    deliver(services, body_with("success", [url]))
    drain(services)
    (job,) = jobs(services)
    assert job.status == "dead" and "VOICEHOOKS_KIE_MAX_AUDIO_BYTES" in job.last_error
    assert "4096 bytes" in job.last_error
    assert blob_files(services) == []


def test_audio_without_a_length_header_is_streamed_whole(sqlite_services, audio_server) -> None:  # type: ignore[no-untyped-def]
    services = sqlite_services(kie_max_audio_bytes=len(MP3))
    url = audio_server.route("/exact.mp3", Reply(send_length=False, content_type=None))
    deliver(services, body_with("success", [url]))
    drain(services)
    row = task(services, SUCCESS_ID)
    assert row["audio_size"] == len(MP3) and row["audio_content_type"] is None


def test_sniffing() -> None:
    assert sniff_audio(MP3[:64]) == "mp3"
    assert sniff_audio(b"\xff\xfb\x90\x00" + b"\x00" * 60) == "mp3"
    assert sniff_audio(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "wav"
    assert sniff_audio(b"OggS\x00\x02") == "ogg"
    assert sniff_audio(b"fLaC\x00") == "flac"
    assert sniff_audio(b"\x00\x00\x00\x20ftypM4A ") == "mp4"
    assert sniff_audio(b"<html>") is None
    assert audio_format(b"\x01\x02unknown codec", "audio/aac; charset=x") == "aac"
