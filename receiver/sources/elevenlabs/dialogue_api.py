"""ElevenLabs text-to-dialogue with timestamps: ``POST /v1/text-to-dialogue/with-timestamps``.

The answer is one JSON object whose ``audio_base64`` holds the whole render, so the body is
streamed to a file as it arrives (never held in memory) and decoded from there in one pass by
the caller (``receiver.jsonstream``). Errors are sorted for the job that called: 429 (with its
``Retry-After``) and 5xx are worth retrying; 401 (bad key), 402 (no credit), 422 (ElevenLabs'
own validation of the request) and other 4xx are refusals, reported with ElevenLabs' message.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

import httpx

from receiver.sources.provider_api import (
    ProviderRefused,
    ProviderUnavailable,
    network_error,
    retry_after,
)

PROVIDER = "ElevenLabs"
PATH = "/v1/text-to-dialogue/with-timestamps"
DEFAULT_MODEL = "eleven_v3"
# Error bodies are read this far only: a message, not a download.
MAX_ERROR_BYTES = 64 * 1024
CHUNK_BYTES = 64 * 1024


class TooLargeAnswer(ProviderRefused):
    pass


def error_message(document: Any, fallback: str) -> tuple[str, str]:
    """(code, message) from ElevenLabs' error shapes: ``{"detail": {"status", "message"}}``,
    ``{"detail": "text"}`` or the validation list ``{"detail": [{"loc", "msg", "type"}]}``."""
    detail = document.get("detail") if isinstance(document, dict) else None
    if isinstance(detail, dict):
        code = detail.get("status") or detail.get("code") or ""
        return str(code), str(detail.get("message") or fallback)
    if isinstance(detail, list) and detail:
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc") or [])
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return "validation_error", "; ".join(parts) or fallback
    if isinstance(detail, str):
        return "", detail
    return "", fallback


class ElevenLabsDialogueClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + PATH
        self._headers = {"xi-api-key": api_key, "Accept": "application/json"}

    async def with_timestamps(
        self,
        body: dict[str, Any],
        out: BinaryIO,
        *,
        output_format: str | None = None,
        max_bytes: int = 512 * 1024 * 1024,
    ) -> int:
        """Send the request and stream the JSON answer into ``out``; returns its size."""
        params = {"output_format": output_format} if output_format else None
        try:
            async with self._http.stream(
                "POST", self._url, params=params, json=body, headers=self._headers
            ) as response:
                if response.status_code != 200:
                    raise await self._error(response)
                size = 0
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLargeAnswer(
                            PROVIDER, "too_large", f"the answer is larger than {max_bytes} bytes"
                        )
                    out.write(chunk)
                return size
        except httpx.HTTPError as exc:
            raise network_error(PROVIDER, exc) from exc

    async def _error(self, response: httpx.Response) -> Exception:
        raw = b""
        async for chunk in response.aiter_bytes(CHUNK_BYTES):
            raw += chunk
            if len(raw) >= MAX_ERROR_BYTES:
                break
        try:
            document = json.loads(raw[:MAX_ERROR_BYTES])
        except ValueError:
            document = None
        status = response.status_code
        code, message = error_message(document, f"HTTP {status} {response.reason_phrase}")
        code = code or str(status)
        if status == 429 or status >= 500 or status == 408:
            return ProviderUnavailable(PROVIDER, code, message, retry_after(response))
        return ProviderRefused(PROVIDER, code, message)
