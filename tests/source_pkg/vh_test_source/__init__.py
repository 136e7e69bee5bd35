"""A provider written outside voicehooks: ``X-Acme-Signature: <hex HMAC-SHA256 of the body>``.

Everything a provider needs is here, in one module: its own settings, verification,
identification, and ``sign`` for replay. Its events look like ``{"event": ..., "id": ...}``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    load_small_json,
)


class AcmeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOICEHOOKS_ACME_", extra="ignore")

    secret: SecretStr | None = None


class _Verifier(Verifier):
    def __init__(self, key: bytes, given: str) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._given = given.encode()

    def update(self, chunk: bytes) -> None:
        self._mac.update(chunk)

    def verify(self, body: ReceivedBody) -> Authenticity:
        if not hmac.compare_digest(self._mac.hexdigest().encode(), self._given):
            raise AuthError("signature_mismatch", "X-Acme-Signature does not match")
        return Authenticity(method="hmac")


class AcmeSource(Source):
    name = "acme"
    shape_fields = (("event",), ("id",))

    def _key(self) -> bytes | None:
        secret = AcmeSettings().secret
        return secret.get_secret_value().encode() if secret else None

    def configured(self) -> bool:
        return self._key() is not None

    def unconfigured_hint(self) -> str:
        return "acme: set VOICEHOOKS_ACME_SECRET"

    def begin(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Verifier:
        key = self._key()
        if key is None:
            raise AuthError("not_configured", "no acme secret is configured")
        given = headers.get("x-acme-signature")
        if not given:
            raise AuthError("missing_signature", "the X-Acme-Signature header is missing")
        return _Verifier(key, given)

    def identify(self, body: ReceivedBody) -> Identity:
        document, error = load_small_json(body)
        if error is not None or not isinstance(document, dict):
            return Identity(None, f"sha256:{body.sha256}", None, error or "not an object")
        event, event_id = document.get("event"), document.get("id")
        return Identity(str(event), f"{event}:{event_id}", str(event_id))

    def parse(self, event_type: str | None, body: ReceivedBody) -> Any:
        document, _ = load_small_json(body)
        return document

    def recognises(self, document: Mapping[str, Any]) -> bool:
        return "event" in document and "id" in document

    def describe(self, document: Mapping[str, Any]) -> Described:
        return Described(str(document.get("event")), str(document.get("id")), "acme event")

    def sign(
        self, chunks: BodyChunks, described: Described, *, timestamp: int | None = None
    ) -> Signed:
        key = self._key()
        if key is None:
            raise SigningError("set VOICEHOOKS_ACME_SECRET")
        mac = hmac.new(key, digestmod=hashlib.sha256)
        for chunk in chunks():
            mac.update(chunk)
        return Signed({"X-Acme-Signature": mac.hexdigest()})
