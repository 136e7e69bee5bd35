"""Reading a request body safely: bounded, spooled to disk when large, hashed while it streams.

Audio webhooks can be hundreds of megabytes sent with chunked transfer encoding, so neither the
size nor the content can be trusted before the last byte arrives. We never hold more than
``spool_threshold`` bytes in memory, we stop reading (413) the moment the cap is passed, and we feed
every chunk to the source's verifier as it arrives, so the signature is known when reading ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from receiver.errors import WebhookError
from receiver.store.blobs import BlobStore


@dataclass
class ReceivedBody:
    """The raw bytes of one request: in memory (``data``) or in a spool file (``path``)."""

    size: int
    sha256: str
    data: bytes | None = None
    path: Path | None = None

    @property
    def spooled(self) -> bool:
        return self.path is not None

    def open(self) -> BinaryIO:
        if self.path is not None:
            return open(self.path, "rb")
        import io

        return io.BytesIO(self.data or b"")

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


async def asgi_body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The body of an ASGI HTTP request, chunk by chunk (what Starlette's ``Request.stream``
    yields, without a Request object)."""
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def too_large(limit: int) -> WebhookError:
    return WebhookError(413, "body_too_large", f"request bodies are limited to {limit} bytes")


async def read_body(
    chunks: AsyncIterator[bytes],
    *,
    max_bytes: int,
    spool_threshold: int,
    blobs: BlobStore,
    on_chunk: Callable[[bytes], None],
) -> ReceivedBody:
    """Consume ``chunks`` into a ReceivedBody, calling ``on_chunk`` for each piece."""
    digest = hashlib.sha256()
    # In-memory chunks are kept as they came and joined once at the end (a body that arrives in
    # one chunk, as small webhooks do, is then never copied).
    buffered: list[bytes] = []
    spool_path: Path | None = None
    spool: BinaryIO | None = None
    size = 0
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            digest.update(chunk)
            on_chunk(chunk)
            if spool is not None:
                spool.write(chunk)
                continue
            buffered.append(chunk)
            if size > spool_threshold:
                spool_path, spool = blobs.new_spool_file()
                spool.writelines(buffered)
                buffered = []
        if spool is not None:
            spool.close()
            return ReceivedBody(size=size, sha256=digest.hexdigest(), path=spool_path)
        return ReceivedBody(size=size, sha256=digest.hexdigest(), data=b"".join(buffered))
    except BaseException:
        if spool is not None:
            spool.close()
        if spool_path is not None:
            spool_path.unlink(missing_ok=True)
        raise
