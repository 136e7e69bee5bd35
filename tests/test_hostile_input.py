"""Hostile input (issue 15 item 4): property-based fuzzing of every endpoint through the real app,
a few raw hostile requests through real uvicorn, and the known cases that used to break: a signed
body nested 100,000 levels deep (500) and lone surrogate escapes (503 forever on SQLite, and a
handler failing until dead).

The invariants: never a 500 and never a traceback; an authentic body is stored and answered 200
whatever it holds; nothing is stored for what is not authentic.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.from_thread
import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from receiver.app import create_app
from receiver.registry import load_registry
from receiver.service import Services
from receiver.sources.elevenlabs import sign
from receiver.store.models import Delivery, Job
from tests.conftest import FIXTURES, SECRET, event_body, make_settings, wait_until

DEEP = 100_000
KIE_TOKEN = "kie-fuzz-url-token"


def stored_count(services: Services) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Delivery)).scalar_one())


def signed(body: bytes) -> dict[str, str]:
    return {"ElevenLabs-Signature": sign(SECRET, body), "Content-Type": "application/json"}


# -- the known cases, through real uvicorn, on SQLite and Postgres ------------------------------


def test_signed_body_nested_100000_levels_is_stored_not_500(  # type: ignore[no-untyped-def]
    settings, services_factory, live_server
) -> None:
    server = live_server(services_factory(settings), run_worker=False)
    for body in (b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP):
        response = server.post(body, headers=signed(body))
        assert response.status_code == 200, response.text
        delivery_id = response.json()["delivery_id"]
        with server.services.engine.connect() as conn:
            row = conn.execute(select(Delivery).where(Delivery.id == delivery_id)).one()
        assert row.body == body and "nested too deeply" in row.parse_error


def test_lone_surrogates_are_stored_and_processed(  # type: ignore[no-untyped-def]
    database_url, tmp_path, services_factory, live_server
) -> None:
    """``"c\\ud800"`` is valid JSON that no database can encode as text: the delivery is stored
    under the escaped id, and the transcription handler stores the conversation and its turn."""
    from handlers.elevenlabs.tables import Conversation, ConversationTurn

    services = services_factory(make_settings(database_url, tmp_path / "data"), load_registry())
    server = live_server(services)
    document = json.loads((FIXTURES / "elevenlabs" / "transcription_minimal.json").read_text())
    document["data"]["conversation_id"] = "c\ud800"
    document["data"]["transcript"][0]["message"] = "hi \udfff there \ud83d\ude00"
    body = json.dumps(document).encode()  # ensure_ascii: the surrogates travel as escapes
    assert b"\\ud800" in body
    response = server.post(body, headers=signed(body))
    assert response.status_code == 200, response.text
    assert server.post(body, headers=signed(body)).json()["duplicate"] is True

    def jobs_done() -> bool:
        with services.engine.connect() as conn:
            states = conn.execute(select(Job.status)).scalars().all()
        return bool(states) and all(state == "done" for state in states)

    wait_until(jobs_done)
    with services.engine.connect() as conn:
        delivery = conn.execute(select(Delivery)).one()
        conversation = conn.execute(select(Conversation)).one()
        turn = conn.execute(select(ConversationTurn)).one()
    assert delivery.subject_id == "c\\ud800" and delivery.body == body
    assert conversation.conversation_id == "c\\ud800"
    # The lone surrogate is kept as its escape; the valid pair is the emoji it encodes.
    assert turn.message == "hi \\udfff there \U0001f600"


def test_oversized_identifying_fields_are_stored(  # type: ignore[no-untyped-def]
    settings, services_factory, live_server
) -> None:
    """A type, conversation id or timestamp longer than their columns (Postgres enforces the
    lengths) is still stored; the dedupe key stays one per value (a digest when too long)."""
    server = live_server(services_factory(settings), run_worker=False)
    long_id = "c" * 600
    body = event_body("t" * 300, long_id, 10**40)
    response = server.post(body, headers=signed(body))
    assert response.status_code == 200, response.text
    again = server.post(body, headers=signed(body)).json()
    assert again["duplicate"] is True and again["delivery_id"] == response.json()["delivery_id"]
    with server.services.engine.connect() as conn:
        row = conn.execute(select(Delivery)).one()
    assert row.body == body and row.subject_id == long_id[:256]
    assert row.dedupe_key.startswith("key-sha256:") and len(row.event_type) == 128


# -- property-based fuzzing through the app (httpx's ASGI transport, for volume) --------------

PATHS = [
    "/webhooks/elevenlabs",
    "/webhooks/kie",
    "/webhooks/nope",
    "/webhooks/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/ui/",
    "/api/v1/deliveries",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PROPFIND", "X-NOPE"]
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-16",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "application/json\u00e9",
    "",
    ";;;",
    "a" * 5000,
]
SIGNATURE_HEADERS = ["ElevenLabs-Signature", "elevenlabs-signature", "X-Webhook-Signature"]
TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~",
    min_size=1,
    max_size=40,
)
HEADER_VALUE = st.one_of(
    st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.just(b"t=1,v0=" + b"0" * 64 + b",v0=" + b"f" * 64),
    st.just(b"t=99999999999999999999999999,v0=" + b"a" * 64),
    st.just(b"x" * 20_000),  # oversized
    st.just("t=1,v0=\u00e9".encode()),
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b""))


def _nested(depth: int, kind: str) -> bytes:
    if kind == "l":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"0" + b"}" * depth


BODY = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(_nested, st.sampled_from([10, 1023, 1025, 5000, DEEP]), st.sampled_from(["l", "d"])),
    st.integers(min_value=1, max_value=20_000).map(lambda n: b"1" * n),  # huge numbers
    st.just(b'{"type":1e999999,"event_timestamp":-1e400,"data":{"conversation_id":NaN}}'),
    st.just(b'{"type":"post_call_transcription","data":{"conversation_id":"\\ud800"}}'),
    st.just(b'{"taskId":"\\udfff","data":{"state":"\\ud800"}}'),
    st.just(b'{"data": {"conversation_id": "\xff\xfe"}}'),  # invalid UTF-8
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    ).map(lambda doc: json.dumps(doc).encode()),
    st.builds(
        lambda t, c, ts: event_body(t, c, ts),
        st.text(max_size=40),
        st.text(max_size=600),
        st.integers(min_value=-(2**70), max_value=2**70),
    ),
)


@pytest.fixture
def fuzz_app(tmp_path: Path, services_factory: Any) -> Iterator[tuple[Any, Services]]:
    """The real app on SQLite, its inbox running, driven on one event loop kept for the test
    (the deepest list stays in memory, the deepest object is spooled: both paths are fuzzed)."""
    settings = make_settings(
        f"sqlite:///{tmp_path / 'fuzz.db'}",
        tmp_path / "data",
        kie_hmac_keys=["kie-fuzz-key"],
        kie_url_token=KIE_TOKEN,
        spool_threshold_bytes=300_000,
        max_body_bytes=1_000_000,
        admin_token="fuzz-admin-token",
    )
    services = services_factory(settings, load_registry())
    app = create_app(services=services, run_worker=False)
    services.inbox.start()
    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            transport = httpx.ASGITransport(app=app)  # raises what the app lets escape
            client = httpx.AsyncClient(transport=transport, base_url="http://test")
            yield (portal, client), services
            portal.call(client.aclose)
    finally:
        services.inbox.stop()


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(METHODS),
    path=st.one_of(
        st.sampled_from(PATHS),
        st.text(max_size=30).map(
            lambda t: "/webhooks/" + quote(t, safe="", errors="surrogatepass")
        ),
    ),
    query=st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=3),
    headers=st.lists(st.tuples(st.one_of(TOKEN, st.sampled_from(SIGNATURE_HEADERS)), HEADER_VALUE)),
    content_type=st.sampled_from(CONTENT_TYPES),
    body=BODY,
    authentic=st.booleans(),
    chunk=st.one_of(st.none(), st.integers(min_value=1, max_value=700)),
)
def test_fuzz_every_endpoint(  # type: ignore[no-untyped-def]
    fuzz_app, method, path, query, headers, content_type, body, authentic, chunk
) -> None:
    (portal, client), services = fuzz_app
    sent: list[tuple[str, bytes]] = list(headers)  # type: ignore[arg-type]
    if content_type is not None:
        sent.append(("content-type", content_type.encode("utf-8")))
    genuine = authentic and method == "POST" and path == "/webhooks/elevenlabs"
    genuine = genuine and not (content_type or "").lower().startswith(
        ("multipart/", "application/x-www-form-urlencoded")
    )
    if authentic:
        sent = [(k, v) for k, v in sent if k.lower() != "elevenlabs-signature"]
        sent.append(("ElevenLabs-Signature", sign(SECRET, body).encode()))
    before = stored_count(services)
    content: Any = body if chunk is None else _chunks(body, chunk)
    response = portal.call(
        lambda: client.request(method, path, params=query, headers=sent, content=content)
    )
    text = response.content
    assert response.status_code < 500, (response.status_code, text[:300])
    assert b"Traceback" not in text and b'File "' not in text
    is_json = response.headers.get("content-type") == "application/json"
    if response.status_code >= 400 and is_json and method != "HEAD":
        assert set(response.json()) == {"error", "detail"}
    after = stored_count(services)
    if genuine:
        assert response.status_code == 200, text[:300]
        assert after - before == (0 if response.json()["duplicate"] else 1)
    else:
        assert after == before, (method, path, response.status_code)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    source=st.sampled_from(["elevenlabs", "kie"]),
    headers=st.lists(st.tuples(TOKEN, HEADER_VALUE), max_size=3),
    content_type=st.sampled_from([None, "application/json", "text/plain", "", "a" * 5000]),
    body=BODY,
    chunk=st.one_of(st.none(), st.integers(min_value=1, max_value=700)),
)
@example(source="elevenlabs", headers=[], content_type=None, body=_nested(DEEP, "l"), chunk=None)
@example(source="kie", headers=[], content_type="", body=_nested(DEEP, "d"), chunk=999)
@example(source="kie", headers=[], content_type=None, body=_nested(5000, "d"), chunk=None)
@example(
    source="elevenlabs",
    headers=[],
    content_type=None,
    body=event_body(conversation_id="c\ud800"),
    chunk=None,
)
@example(
    source="kie",
    headers=[],
    content_type=None,
    body=b'{"taskId":"t\\udfff","data":{"state":"\\ud800"}}',
    chunk=3,
)
@example(source="elevenlabs", headers=[], content_type=None, body=b"1" * 20_000, chunk=None)
def test_fuzz_authentic_deliveries_are_always_stored(  # type: ignore[no-untyped-def]
    fuzz_app, source, headers, content_type, body, chunk
) -> None:
    """Whatever an authentic body holds, it is stored and answered 200 (ElevenLabs signed with
    HMAC, kie.ai with its URL token, so any body is authentic)."""
    (portal, client), services = fuzz_app
    sent: list[tuple[str, bytes]] = [(k, v) for k, v in headers if k.lower() != "content-length"]
    if content_type is not None:
        sent.append(("content-type", content_type.encode()))
    params = {}
    if source == "elevenlabs":
        sent.append(("ElevenLabs-Signature", sign(SECRET, body).encode()))
    else:
        params["token"] = KIE_TOKEN
    sent = [
        (k, v) for k, v in sent if k.lower() not in {"x-webhook-signature", "x-webhook-timestamp"}
    ]
    before = stored_count(services)
    content: Any = body if chunk is None else _chunks(body, chunk)
    response = portal.call(
        lambda: client.post(f"/webhooks/{source}", params=params, headers=sent, content=content)
    )
    assert response.status_code == 200, response.text[:300]
    assert stored_count(services) - before == (0 if response.json()["duplicate"] else 1)


# -- raw requests through real uvicorn ----------------------------------------------------------


def _raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_raw_hostile_requests_through_uvicorn(settings, services_factory, live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server(services_factory(settings), run_worker=False)
    deep = b"[" * DEEP + b"]" * DEEP
    requests = [
        # a header value that is not UTF-8, repeated signature headers
        b"POST /webhooks/elevenlabs HTTP/1.1\r\nHost: x\r\nElevenLabs-Signature: \xff\xfe\r\n"
        b"ElevenLabs-Signature: t=1,v0=00\r\nContent-Length: 2\r\n\r\n{}",
        # a header far beyond any sane size
        b"POST /webhooks/kie HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        # broken chunk framing
        b"POST /webhooks/elevenlabs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n",
        # a path and query that are not UTF-8
        b"GET /webhooks/\xff%ff?\xfe=%fe HTTP/1.1\r\nHost: x\r\n\r\n",
        # a deep body, unsigned, chunked
        b"POST /webhooks/elevenlabs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(deep)
        + deep
        + b"\r\n0\r\n\r\n",
    ]
    for request in requests:
        answer = _raw(server.url, request)
        status = answer.split(b" ", 2)[1] if answer else b"(closed)"
        assert not status.startswith(b"5"), answer[:300]
        assert b"Traceback" not in answer
    assert stored_count(server.services) == 0
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # still serving
