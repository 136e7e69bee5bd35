"""What a sender (ElevenLabs, kie.ai, ...) must provide to the ingest path.

A source answers three questions, in this order: is this request authentic (checked while the body
streams in, so a large body is verified without a second pass), what is it (event type, dedupe key,
subject), and, for handlers later, what does it say (a typed payload). Nothing else in the service
knows anything about a particular provider.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from receiver.body import ReceivedBody
from receiver.settings import Settings


@dataclass(frozen=True)
class Authenticity:
    """How a delivery proved itself: recorded with it, since methods differ in what they cover."""

    method: str
    key_index: int | None = None


@dataclass(frozen=True)
class Identity:
    event_type: str | None
    dedupe_key: str
    subject_id: str | None = None
    parse_error: str | None = None


JsonPath = tuple[str, ...]
# Opens the body afresh each call and yields it in chunks: a big file is never held whole.
BodyChunks = Callable[[], Iterable[bytes]]


@dataclass(frozen=True)
class Described:
    """What replay and ``sign`` need to know of a payload, as its source reads its shape."""

    event_type: str | None
    subject_id: str | None = None
    label: str = "-"
    # Sent as the provider sends it: ``Transfer-Encoding: chunked`` (ElevenLabs' audio).
    chunked: bool = False


@dataclass(frozen=True)
class Signed:
    """Everything that authenticates one request, as the provider itself would send it."""

    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    auth: str = "hmac"
    # Seconds the receiver accepts this for (None: a URL token never expires).
    valid_for: int | None = None


class SigningError(Exception):
    """A payload that cannot be signed with what is configured; says what to set."""


class Verifier(ABC):
    """Per-request authentication state, fed the body as it arrives."""

    def update(self, chunk: bytes) -> None:  # noqa: B027 - most verifiers ignore the body
        """Called with each body chunk, in order."""

    @abstractmethod
    def verify(self, body: ReceivedBody) -> Authenticity:
        """Raise AuthError unless the request is authentic."""


class Source(ABC):
    """One sender. The receiving half (``begin``, ``identify``, ``parse``) is what ingest and the
    workers use; the sending half (``shape_fields``, ``recognises``, ``describe``, ``sign``) is
    what replay, ``voicehooks sign``, the demo and the tests use to produce exactly what the
    provider would send, so none of them branches on a provider's name."""

    name: ClassVar[str]
    # The JSON paths ``recognises``/``describe`` look at: replay reads only these from a big
    # file (with the streaming scanner), so a 300 MB audio body is never parsed whole.
    shape_fields: ClassVar[tuple[JsonPath, ...]] = ()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def configured(self) -> bool:
        """Whether any way to authenticate this source is configured."""

    @abstractmethod
    def unconfigured_hint(self) -> str:
        """A start-up sentence telling the operator which setting to set."""

    @abstractmethod
    def begin(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Verifier:
        """Check what can be checked before the body is read; raise AuthError early."""

    @abstractmethod
    def identify(self, body: ReceivedBody) -> Identity:
        """Event type, dedupe key and subject of an authentic body. Must not raise."""

    @abstractmethod
    def parse(self, event_type: str | None, body: ReceivedBody) -> Any:
        """The typed payload handed to handlers (may raise on a body handlers cannot use)."""

    def recognises(self, document: Mapping[str, Any]) -> bool:
        """Whether a payload of this shape is one of this source's (replay's inference)."""
        return False

    def describe(self, document: Mapping[str, Any]) -> Described:
        """Event type, subject and how to send a payload of this source."""
        event_type = document.get("type")
        return Described(event_type if isinstance(event_type, str) else None)

    def sign(
        self, chunks: BodyChunks, described: Described, *, timestamp: int | None = None
    ) -> Signed:
        """Headers (and query parameters) the provider would send with this body, made with
        the first configured secret; ``SigningError`` says what to configure."""
        raise SigningError(f"the {self.name} source cannot sign payloads")


def load_small_json(body: ReceivedBody) -> tuple[Any, str | None]:
    """``(document, None)`` or ``(None, reason)`` for an in-memory body.

    This runs on the event loop for every delivery, so it parses with orjson (about 4x the
    standard library's speed on a 2.5 KB transcription). orjson is stricter than the ``json``
    module that handlers parse with (it refuses NaN, Infinity and lone surrogates, for one), so
    a body it refuses gets a second opinion from ``json``: what counts as "not valid JSON" stays
    exactly what the handlers' parser says.
    """
    data = body.data or b""
    try:
        return orjson.loads(data), None
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"body is not valid JSON: {exc}"
