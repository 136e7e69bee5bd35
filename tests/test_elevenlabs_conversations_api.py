"""The ElevenLabs conversations API client, against the local fake over real HTTP.

The fake's answers are checked against the official SDK's pydantic types, so neither the fake
nor the client can drift from the documented protocol unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from elevenlabs.types import GetConversationResponseModel, GetConversationsPageResponseModel

from receiver.settings import Settings
from receiver.sources.elevenlabs.conversations_api import (
    APIKeyRejected,
    ConversationsAPI,
    ConversationsAPIError,
    NotConfigured,
)
from receiver.sources.provider_api import parse_retry_after
from tests.conftest import serve_in_thread
from tests.fakes.elevenlabs_conversations import API_KEY, HELLO_MP3, FakeConversations


@pytest.fixture
def fake() -> Iterator[tuple[FakeConversations, str]]:
    fake = FakeConversations()
    with serve_in_thread(fake.app()) as url:
        yield fake, url


def run_with_api(url: str, coro_fn: Any, *, api_key: str = API_KEY, **kwargs: Any) -> Any:
    """Run ``coro_fn(api)`` with a client whose backoff sleeps are recorded, not slept."""
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> Any:
        async with httpx.AsyncClient(timeout=10) as http:
            api = ConversationsAPI(
                http, base_url=url, api_key=api_key, backoff_base=0.01, sleep=sleep, **kwargs
            )
            return await coro_fn(api)

    return asyncio.run(main()), sleeps


def test_fake_answers_parse_with_the_sdk_types(fake: tuple[FakeConversations, str]) -> None:
    server, url = fake
    server.add("conv_a", audio=HELLO_MP3)
    server.add("conv_b", status="in-progress")
    headers = {"xi-api-key": API_KEY}
    page = httpx.get(f"{url}/v1/convai/conversations", headers=headers).json()
    parsed = GetConversationsPageResponseModel.model_validate(page)
    assert {c.conversation_id for c in parsed.conversations} == {"conv_a", "conv_b"}
    details = httpx.get(f"{url}/v1/convai/conversations/conv_a", headers=headers).json()
    model = GetConversationResponseModel.model_validate(details)
    assert model.has_audio and len(model.transcript) == 3
    assert model.metadata.call_duration_secs == 42
    audio = httpx.get(f"{url}/v1/convai/conversations/conv_a/audio", headers=headers)
    assert audio.content == HELLO_MP3 and audio.headers["content-type"] == "audio/mpeg"


def test_pages_follow_next_cursor_with_the_window_and_agent_filters(
    fake: tuple[FakeConversations, str],
) -> None:
    server, url = fake
    for i in range(7):
        server.add(f"conv_{i}", start=1_000_000 + i * 10)
    server.add("conv_other_agent", start=1_000_005, agent_id="agent-2")
    server.add("conv_too_old", start=900_000)

    async def collect(api: ConversationsAPI) -> list[list[str]]:
        pages = api.pages(
            after_unix=1_000_000, before_unix=2_000_000, agent_id="agent-1", page_size=3
        )
        return [[c.conversation_id for c in page.conversations] async for page in pages]

    pages, _ = run_with_api(url, collect)
    assert pages == [["conv_6", "conv_5", "conv_4"], ["conv_3", "conv_2", "conv_1"], ["conv_0"]]
    lists = [params for path, params in server.requests if path == "/v1/convai/conversations"]
    assert [p.get("cursor") is None for p in lists] == [True, False, False]
    assert all(
        p["agent_id"] == "agent-1"
        and p["page_size"] == "3"
        and p["call_start_after_unix"] == "1000000"
        and p["call_start_before_unix"] == "2000000"
        for p in lists
    )


def test_page_size_is_capped_at_the_documented_100(fake: tuple[FakeConversations, str]) -> None:
    server, url = fake
    run_with_api(url, lambda api: api.list_page(page_size=500))
    assert server.requests[-1][1]["page_size"] == "100"


def test_429_waits_what_retry_after_says_and_5xx_backs_off(
    fake: tuple[FakeConversations, str],
) -> None:
    server, url = fake
    server.add("conv_a")
    server.fail_next(429, retry_after="3")
    server.fail_next(503)
    server.fail_next(500)
    details, sleeps = run_with_api(url, lambda api: api.get("conv_a"))
    assert details["conversation_id"] == "conv_a"
    assert len(server.paths("get")) == 4
    assert sleeps[0] == 3.0  # Retry-After honoured
    assert 0 < sleeps[1] <= 0.02 and 0 < sleeps[2] <= 0.04  # exponential, with jitter


def test_retries_end_with_one_clear_error(fake: tuple[FakeConversations, str]) -> None:
    server, url = fake
    server.add("conv_a")
    server.fail_next(502, times=10)
    with pytest.raises(ConversationsAPIError) as caught:
        run_with_api(url, lambda api: api.get("conv_a"), max_attempts=3)
    assert str(caught.value) == (
        "getting conversation conv_a: HTTP 502: forced failure (after 3 attempts)"
    )
    assert len(server.paths("get")) == 3


def test_401_stops_at_once_and_never_shows_the_key(fake: tuple[FakeConversations, str]) -> None:
    server, url = fake
    with pytest.raises(APIKeyRejected) as caught:
        run_with_api(url, lambda api: api.list_page(), api_key="xi-wrong-key-secret")
    message = str(caught.value)
    assert "401" in message and "VOICEHOOKS_ELEVENLABS_API_KEY" in message
    assert "xi-wrong-key-secret" not in message and "\n" not in message
    assert len(server.requests) == 1  # no retry can fix a bad key


def test_404_is_not_retried(fake: tuple[FakeConversations, str]) -> None:
    server, url = fake
    with pytest.raises(ConversationsAPIError, match="HTTP 404: Conversation not found"):
        run_with_api(url, lambda api: api.get("conv_missing"))
    assert len(server.requests) == 1


def test_audio_streams_in_chunks_and_respects_its_cap(fake: tuple[FakeConversations, str]) -> None:
    server, url = fake
    audio = HELLO_MP3 * 40
    server.add("conv_a", audio=audio)
    server.audio_chunk = 4096
    chunks: list[bytes] = []
    size, _ = run_with_api(url, lambda api: api.stream_audio("conv_a", chunks.append))
    assert size == len(audio) and b"".join(chunks) == audio
    assert len(chunks) > 1 and max(map(len, chunks)) < len(audio)
    with pytest.raises(ConversationsAPIError, match="larger than 1000 bytes"):
        run_with_api(
            url, lambda api: api.stream_audio("conv_a", chunks.append), max_audio_bytes=1000
        )


def test_conversation_ids_cannot_leave_their_path(fake: tuple[FakeConversations, str]) -> None:
    """An id from the API's answer is one path segment, escaped: it cannot reach another URL."""
    _, url = fake
    sent: list[bytes] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request.url.raw_path)

    async def main() -> None:
        async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
            api = ConversationsAPI(http, base_url=url, api_key=API_KEY)
            with contextlib.suppress(ConversationsAPIError):
                await api.get("../../v1/other?x=1")

    asyncio.run(main())
    assert sent == [b"/v1/convai/conversations/..%2F..%2Fv1%2Fother%3Fx%3D1"]


def test_no_key_configured_says_which_setting(tmp_path: Any) -> None:
    async def build() -> None:
        async with httpx.AsyncClient() as http:
            ConversationsAPI.from_settings(Settings(data_dir=tmp_path), http)

    with pytest.raises(NotConfigured, match="VOICEHOOKS_ELEVENLABS_API_KEY"):
        asyncio.run(build())


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=now) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("999999") == 3600  # capped
