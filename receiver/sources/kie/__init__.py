"""kie.ai task callbacks at ``POST /webhooks/kie``.

Two ways to prove a callback came from kie.ai, in order of preference:

* HMAC, when signing is enabled in the kie.ai settings: ``X-Webhook-Timestamp`` (unix seconds)
  and ``X-Webhook-Signature`` = base64(HMAC-SHA256(key, ``<taskId>.<timestamp>``)). Several keys
  may be configured (rotation). The signature covers the task id and the time, not the body, so
  it can only be checked once the body has been read and its task id found.
* A secret token in the callback URL (``/webhooks/kie?token=...``) for accounts without signing.

Neither proves the body's claims (state, result URLs), which is why the delivery records which
method admitted it. Every refusal has its own error code, as for ElevenLabs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
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
from receiver.sources.kie.models import KieCallback, parse_callback, task_id_of

TIMESTAMP_HEADER = "x-webhook-timestamp"
SIGNATURE_HEADER = "x-webhook-signature"
TOKEN_PARAM = "token"
EVENT_TYPE = "task_callback"
# kie.ai's clock may run a little ahead of ours; a timestamp further ahead is refused.
FUTURE_SKEW_SECONDS = 300
# Task ids are 32 hex characters; anything far longer is not one (and would not fit the store).
MAX_TASK_ID_CHARS = 128
_ID_PATHS = [("data", "taskId"), ("taskId",), ("data", "task_id"), ("data", "state")]

__all__ = ["EVENT_TYPE", "KieSource", "sign", "sign_headers", "task_id_of"]


def sign(key: str, task_id: str, timestamp: int | str) -> str:
    """The ``X-Webhook-Signature`` value kie.ai sends for this task id and timestamp."""
    mac = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def sign_headers(key: str, task_id: str, timestamp: int | None = None) -> dict[str, str]:
    """Both signing headers as kie.ai would send them (replay, ``sign`` tooling and tests)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {"X-Webhook-Timestamp": str(ts), "X-Webhook-Signature": sign(key, task_id, ts)}


def _decode_signature(value: str) -> bytes:
    text = value.strip()
    try:
        digest = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise AuthError(
            "malformed_signature", "X-Webhook-Signature must be a base64 HMAC-SHA256"
        ) from None
    if len(digest) != hashlib.sha256().digest_size:
        raise AuthError("malformed_signature", "X-Webhook-Signature must be a base64 HMAC-SHA256")
    return digest


class _TokenVerifier(Verifier):
    """The token was checked before the body was read; nothing is left to check."""

    def verify(self, body: ReceivedBody) -> Authenticity:
        return Authenticity(method="url_token")


class _HmacVerifier(Verifier):
    def __init__(self, keys: list[bytes], timestamp: str, digest: bytes) -> None:
        self._keys, self._timestamp, self._digest = keys, timestamp, digest

    def verify(self, body: ReceivedBody) -> Authenticity:
        fields, _ = _fields(body)
        task_id = fields.get("task_id")
        if not task_id:
            raise AuthError(
                "missing_task_id",
                "the body has no taskId, so the X-Webhook-Signature cannot be checked",
            )
        message = f"{task_id}.{self._timestamp}".encode()
        for index, key in enumerate(self._keys):
            expected = hmac.new(key, message, hashlib.sha256).digest()
            if hmac.compare_digest(expected, self._digest):
                return Authenticity(method="hmac", key_index=index)
        raise AuthError("signature_mismatch", "the signature matches no configured kie.ai key")


class KieSource(Source):
    name = "kie"
    shape_fields = (
        ("code",),
        ("msg",),
        ("taskId",),
        ("data", "taskId"),
        ("data", "task_id"),
        ("data", "state"),
    )

    def _keys(self) -> list[bytes]:
        return [k.get_secret_value().encode() for k in self.settings.kie_hmac_keys]

    def _token(self) -> bytes | None:
        token = self.settings.kie_url_token
        value = token.get_secret_value() if token is not None else ""
        return value.encode() if value else None

    def configured(self) -> bool:
        return bool(self.settings.kie_hmac_keys) or self._token() is not None

    def unconfigured_hint(self) -> str:
        return (
            "kie.ai: neither VOICEHOOKS_KIE_HMAC_KEYS nor VOICEHOOKS_KIE_URL_TOKEN is set; "
            "kie.ai callbacks will be refused with 401 not_configured"
        )

    def begin(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Verifier:
        keys, token = self._keys(), self._token()
        if not keys and token is None:
            raise AuthError("not_configured", "no kie.ai key or callback token is configured")
        timestamp = headers.get(TIMESTAMP_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if keys and (timestamp is not None or signature is not None):
            return self._begin_hmac(keys, timestamp, signature)
        if token is not None:
            return self._check_token(token, query.get(TOKEN_PARAM))
        raise AuthError(
            "missing_signature",
            "the X-Webhook-Timestamp and X-Webhook-Signature headers are missing",
        )

    def _begin_hmac(
        self, keys: list[bytes], timestamp: str | None, signature: str | None
    ) -> Verifier:
        if timestamp is None or signature is None:
            missing = "X-Webhook-Timestamp" if timestamp is None else "X-Webhook-Signature"
            raise AuthError("missing_signature", f"the {missing} header is missing")
        timestamp = timestamp.strip()
        try:
            signed_at = int(timestamp)
        except ValueError:
            raise AuthError(
                "invalid_timestamp", "X-Webhook-Timestamp must be an integer (unix seconds)"
            ) from None
        now = time.time()
        if signed_at < now - self.settings.kie_tolerance_seconds:
            raise AuthError("timestamp_expired", "the signature timestamp is too old")
        if signed_at > now + FUTURE_SKEW_SECONDS:
            raise AuthError("timestamp_in_future", "the signature timestamp is in the future")
        return _HmacVerifier(keys, timestamp, _decode_signature(signature))

    @staticmethod
    def _check_token(expected: bytes, given: str | None) -> Verifier:
        if not given:
            raise AuthError("missing_token", "the callback URL has no ?token= parameter")
        if not hmac.compare_digest(expected, given.encode()):
            raise AuthError("invalid_token", "the callback URL token is not the configured one")
        return _TokenVerifier()

    def identify(self, body: ReceivedBody) -> Identity:
        fields, error = _fields(body)
        if error is not None:
            return Identity(None, f"sha256:{body.sha256}", None, error)
        task_id = fields.get("task_id")
        if not task_id:
            return Identity(
                None,
                f"sha256:{body.sha256}",
                None,
                "the callback has no taskId (looked in data.taskId, taskId, data.task_id)",
            )
        if len(task_id) > MAX_TASK_ID_CHARS:
            return Identity(
                None, f"sha256:{body.sha256}", None, f"the taskId is over {MAX_TASK_ID_CHARS} chars"
            )
        state = (fields.get("state") or "unknown")[:32]
        # kie.ai may call back several times per task (and per state): same bytes are one event.
        return Identity(EVENT_TYPE, f"{task_id}:{state}:{body.sha256}", task_id)

    def recognises(self, document: Mapping[str, Any]) -> bool:
        """A callback is the recordInfo answer ``{"code", "msg", "data": {"taskId", "state"}}``
        (some pages put the id at the top level or in ``data.task_id``)."""
        data = document.get("data")
        return bool(
            "taskId" in document
            or ("code" in document and "msg" in document)
            or task_id_of(dict(document))
            or (isinstance(data, dict) and "state" in data)
        )

    def describe(self, document: Mapping[str, Any]) -> Described:
        data = document.get("data")
        state = data.get("state") if isinstance(data, dict) else None
        task_id = task_id_of(dict(document))
        label = EVENT_TYPE if task_id else "(no taskId)"
        if isinstance(state, str):
            label += f" ({state})"
        return Described(EVENT_TYPE, task_id, label)

    def sign(
        self, chunks: BodyChunks, described: Described, *, timestamp: int | None = None
    ) -> Signed:
        """HMAC headers over the task id when a key is configured, else the URL token."""
        keys, token = self._keys(), self._token()
        if keys and described.subject_id:
            headers = sign_headers(keys[0].decode(), described.subject_id, timestamp)
            return Signed(headers, valid_for=self.settings.kie_tolerance_seconds)
        if token is not None:
            return Signed({}, {TOKEN_PARAM: token.decode()}, auth="url_token")
        if keys:
            raise SigningError(
                "no taskId (data.taskId, taskId or data.task_id), so it cannot "
                "be HMAC-signed; set VOICEHOOKS_KIE_URL_TOKEN to send it with the URL token"
            )
        raise SigningError(
            "no kie.ai key configured: set VOICEHOOKS_KIE_HMAC_KEYS or VOICEHOOKS_KIE_URL_TOKEN"
        )

    def parse(self, event_type: str | None, body: ReceivedBody) -> KieCallback:
        with body.open() as fh:
            return parse_callback(load_document(fh.read()))


def _fields(body: ReceivedBody) -> tuple[dict[str, Any], str | None]:
    """``{"task_id", "state"}`` from a body, or the reason it could not be read. Never raises."""
    if body.spooled:
        try:
            with body.open() as fh:
                raw = jsonstream.read_fields(fh, _ID_PATHS)
        except ValueError as exc:
            return {}, f"body is not valid JSON: {exc}"
        document: Any = {
            "taskId": raw.get(("taskId",)),
            "data": {
                "taskId": raw.get(("data", "taskId")),
                "task_id": raw.get(("data", "task_id")),
                "state": raw.get(("data", "state")),
            },
        }
    else:
        document, error = load_small_json(body)
        if error is not None:
            return {}, error
    if not isinstance(document, dict):
        return {}, "body is JSON but not an object"
    data = document.get("data")
    state = data.get("state") if isinstance(data, dict) else None
    return {
        "task_id": task_id_of(document),
        "state": state if isinstance(state, str) else None,
    }, None
