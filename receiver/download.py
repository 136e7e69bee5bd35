"""Fetching audio from a provider's result URL into the blob store.

The URL comes from a webhook body, so nothing about the response is trusted: the size is capped
while streaming (and up front when ``Content-Length`` already says too much), the bytes must look
like audio before more than a few dozen of them are kept, and a response that fails half-way
leaves no file behind. Transient trouble (network errors, timeouts, 408/429/5xx) is retried a few
times right here with exponential backoff; past that a ``TransientDownloadError`` lets the job be
retried later. Answers that retrying cannot change (403/404/410: the URL has expired; not audio;
too large) raise a ``DownloadRefused`` subclass, for the caller to turn into a dead job.

Every request goes through ``receiver.fetch.stream`` (public addresses only, checked on the
address connected to and after every redirect); a URL it refuses raises ``FetchForbidden``, a
``DownloadRefused``, with the reason. Error messages name the URL's host and path only, never its
query string, which for signed URLs holds a credential.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpx

from receiver import fetch
from receiver.store.blobs import BlobStore, BlobWriter

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0, pool=10.0)
GONE_STATUSES = frozenset({403, 404, 410})
RETRY_STATUSES = frozenset({408, 425, 429})
SNIFF_BYTES = 64
CHUNK_BYTES = 64 * 1024
_SUFFIXES = {"mp3": ".mp3", "wav": ".wav", "ogg": ".ogg", "flac": ".flac", "mp4": ".m4a"}
_CONTENT_TYPE_FORMATS = {
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    "audio/flac": "flac",
    "audio/mp4": "mp4",
    "audio/aac": "aac",
}


class DownloadError(Exception):
    """Base of every download failure."""


class DownloadRefused(DownloadError):
    """Retrying will not help."""


class DownloadGone(DownloadRefused):
    """403/404/410: the URL has expired or the file was removed."""

    def __init__(self, status: int, where: str) -> None:
        super().__init__(f"HTTP {status} from {where}")
        self.status, self.where = status, where


class DownloadRejected(DownloadRefused):
    """Another 4xx, or a URL httpx cannot fetch."""


class NotAudio(DownloadRefused):
    """The response is not audio (an error page, JSON, an empty body...)."""


class FetchForbidden(DownloadRefused):
    """The guarded fetch refused the URL (a private address, a scheme, the allowlist)."""


class TooLarge(DownloadRefused):
    def __init__(self, limit: int, where: str) -> None:
        super().__init__(f"more than {limit} bytes from {where}")
        self.limit, self.where = limit, where


class TransientDownloadError(DownloadError):
    """Still failing after the in-place retries: try again later."""


class _Retry(Exception):
    pass


@dataclass(frozen=True)
class DownloadedFile:
    url: str
    blob_path: str
    size: int
    sha256: str
    content_type: str | None
    format: str


def where(url: str) -> str:
    """Host and path of ``url``, without query or credentials, for messages and logs."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}{parts.path}"


def sniff_audio(head: bytes) -> str | None:
    """The audio container the first bytes announce, or None."""
    if head.startswith(b"ID3"):
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mp3"  # an MPEG audio frame sync without an ID3 tag
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head[4:8] == b"ftyp":
        return "mp4"
    return None


def audio_format(head: bytes, content_type: str | None) -> str:
    """The format to record, or NotAudio. The bytes decide; the header only vouches for
    containers we do not sniff, and never for a body that looks like text."""
    sniffed = sniff_audio(head)
    if sniffed is not None:
        return sniffed
    media_type = (content_type or "").split(";")[0].strip().lower()
    looks_textual = head.lstrip()[:1] in (b"<", b"{", b"[") or not head
    if media_type.startswith("audio/") and not looks_textual:
        return _CONTENT_TYPE_FORMATS.get(media_type, media_type.removeprefix("audio/")[:16])
    shown = media_type or "no content type"
    raise NotAudio(f"{shown}, first bytes {head[:8]!r}")


async def download_audio(
    http: httpx.AsyncClient,
    blobs: BlobStore,
    url: str,
    *,
    max_bytes: int,
    attempts: int = 3,
    backoff_seconds: float = 0.5,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> DownloadedFile:
    """Stream ``url`` into the blob store and return where it went. ``http`` must be the
    guarded client (``receiver.fetch.guarded_client``, what handlers get as ``ctx.http``)."""
    last: str = "no attempt made"
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return await _fetch_once(http, blobs, url, max_bytes=max_bytes, timeout=timeout)
        except fetch.FetchRefused as exc:
            raise FetchForbidden(f"{where(url)}: {exc}") from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise DownloadRejected(f"cannot fetch {where(url)}: {exc}") from exc
        except _Retry as exc:
            last = str(exc)
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if attempt < attempts:
            delay = backoff_seconds * 2 ** (attempt - 1)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
    raise TransientDownloadError(f"{where(url)} still failing after {attempts} attempts: {last}")


async def _fetch_once(
    http: httpx.AsyncClient, blobs: BlobStore, url: str, *, max_bytes: int, timeout: httpx.Timeout
) -> DownloadedFile:
    headers = {"Accept": "audio/*, */*;q=0.1"}
    async with fetch.stream(http, url, headers=headers, timeout=timeout) as response:
        status = response.status_code
        if status in GONE_STATUSES:
            raise DownloadGone(status, where(url))
        if status in RETRY_STATUSES or status >= 500:
            raise _Retry(f"HTTP {status} from {where(url)}")
        if not 200 <= status < 300:
            raise DownloadRejected(f"HTTP {status} from {where(url)}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise TooLarge(max_bytes, where(url))
        content_type = response.headers.get("content-type")
        writer: BlobWriter | None = None
        head = b""
        size = 0
        fmt = ""
        try:
            async for chunk in response.aiter_bytes(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(max_bytes, where(url))
                if writer is not None:
                    writer.write(chunk)
                    continue
                head += chunk
                if len(head) >= SNIFF_BYTES:
                    # Decide before keeping more than the first chunk of something not audio.
                    fmt = audio_format(head, content_type)
                    writer = blobs.writer(suffix=_SUFFIXES.get(fmt, ".audio"))
                    writer.write(head)
            if writer is None:
                fmt = audio_format(head, content_type)
                writer = blobs.writer(suffix=_SUFFIXES.get(fmt, ".audio"))
                writer.write(head)
            relpath = await anyio.to_thread.run_sync(writer.commit)
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        return DownloadedFile(
            url=url,
            blob_path=relpath,
            size=writer.size,
            sha256=writer.sha256,
            content_type=content_type,
            format=fmt,
        )
