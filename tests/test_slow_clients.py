"""Slow and greedy clients (issue 15 item 5): a trickling body is cut off with 408 and nothing is
stored; beyond VOICEHOOKS_MAX_CONNECTIONS requests in flight the receiver answers 503 JSON, and
past uvicorn's connection cap a plain 503, instead of running out of memory or descriptors."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from receiver.limits import CONNECTION_HEADROOM
from receiver.sources.elevenlabs import sign
from tests.conftest import SECRET, event_body, make_settings
from tests.serverproc import ServerProcess


def _open_request(url: str, body: bytes, sent: int) -> socket.socket:
    """A POST whose headers and first ``sent`` body bytes are on the wire; the rest never are."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST /webhooks/elevenlabs HTTP/1.1\r\nHost: {host}\r\n"
        f"ElevenLabs-Signature: {sign(SECRET, body)}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:sent])
    return sock


def _status(sock: socket.socket) -> tuple[int, bytes]:
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


def _rest_of_answer(sock: socket.socket, answer: bytes) -> bytes:
    """What is missing of an answer whose start was read: headers and body may come in
    separate packets."""
    rest = b""
    while True:
        head, sep, body = (answer + rest).partition(b"\r\n\r\n")
        if sep:
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            if len(body) >= length:
                return rest
        chunk = sock.recv(65536)
        if not chunk:
            return rest
        rest += chunk


def test_trickling_body_is_cut_off_with_408(tmp_path, services_factory, live_server) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        f"sqlite:///{tmp_path / 'v.db'}", tmp_path / "data", body_timeout_seconds=1
    )
    server = live_server(services_factory(settings), run_worker=False)
    body = event_body(conversation_id="slow")
    sock = _open_request(server.url, body, 1)
    started = time.monotonic()
    with sock:
        sock.settimeout(0.2)
        answer = b""
        for byte in body[1:]:  # one byte every 0.2 s: the whole body would take minutes
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                sock.sendall(bytes([byte]))
                continue
            break
        elapsed = time.monotonic() - started
        sock.settimeout(5)
        answer += _rest_of_answer(sock, answer)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"error":"body_timeout"' in answer
    assert 0.9 < elapsed < 5
    with server.services.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM deliveries").scalar_one() == 0
    assert list(server.services.blobs.spool_dir.iterdir()) == []


@pytest.fixture
def limited_server(tmp_path) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    server = ServerProcess(
        f"sqlite:///{tmp_path / 'v.db'}", tmp_path / "data", VOICEHOOKS_MAX_CONNECTIONS="3"
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_beyond_max_connections_answers_503(limited_server) -> None:  # type: ignore[no-untyped-def]
    url = limited_server.url
    body = event_body(conversation_id="held")
    held = [_open_request(url, body, 10) for _ in range(3)]  # three requests in flight
    try:
        time.sleep(0.3)
        refused = httpx.post(f"{url}/webhooks/elevenlabs", content=b"{}", timeout=10)
        assert refused.status_code == 503
        assert refused.json() == {
            "error": "overloaded",
            "detail": "too many requests in flight; please retry shortly",
        }
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    fine = event_body(conversation_id="after")
    ok = httpx.post(
        f"{url}/webhooks/elevenlabs",
        content=fine,
        headers={"ElevenLabs-Signature": sign(SECRET, fine)},
        timeout=10,
    )
    assert ok.status_code == 200, ok.text

    # Idle connections count too: past the hard cap uvicorn refuses, and recovers after.
    idle = []
    try:
        for _ in range(3 + CONNECTION_HEADROOM + 5):
            idle.append(socket.create_connection(("127.0.0.1", limited_server.port), timeout=10))
        time.sleep(0.3)
        probe = _open_request(url, fine, len(fine))
        with probe:
            status, _ = _status(probe)
        assert status == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
