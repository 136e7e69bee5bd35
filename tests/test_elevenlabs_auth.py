"""ElevenLabs-Signature verification: every refusal has its own code, rotation works."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from receiver.body import ReceivedBody
from receiver.errors import AuthError
from receiver.settings import Settings
from receiver.sources.elevenlabs import ElevenLabsSource, sign

BODY = b'{"type":"post_call_transcription","event_timestamp":1,"data":{"conversation_id":"c"}}'


def source(*secrets: str, tolerance: int = 1800) -> ElevenLabsSource:
    return ElevenLabsSource(
        Settings(elevenlabs_secrets=list(secrets), elevenlabs_tolerance_seconds=tolerance)
    )


def check(src: ElevenLabsSource, header: str | None, body: bytes = BODY):  # type: ignore[no-untyped-def]
    headers = {} if header is None else {"elevenlabs-signature": header}
    verifier = src.begin(headers, {})
    for i in range(0, len(body), 7):  # the HMAC is computed while the body streams in
        verifier.update(body[i : i + 7])
    return verifier.verify(ReceivedBody(len(body), hashlib.sha256(body).hexdigest(), data=body))


def refusal(src: ElevenLabsSource, header: str | None, body: bytes = BODY) -> str:
    with pytest.raises(AuthError) as info:
        check(src, header, body)
    assert info.value.status == 401
    return info.value.code


def test_valid_signature_is_accepted_and_records_the_secret_index() -> None:
    auth = check(source("old", "new"), sign("new", BODY))
    assert (auth.method, auth.key_index) == ("hmac", 1)


def test_signature_is_over_timestamp_dot_raw_bytes() -> None:
    ts = int(time.time())
    digest = hmac.new(b"s3cret", f"{ts}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert check(source("s3cret"), f"t={ts},v0={digest}").key_index == 0


def test_any_of_several_v0_entries_may_match() -> None:
    ts = int(time.time())
    good = sign("k", BODY, ts).split("v0=")[1]
    assert check(source("k"), f"t={ts},v0={'0' * 64},v0={good}").method == "hmac"


def test_not_configured() -> None:
    assert refusal(source(), sign("k", BODY)) == "not_configured"


def test_missing_header() -> None:
    assert refusal(source("k"), None) == "missing_signature"


@pytest.mark.parametrize(
    "header", ["garbage", "t=123", "v0=" + "a" * 64, "t=1,v0=nothex", "t=1;v0=" + "a" * 64, ""]
)
def test_malformed_header(header: str) -> None:
    assert refusal(source("k"), header) == "malformed_signature"


def test_non_integer_timestamp() -> None:
    assert refusal(source("k"), "t=12.5,v0=" + "a" * 64) == "invalid_timestamp"


def test_expired_timestamp() -> None:
    old = int(time.time()) - 1801
    assert refusal(source("k"), sign("k", BODY, old)) == "timestamp_expired"
    # just inside the tolerance is fine
    assert check(source("k"), sign("k", BODY, int(time.time()) - 1700)).method == "hmac"


def test_future_timestamp() -> None:
    future = int(time.time()) + 301
    assert refusal(source("k"), sign("k", BODY, future)) == "timestamp_in_future"


def test_wrong_secret_and_tampered_body() -> None:
    assert refusal(source("k"), sign("other", BODY)) == "signature_mismatch"
    assert refusal(source("k"), sign("k", BODY), BODY + b" ") == "signature_mismatch"


def test_rotation_accepts_old_and_new_secrets() -> None:
    src = source("new", "old")
    assert check(src, sign("old", BODY)).key_index == 1
    assert check(src, sign("new", BODY)).key_index == 0


def test_error_detail_never_contains_the_secret_or_expected_digest() -> None:
    src = source("super-secret-value")
    with pytest.raises(AuthError) as info:
        check(src, sign("wrong", BODY))
    expected = sign("super-secret-value", BODY).split("v0=")[1]
    assert "super-secret-value" not in info.value.detail
    assert expected not in info.value.detail
