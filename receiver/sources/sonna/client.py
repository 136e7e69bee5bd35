"""Sonna's ``POST /api/v1/tts/synthesize-dialogue``: synchronous, answers the audio's ``url``.

Sorted for the job that called it: 400 ``TEXT_TOO_LONG`` / ``PROVIDER_MISMATCH`` (Sonna's own
checks), 401, 402 (no credit) and 403 (``PAID_ACCESS_REQUIRED``) are refusals that end the render
with Sonna's code; 409 (one synthesis at a time per account), 429 and 503 are retried, after
``Retry-After`` when Sonna sends one. The returned URL expires within a day, so the caller
downloads it at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from receiver.sources.provider_api import (
    ProviderRefused,
    ProviderUnavailable,
    json_or_none,
    network_error,
    retry_after,
)

PROVIDER = "Sonna"
PATH = "/api/v1/tts/synthesize-dialogue"
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class SonnaRender:
    url: str
    total_chars: int | None
    remaining_credits: int | None
    answer: dict[str, Any]


def error_code(document: Any, status: int) -> tuple[str, str]:
    """(code, message) from ``{"error": {"code", "message"}}``, ``{"code", "message"}`` or
    ``{"error": "CODE", "message"}``; the HTTP status when the body names none."""
    if not isinstance(document, dict):
        return str(status), f"HTTP {status}"
    error = document.get("error")
    source = error if isinstance(error, dict) else document
    code = source.get("code")
    if code is None and isinstance(error, str):
        code = error
    message = source.get("message") or document.get("message") or document.get("detail")
    return str(code or status), str(message or f"HTTP {status}")


class SonnaClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + PATH
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    async def synthesize_dialogue(self, body: dict[str, Any]) -> SonnaRender:
        try:
            response = await self._http.post(self._url, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise network_error(PROVIDER, exc) from exc
        document = json_or_none(response)
        status = response.status_code
        if status == 200:
            url = document.get("url") if isinstance(document, dict) else None
            if not isinstance(url, str) or not url:
                raise ProviderUnavailable(PROVIDER, "bad_answer", "the answer has no url")
            total = document.get("totalChars")
            credits = document.get("remainingCredits")
            return SonnaRender(
                url,
                total if isinstance(total, int) else None,
                credits if isinstance(credits, int) else None,
                document,
            )
        code, message = error_code(document, status)
        if status in RETRYABLE_STATUSES or status >= 500:
            raise ProviderUnavailable(PROVIDER, code, message, retry_after(response))
        raise ProviderRefused(PROVIDER, code, message)
