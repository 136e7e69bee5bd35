"""Replaying payload files: sign them as their provider would and deliver them.

Replay exists so a handler can be exercised with a real-shaped event, and so a stored delivery
can become a regression fixture (``deliveries export``) that is sent again later. It is only
useful if what arrives is indistinguishable from the provider's own request: the exact file
bytes, a signature made the provider's way with a fresh timestamp (old fixtures must pass the
tolerance), and ``post_call_audio`` streamed with ``Transfer-Encoding: chunked`` as ElevenLabs
sends it. ``--in-process`` drives the real Starlette app through ``httpx.ASGITransport``, so the
in-process and HTTP paths share every line of the ingest code; only the socket is missing.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import httpx
from sqlalchemy import Engine, select

from receiver import jsonstream
from receiver.jobs import deliveries_table
from receiver.settings import Settings
from receiver.sources import load_sources
from receiver.sources.base import Described, SigningError, Source
from receiver.store.blobs import BlobStore

DEFAULT_URL = "http://127.0.0.1:8000"
IN_PROCESS_URL = "http://in-process"
# Bodies above this are streamed (and signed) from disk in chunks, never read whole; it matches
# the receiver's default spool threshold, past which it keeps the body as a blob too.
STREAM_ABOVE_BYTES = 1024 * 1024
CHUNK_BYTES = 64 * 1024


class ReplayError(Exception):
    """A payload that cannot be signed or sent; the message says what to do about it."""


# -- finding the files ----------------------------------------------------------------------


def collect_paths(arguments: Iterable[str]) -> list[Path]:
    """Files named directly, ``*.json`` under directories (recursively), and glob matches.

    Order is kept as given (directories and globs sorted) because it can matter: a late kie.ai
    ``waiting`` callback after its ``success`` is a different test from the reverse.
    """
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.json") if p.is_file()))
        else:
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                raise ReplayError(f"{argument}: no such file, directory or glob match")
            for match in map(Path, matches):
                if match.is_dir():
                    found.extend(sorted(p for p in match.rglob("*.json") if p.is_file()))
                elif match.is_file():
                    found.append(match)
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path, None)
    return list(unique)


# -- what a payload is ----------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """One payload file and what its source says about it."""

    path: Path
    source: str
    size: int
    described: Described

    @property
    def event_type(self) -> str | None:
        return self.described.event_type

    @property
    def subject_id(self) -> str | None:
        return self.described.subject_id

    @property
    def chunked(self) -> bool:
        """Sent chunked, streamed from disk: as the provider sends it, and any big body."""
        return self.described.chunked or self.size > STREAM_ABOVE_BYTES

    @property
    def label(self) -> str:
        return self.described.label


def _read_document(path: Path, size: int, sources: Iterable[Source]) -> dict[str, Any] | None:
    """The fields the sources look at, or None when the file is not a JSON object.

    A small file is parsed whole; a big one (audio) is scanned with the streaming reader for the
    sources' ``shape_fields`` only, which skips the huge base64 value without holding it.
    """
    if size <= STREAM_ABOVE_BYTES:
        try:
            parsed = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError):
            return None
        return parsed if isinstance(parsed, dict) else None
    paths = sorted({p for source in sources for p in source.shape_fields})
    try:
        with open(path, "rb") as fh:
            fields = jsonstream.read_fields(fh, paths)
    except ValueError:
        return None
    document: dict[str, Any] = {}
    for key, value in fields.items():
        target = document
        for part in key[:-1]:
            target = target.setdefault(part, {})
        target[key[-1]] = value
    return document


def infer_source(document: dict[str, Any], sources: dict[str, Source]) -> str | None:
    """The one source that recognises the body's shape; None when none (or several) do."""
    matches = [name for name, source in sources.items() if source.recognises(document)]
    return matches[0] if len(matches) == 1 else None


def inspect_payload(path: Path, sources: dict[str, Source], source: str | None = None) -> Payload:
    """Read what replay needs from ``path``; ``source`` overrides the inference."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ReplayError(f"cannot read it ({exc.strerror})") from None
    if source is not None and source not in sources:
        raise ReplayError(f"unknown source {source!r}; known: {', '.join(sorted(sources))}")
    document = _read_document(path, size, sources.values())
    if source is None:
        if document is None:
            raise ReplayError("not a JSON object, so its source is unknown; pass --source")
        source = infer_source(document, sources)
        if source is None:
            raise ReplayError(
                "its shape is not one that exactly one source recognises "
                f"({', '.join(sorted(sources))}); pass --source to send it anyway"
            )
    return Payload(path, source, size, sources[source].describe(document or {}))


# -- signing --------------------------------------------------------------------------------


def file_chunks_sync(path: Path) -> Iterable[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk


@dataclass(frozen=True)
class SignedRequest:
    """Everything that authenticates one request, and where it goes."""

    source: str
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    auth: str = "hmac"
    # Seconds the receiver will accept this signature for (None: a URL token never expires).
    valid_for: int | None = None

    @property
    def path(self) -> str:
        return f"/webhooks/{self.source}"


def sign_request(
    payload: Payload, sources: dict[str, Source], *, timestamp: int | None = None
) -> SignedRequest:
    """Sign ``payload`` as its source's provider would, with the first configured secret."""
    try:
        signed = sources[payload.source].sign(
            lambda: file_chunks_sync(payload.path), payload.described, timestamp=timestamp
        )
    except SigningError as exc:
        raise ReplayError(str(exc)) from None
    headers = {"Content-Type": "application/json", **signed.headers}
    return SignedRequest(payload.source, headers, signed.params, signed.auth, signed.valid_for)


# -- sending --------------------------------------------------------------------------------


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file in chunks, read off the event loop: httpx sends it chunked, as it streams."""
    async with await anyio.open_file(path, "rb") as fh:
        while chunk := await fh.read(CHUNK_BYTES):
            yield chunk


@dataclass
class ReplayResult:
    """What happened to one payload (``acknowledged`` means the receiver answered 200)."""

    path: Path
    name: str
    source: str | None = None
    event_type: str | None = None
    status_code: int | None = None
    delivery_id: int | None = None
    duplicate: bool | None = None
    chunked: bool = False
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status_code == 200 and self.delivery_id is not None

    @property
    def outcome(self) -> str:
        if self.acknowledged:
            return "duplicate" if self.duplicate else "new"
        return self.error or "not acknowledged"

    @property
    def short_outcome(self) -> str:
        """A word or two for a table cell (``error`` holds the sentence)."""
        if self.acknowledged or self.status_code is None:
            return self.outcome if self.acknowledged else "not sent"
        code = (self.error or "").split(":", 1)[0]
        return code if code and " " not in code else f"HTTP {self.status_code}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "source": self.source,
            "type": self.event_type,
            "status_code": self.status_code,
            "delivery_id": self.delivery_id,
            "duplicate": self.duplicate,
            "chunked": self.chunked,
            "acknowledged": self.acknowledged,
            "error": self.error,
        }


def _refusal(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and "error" in body:
        return f"{body['error']}: {body.get('detail', '')}".rstrip(": ")
    return f"HTTP {response.status_code}"


class Replayer:
    """Sends payload files to a receiver over HTTP, or into the local store in-process.

    Use as ``async with Replayer(settings, url=...) as replayer: await replayer.send(path)``.
    In-process, the real app is built with ``create_app(settings, run_worker=False)`` and its
    lifespan runs here (migrations, the inbox writer): jobs are queued for ``voicehooks worker``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        url: str = DEFAULT_URL,
        in_process: bool = False,
        timeout: float = 120.0,
    ) -> None:
        self.settings = settings
        self.sources = load_sources(settings)
        self.url = IN_PROCESS_URL if in_process else url.rstrip("/")
        self.in_process = in_process
        self._timeout = timeout
        self._stack = contextlib.AsyncExitStack()
        self.client: httpx.AsyncClient | None = None
        self.app: Any = None

    async def __aenter__(self) -> Replayer:
        transport: httpx.AsyncBaseTransport | None = None
        if self.in_process:
            from receiver.app import create_app
            from receiver.store.db import shown_url

            try:
                self.app = create_app(self.settings, run_worker=False)
                await self._stack.enter_async_context(self.app.router.lifespan_context(self.app))
            except Exception as exc:  # the store cannot be opened: one line, secrets masked
                await self._stack.aclose()
                shown = shown_url(self.settings.database_url)
                raise ReplayError(
                    f"cannot open the store at {shown}: {self.settings.redact(str(exc))}"
                ) from None
            transport = httpx.ASGITransport(app=self.app)
        self.client = await self._stack.enter_async_context(
            httpx.AsyncClient(base_url=self.url, transport=transport, timeout=self._timeout)
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def check_reachable(self) -> None:
        """Fail early, with a hint, when nothing listens at the URL."""
        assert self.client is not None
        if self.in_process:
            return
        try:
            await self.client.get("/healthz", timeout=10)
        except httpx.HTTPError as exc:
            raise ReplayError(
                f"no receiver answers at {self.url} ({type(exc).__name__}); start "
                "`voicehooks serve`, pass --url, or use --in-process"
            ) from None

    async def send(
        self, path: Path, *, source: str | None = None, name: str | None = None
    ) -> ReplayResult:
        """Sign ``path`` with a fresh timestamp and POST it; never raises for one bad file."""
        assert self.client is not None
        result = ReplayResult(path, name or str(path))
        try:
            payload = await anyio.to_thread.run_sync(inspect_payload, path, self.sources, source)
            result.source, result.event_type = payload.source, payload.label
            signed = await anyio.to_thread.run_sync(sign_request, payload, self.sources)
        except ReplayError as exc:
            result.error = str(exc)
            return result
        content: Any = file_chunks(path) if payload.chunked else path.read_bytes()
        try:
            response = await self.client.post(
                signed.path, content=content, headers=signed.headers, params=signed.params
            )
        except httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            return result
        sent = response.request.headers
        result.chunked = (
            sent.get("transfer-encoding", "").lower() == "chunked" and "content-length" not in sent
        )
        result.status_code = response.status_code
        if response.status_code != 200:
            result.error = _refusal(response)
            return result
        try:
            answer = response.json()
            result.delivery_id = int(answer["delivery_id"])
            result.duplicate = bool(answer.get("duplicate"))
        except (ValueError, KeyError, TypeError):
            result.error = "200 without a delivery id: is this a voicehooks receiver?"
        return result


# -- export ---------------------------------------------------------------------------------


def export_delivery(
    engine: Engine, blobs: BlobStore, delivery_id: int, out: BinaryIO
) -> dict[str, Any]:
    """Copy a stored body, byte for byte, to ``out``; checks it against its stored sha256.

    Only the body: no headers, no signature, no secret, so the file can be committed as a
    fixture and replayed (``replay`` signs it afresh).
    """
    with engine.connect() as conn:
        row = conn.execute(
            select(deliveries_table).where(deliveries_table.c.id == delivery_id)
        ).first()
    if row is None:
        raise LookupError(f"no delivery with id {delivery_id}")
    if row.pruned_at is not None:
        raise LookupError(
            f"delivery {delivery_id}: its body was pruned on {row.pruned_at:%Y-%m-%d} (retention)"
        )
    digest = hashlib.sha256()
    if row.blob_path is not None:
        with open(blobs.path(row.blob_path), "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
    else:
        data = row.body or b""
        digest.update(data)
        out.write(data)
    if digest.hexdigest() != row.sha256:
        raise ValueError(
            f"delivery {delivery_id}: the stored body does not match its recorded sha256 "
            "(the blob was changed on disk)"
        )
    return {key: value for key, value in row._mapping.items() if key != "body"}


def export_to_file(
    engine: Engine, blobs: BlobStore, delivery_id: int, target: Path
) -> dict[str, Any]:
    """``export_delivery`` into ``target``, written to a temporary file then renamed: a failed
    export never leaves a truncated fixture behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            delivery = export_delivery(engine, blobs, delivery_id, fh)
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return delivery
