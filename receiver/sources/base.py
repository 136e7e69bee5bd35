"""What a sender (ElevenLabs, kie.ai, ...) must provide to the ingest path.

A source answers three questions, in this order: is this request authentic (checked while the body
streams in, so a large body is verified without a second pass), what is it (event type, dedupe key,
subject), and, for handlers later, what does it say (a typed payload). Nothing else in the service
knows anything about a particular provider.
"""

from __future__ import annotations

import hashlib
import json
import re
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


# Column sizes of the deliveries table (receiver/store/models.py).
MAX_EVENT_TYPE_CHARS = 128
MAX_DEDUPE_KEY_CHARS = 512
MAX_SUBJECT_CHARS = 256


def storable_text(value: str) -> str:
    """``value`` with lone surrogates (``"\\ud800"`` in JSON is valid JSON, but no database can
    encode it) replaced by their escape text, so an authentic event can always be stored."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


@dataclass(frozen=True)
class Identity:
    """What ingest stores a delivery under. Whatever a source extracts from an authentic body
    is made storable here (lone surrogates escaped, lengths within the columns), because a value
    the database refuses would turn an authentic event into a 503 on every retry."""

    event_type: str | None
    dedupe_key: str
    subject_id: str | None = None
    parse_error: str | None = None

    def __post_init__(self) -> None:
        event_type, key, subject = self.event_type, self.dedupe_key, self.subject_id
        if event_type is not None:
            event_type = storable_text(event_type)[:MAX_EVENT_TYPE_CHARS]
        key = storable_text(key)
        if len(key) > MAX_DEDUPE_KEY_CHARS:  # still one key per value: a digest of it
            key = "key-sha256:" + hashlib.sha256(key.encode()).hexdigest()
        if subject is not None:
            subject = storable_text(subject)[:MAX_SUBJECT_CHARS]
        error = None if self.parse_error is None else storable_text(self.parse_error)
        for name, value in (
            ("event_type", event_type),
            ("dedupe_key", key),
            ("subject_id", subject),
            ("parse_error", error),
        ):
            object.__setattr__(self, name, value)


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
    except RecursionError:  # a body nested thousands of levels deep
        return None, "body is not valid JSON: nested too deeply"


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def load_document(data: bytes) -> Any:
    """A whole body parsed for handlers (``Source.parse``): ``json`` as before, with lone
    surrogate escapes made storable text (see ``storable_text``) so that a handler can write
    what it read. ``ValueError`` for anything that is not JSON, however deep."""
    try:
        document = json.loads(data)
    except RecursionError:
        raise ValueError("body is not valid JSON: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(data):
        document = _storable(document)
    return document


def _storable(document: Any) -> Any:
    """Every string in ``document`` (keys too) through ``storable_text``, without recursion."""
    root: list[Any] = [document]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        parent, slot = stack.pop()
        value = parent[slot]
        if isinstance(value, str):
            parent[slot] = storable_text(value)
        elif isinstance(value, list):
            stack.extend((value, index) for index in range(len(value)))
        elif isinstance(value, dict):
            cleaned = {storable_text(k): v for k, v in value.items()}
            parent[slot] = cleaned
            stack.extend((cleaned, key) for key in cleaned)
    return root[0]
