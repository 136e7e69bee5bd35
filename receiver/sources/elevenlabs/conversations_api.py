"""The ElevenLabs conversations API: list conversations, get one, stream its audio.

``voicehooks elevenlabs backfill`` and the periodic reconciliation ask it for the conversations
whose webhooks never arrived. Three endpoints (see the provider's reference,
``elevenlabs-conversations-api.md``):

* ``GET /v1/convai/conversations``: a page of summaries (``page_size`` up to 100), the next page
  through ``cursor`` = the previous page's ``next_cursor`` while ``has_more``;
* ``GET /v1/convai/conversations/{id}``: the conversation's details, the very ``data`` object a
  ``post_call_transcription`` webhook carries;
* ``GET /v1/convai/conversations/{id}/audio``: the recording (MP3), streamed to a sink.

Every request carries the key in ``xi-api-key``. A 429 or a 5xx (or a dropped connection) is
retried with exponential backoff and jitter, waiting what ``Retry-After`` asks when it says; a
401 stops at once with one sentence naming the setting, since no retry can fix a bad key. The key
is never part of an error or a log line. Response bodies are read with a size cap.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any, Self
from urllib.parse import quote

import anyio
import httpx
import structlog
from pydantic import BaseModel, ConfigDict

from receiver.settings import Settings
from receiver.sources.provider_api import retry_after as provider_retry_after

log = structlog.get_logger(__name__)
MAX_PAGE_SIZE = 100
# Summaries (and details) of conversations that have ended, one way or the other.
FINISHED = frozenset({"done", "failed"})
RETRYABLE = frozenset({429, 500, 502, 503, 504})
MAX_JSON_BYTES = 64 * 1024 * 1024


class ConversationsAPIError(Exception):
    """A request that failed for good; the message is one line, without the key."""


class APIKeyRejected(ConversationsAPIError):
    """401: the key is wrong or revoked. Nothing else will work either, so callers stop."""


class NotConfigured(ConversationsAPIError):
    """No API key is set."""


class ConversationSummary(BaseModel):
    """One row of the list (unknown fields kept: the API keeps adding some)."""

    model_config = ConfigDict(extra="allow")

    conversation_id: str
    agent_id: str | None = None
    status: str | None = None
    start_time_unix_secs: int | None = None
    call_duration_secs: int | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class ConversationsPage(BaseModel):
    model_config = ConfigDict(extra="allow")

    conversations: list[ConversationSummary]
    has_more: bool = False
    next_cursor: str | None = None


class ConversationsAPI:
    """A thin async client over a shared ``httpx.AsyncClient``.

    ``backoff_base``/``backoff_cap`` shape the retry delays (the tests make them tiny);
    ``sleep`` is injectable for the same reason.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        max_audio_bytes: int = 256 * 1024 * 1024,
        sleep: Callable[[float], Any] = anyio.sleep,
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._headers = {"xi-api-key": api_key, "accept": "application/json"}
        self._max_attempts = max(1, max_attempts)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_audio_bytes = max_audio_bytes
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, http: httpx.AsyncClient, **kwargs: Any) -> Self:
        if (
            settings.elevenlabs_api_key is None
            or not settings.elevenlabs_api_key.get_secret_value()
        ):
            raise NotConfigured(
                "no ElevenLabs API key configured: set VOICEHOOKS_ELEVENLABS_API_KEY"
            )
        kwargs.setdefault("max_audio_bytes", settings.max_body_bytes)
        return cls(
            http,
            base_url=settings.elevenlabs_base_url,
            api_key=settings.elevenlabs_api_key.get_secret_value(),
            **kwargs,
        )

    # -- the three endpoints --------------------------------------------------------------

    async def list_page(
        self,
        *,
        cursor: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        after_unix: int | None = None,
        before_unix: int | None = None,
        agent_id: str | None = None,
    ) -> ConversationsPage:
        params: dict[str, str | int] = {"page_size": max(1, min(page_size, MAX_PAGE_SIZE))}
        if cursor:
            params["cursor"] = cursor
        if after_unix is not None:
            params["call_start_after_unix"] = after_unix
        if before_unix is not None:
            params["call_start_before_unix"] = before_unix
        if agent_id:
            params["agent_id"] = agent_id
        document = await self._get_json("/v1/convai/conversations", params, "listing conversations")
        try:
            return ConversationsPage.model_validate(document)
        except ValueError as exc:
            raise ConversationsAPIError(
                f"listing conversations: the answer is not a page of conversations ({exc})"
            ) from None

    async def pages(
        self,
        *,
        after_unix: int | None = None,
        before_unix: int | None = None,
        agent_id: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> AsyncIterator[ConversationsPage]:
        """Every page, following ``next_cursor`` while ``has_more``."""
        cursor: str | None = None
        while True:
            page = await self.list_page(
                cursor=cursor,
                page_size=page_size,
                after_unix=after_unix,
                before_unix=before_unix,
                agent_id=agent_id,
            )
            yield page
            if not page.has_more or not page.next_cursor or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    async def get(self, conversation_id: str) -> dict[str, Any]:
        """The conversation's details: what a transcription webhook carries as ``data``."""
        document = await self._get_json(
            f"/v1/convai/conversations/{quote(conversation_id, safe='')}",
            {},
            f"getting conversation {conversation_id}",
        )
        if not isinstance(document, dict) or document.get("conversation_id") != conversation_id:
            raise ConversationsAPIError(
                f"getting conversation {conversation_id}: the answer is not that conversation"
            )
        return document

    async def stream_audio(self, conversation_id: str, write: Callable[[bytes], Any]) -> int:
        """Stream the recording into ``write`` chunk by chunk; returns its size in bytes."""
        path = f"/v1/convai/conversations/{quote(conversation_id, safe='')}/audio"
        what = f"getting the audio of conversation {conversation_id}"
        response = await self._send(path, {}, what)
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self._max_audio_bytes:
                    raise ConversationsAPIError(
                        f"{what}: larger than {self._max_audio_bytes} bytes; not stored"
                    )
                write(chunk)
        except httpx.HTTPError as exc:
            raise ConversationsAPIError(f"{what}: {type(exc).__name__}: {exc}") from None
        finally:
            await response.aclose()
        return size

    # -- plumbing -------------------------------------------------------------------------

    async def _get_json(self, path: str, params: dict[str, str | int], what: str) -> Any:
        response = await self._send(path, params, what)
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JSON_BYTES:
                    raise ConversationsAPIError(
                        f"{what}: answer larger than {MAX_JSON_BYTES} bytes"
                    )
        except httpx.HTTPError as exc:
            raise ConversationsAPIError(f"{what}: {type(exc).__name__}: {exc}") from None
        finally:
            await response.aclose()
        try:
            return json.loads(body)
        except ValueError:
            raise ConversationsAPIError(f"{what}: the answer is not JSON") from None

    async def _send(self, path: str, params: dict[str, str | int], what: str) -> httpx.Response:
        """The open (streaming) response of a successful request, after retries."""
        request = self._http.build_request(
            "GET", self._base_url + path, params=params, headers=self._headers
        )
        for attempt in range(1, self._max_attempts + 1):
            retry_after: float | None = None
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code < 300:
                    return response
                await response.aread()
                await response.aclose()
                if response.status_code == 401:
                    raise APIKeyRejected(
                        "ElevenLabs refused the API key (401): check VOICEHOOKS_ELEVENLABS_API_KEY"
                    )
                problem = f"HTTP {response.status_code}{_detail(response)}"
                if response.status_code not in RETRYABLE:
                    raise ConversationsAPIError(f"{what}: {problem}")
                retry_after = provider_retry_after(response)
            if attempt == self._max_attempts:
                raise ConversationsAPIError(f"{what}: {problem} (after {attempt} attempts)")
            delay = self._delay(attempt, retry_after)
            log.info("elevenlabs_api_retry", what=what, problem=problem, delay=round(delay, 2))
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._backoff_cap)
        exponential = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
        return exponential / 2 + random.uniform(0, exponential / 2)  # jitter, not crypto


def _detail(response: httpx.Response) -> str:
    """A short, single-line reason from an error answer (``{"detail": ...}``), if any."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return ""
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("status")
    if not isinstance(detail, str) or not detail:
        return ""
    text = " ".join(detail.split())
    return f": {text[:200]}"
