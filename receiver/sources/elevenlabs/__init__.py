"""ElevenLabs webhooks: ``ElevenLabs-Signature: t=<unix seconds>,v0=<hex>[,v0=<hex>...]``.

The signature is hex HMAC-SHA256 with the webhook secret over the exact bytes ``<t>.<raw body>``.
We improve on the official SDKs in the ways the reference notes: constant-time comparison, a
bounded future skew as well as an age limit, several ``v0`` entries and several configured
secrets (so a secret can be rotated without dropping deliveries).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from receiver import jsonstream
from receiver.body import ReceivedBody
from receiver.errors import AuthError
from receiver.sources.base import (
    Authenticity,
    BodyChunks,
    Described,
    Identity,
    Signed,
    SigningError,
    Source,
    Verifier,
    load_document,
    load_small_json,
)

SIGNATURE_HEADER = "elevenlabs-signature"
AUDIO_EVENT = "post_call_audio"
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_ID_FIELDS = [("type",), ("event_timestamp",), ("data", "conversation_id")]


def sign(secret: str, body: bytes | Iterable[bytes], timestamp: int | None = None) -> str:
    """The header value ElevenLabs would send for ``body`` (bytes, or chunks of a big file)."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode(), hashlib.sha256)
    for chunk in [body] if isinstance(body, bytes) else body:
        mac.update(chunk)
    return f"t={ts},v0={mac.hexdigest()}"


def parse_signature_header(value: str) -> tuple[str, list[str]]:
    """Split the header into its timestamp text and its ``v0`` digests."""
    timestamp: str | None = None
    digests: list[str] = []
    for part in value.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep:
            raise AuthError("malformed_signature", "ElevenLabs-Signature must be t=...,v0=...")
        if key == "t":
            timestamp = item.strip()
        elif key == "v0" and _HEX_DIGEST.fullmatch(item.strip()):
            digests.append(item.strip().lower())
    if timestamp is None or not digests:
        raise AuthError(
            "malformed_signature",
            "ElevenLabs-Signature needs a t= timestamp and at least one hex v0= signature",
        )
    return timestamp, digests


class _HmacVerifier(Verifier):
    def __init__(self, keyed: list[hmac.HMAC], timestamp: str, digests: list[str]) -> None:
        prefix = f"{timestamp}.".encode()
        self._macs = []
        for key in keyed:
            mac = key.copy()  # keying costs two hash blocks; a copy of a keyed HMAC does not
            mac.update(prefix)
            self._macs.append(mac)
        self._digests = [d.encode() for d in digests]

    def update(self, chunk: bytes) -> None:
        for mac in self._macs:
            mac.update(chunk)

    def verify(self, body: ReceivedBody) -> Authenticity:
        for index, mac in enumerate(self._macs):
            expected = mac.hexdigest().encode()
            if any(hmac.compare_digest(expected, digest) for digest in self._digests):
                return Authenticity(method="hmac", key_index=index)
        raise AuthError("signature_mismatch", "no signature matches a configured secret")


class ElevenLabsSource(Source):
    name = "elevenlabs"
    shape_fields = (
        ("type",),
        ("event_timestamp",),
        ("data", "conversation_id"),
        ("code",),
        ("msg",),
        ("taskId",),
    )

    def configured(self) -> bool:
        return bool(self.settings.elevenlabs_secrets)

    def unconfigured_hint(self) -> str:
        return (
            "ElevenLabs: no webhook secret configured (VOICEHOOKS_ELEVENLABS_SECRETS); "
            "ElevenLabs deliveries will be refused with 401 not_configured"
        )

    def begin(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Verifier:
        if not self.configured():
            raise AuthError("not_configured", "no ElevenLabs webhook secret is configured")
        header = headers.get(SIGNATURE_HEADER)
        if header is None:
            raise AuthError("missing_signature", "the ElevenLabs-Signature header is missing")
        timestamp, digests = parse_signature_header(header)
        try:
            signed_at = int(timestamp)
        except ValueError:
            raise AuthError("invalid_timestamp", "the t= timestamp is not an integer") from None
        now = time.time()
        if signed_at < now - self.settings.elevenlabs_tolerance_seconds:
            raise AuthError("timestamp_expired", "the signature timestamp is too old")
        if signed_at > now + self.settings.elevenlabs_future_skew_seconds:
            raise AuthError("timestamp_in_future", "the signature timestamp is in the future")
        return _HmacVerifier(self._keyed_macs, timestamp, digests)

    @functools.cached_property
    def _keyed_macs(self) -> list[hmac.HMAC]:
        """One HMAC per configured secret, keyed and not yet fed: each request copies them."""
        return [
            hmac.new(secret.get_secret_value().encode(), digestmod=hashlib.sha256)
            for secret in self.settings.elevenlabs_secrets
        ]

    def identify(self, body: ReceivedBody) -> Identity:
        fields, error = _identifying_fields(body)
        event_type = fields.get(("type",))
        conversation_id = fields.get(("data", "conversation_id"))
        timestamp = fields.get(("event_timestamp",))
        event_type = event_type if isinstance(event_type, str) else None
        conversation_id = conversation_id if isinstance(conversation_id, str) else None
        # A timestamp that is not a plain value (a list nested 900 deep) identifies nothing.
        if event_type and conversation_id and isinstance(timestamp, int | float | str):
            key = f"{event_type}:{conversation_id}:{timestamp}"
        else:
            key = f"sha256:{body.sha256}"
        return Identity(event_type, key, conversation_id, error)

    def recognises(self, document: Mapping[str, Any]) -> bool:
        """Every ElevenLabs event is ``{"type", "event_timestamp", "data": {...}}``; a kie.ai
        callback (``code``/``msg``, a ``taskId``) is not one even if it has a ``type``."""
        if "taskId" in document or ("code" in document and "msg" in document):
            return False
        return isinstance(document.get("type"), str) and isinstance(document.get("data"), dict)

    def describe(self, document: Mapping[str, Any]) -> Described:
        event_type = document.get("type")
        event_type = event_type if isinstance(event_type, str) else None
        data = document.get("data")
        subject = data.get("conversation_id") if isinstance(data, dict) else None
        return Described(
            event_type,
            subject if isinstance(subject, str) else None,
            label=event_type or "-",
            chunked=event_type == AUDIO_EVENT,  # ElevenLabs streams its audio webhooks
        )

    def sign(
        self, chunks: BodyChunks, described: Described, *, timestamp: int | None = None
    ) -> Signed:
        if not self.settings.elevenlabs_secrets:
            raise SigningError(
                "no ElevenLabs secret configured: set VOICEHOOKS_ELEVENLABS_SECRETS to the "
                "receiver's secret"
            )
        secret = self.settings.elevenlabs_secrets[0].get_secret_value()
        return Signed(
            {"ElevenLabs-Signature": sign(secret, chunks(), timestamp)},
            valid_for=self.settings.elevenlabs_tolerance_seconds,
        )

    def parse(self, event_type: str | None, body: ReceivedBody) -> Any:
        from receiver.sources.elevenlabs import models

        if body.spooled and event_type == AUDIO_EVENT:
            # The audio itself is streamed by the handler straight from the body; the model
            # carries only the small identifying fields.
            with body.open() as fh:
                fields = jsonstream.read_fields(
                    fh,
                    [
                        ("type",),
                        ("event_timestamp",),
                        ("data", "agent_id"),
                        ("data", "conversation_id"),
                    ],
                )
            data = {k[1]: v for k, v in fields.items() if k[0] == "data"}
            return models.parse_event(
                {
                    "type": fields.get(("type",)),
                    "event_timestamp": fields.get(("event_timestamp",)),
                    "data": data,
                }
            )
        with body.open() as fh:
            return models.parse_event(load_document(fh.read()))


def _identifying_fields(body: ReceivedBody) -> tuple[dict[tuple[str, ...], Any], str | None]:
    if not body.spooled:
        document, error = load_small_json(body)
        if error is not None:
            return {}, error
        if not isinstance(document, dict):
            return {}, "body is JSON but not an object"
        data = document.get("data")
        data = data if isinstance(data, dict) else {}
        return {
            ("type",): document.get("type"),
            ("event_timestamp",): document.get("event_timestamp"),
            ("data", "conversation_id"): data.get("conversation_id"),
        }, None
    try:
        with body.open() as fh:
            return jsonstream.read_fields(fh, _ID_FIELDS), None
    except ValueError as exc:
        return {}, f"body is not valid JSON: {exc}"
