"""Our ElevenLabs signature scheme is byte-compatible with the official ``elevenlabs`` SDK.

``ElevenLabs(...).webhooks.construct_event(rawBody: str, sig_header, secret)`` is the provider's
own verifier (``elevenlabs/webhooks_custom.py``). It takes the body as *text* and signs
``f"{t}.{rawBody}".encode("utf-8")``, while we HMAC the raw bytes as they stream in. The two agree
exactly when the body is UTF-8, which every ElevenLabs body is, so the tests below run every
fixture plus unicode-heavy bodies both ways: signed by us and checked by the SDK, and signed the
SDK's way and checked by our streaming verifier. A tampered body must fail in both.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from elevenlabs import ElevenLabs
from elevenlabs.errors import BadRequestError

from receiver.body import ReceivedBody
from receiver.errors import AuthError
from receiver.settings import Settings
from receiver.sources.elevenlabs import ElevenLabsSource, sign

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_FILES = sorted((ROOT / "fixtures" / "elevenlabs").glob("*.json"))
# ASCII and non-ASCII secrets: the SDK encodes the secret as UTF-8, and so must we.
SECRETS = ["wsec_3f9c2a7d41e8b6c05d2e9f1a7b4c8d0e", "clé-secrète-🔑"]


def _envelope(**data: object) -> dict[str, object]:
    return {"type": "post_call_transcription", "event_timestamp": 1760000000, "data": data}


# Bodies whose bytes would change under any decode/re-encode or normalisation slip: raw UTF-8
# (not \u escapes) in every plane, NFC vs NFD forms, a BOM-like char, line separators, CRLF.
UNICODE_BODIES: dict[str, bytes] = {
    "raw_utf8_every_plane": json.dumps(
        _envelope(
            conversation_id="conv_ü",
            message="Grüße, 你好, 안녕, привет, γειά, مرحبا, שלום, नमस्ते, สวัสดี, 𝄞, 👩🏽‍💻, 🇺🇦",
        ),
        ensure_ascii=False,
    ).encode(),
    "nfc_and_nfd_side_by_side": json.dumps(
        _envelope(conversation_id="c", nfc="caf\u00e9", nfd="cafe\u0301"), ensure_ascii=False
    ).encode(),
    "separators_and_controls": (
        '{"type":"post_call_transcription","event_timestamp":1,\r\n'
        '"data":{"conversation_id":"c","m":"a\u2028b\u2029c\ufeffd\\u0000\\t\\"\\\\"}}\r\n'
    ).encode(),
    "escaped_and_raw_mixed": json.dumps(
        _envelope(conversation_id="c", escaped="caf\u00e9 🎵"), ensure_ascii=True
    )[:-1].encode()
    + ', "raw": "café 🎵"}'.encode(),
}

PAYLOADS: dict[str, bytes] = {
    **{path.name: path.read_bytes() for path in FIXTURE_FILES},
    **UNICODE_BODIES,
}


@functools.cache
def sdk() -> ElevenLabs:
    """One client for the module: building it (an httpx client per call) costs ~80 ms."""
    return ElevenLabs(api_key="x")


def sdk_style_header(secret: str, raw_body: str, timestamp: int) -> str:
    """The header the SDK's ``construct_event`` expects, computed exactly the way it checks it.

    The SDK has no signing helper; this mirrors its verification: HMAC-SHA256 keyed with
    ``secret.encode("utf-8")`` over ``f"{timestamp}.{rawBody}".encode("utf-8")``, hex, ``v0=``.
    """
    message = f"{timestamp}.{raw_body}".encode()
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return f"t={timestamp},v0={digest}"


def ours_verify(secret: str, header: str, body: bytes) -> None:
    """Run our verifier as the app does: begin, update chunk by chunk, verify (raises AuthError)."""
    source = ElevenLabsSource(Settings(elevenlabs_secrets=[secret]))
    verifier = source.begin({"elevenlabs-signature": header}, {})
    for i in range(0, len(body), 4096):
        verifier.update(body[i : i + 4096])
    verifier.verify(ReceivedBody(len(body), hashlib.sha256(body).hexdigest(), data=body))


def tampered(body: bytes) -> list[bytes]:
    """Small changes a forger or a broken proxy might make: a byte, whitespace, re-encoding."""
    # Flip one ASCII letter or digit (so the forgery is still valid UTF-8 for the SDK's str API).
    letters = [i for i, byte in enumerate(body) if chr(byte).isascii() and chr(byte).isalnum()]
    middle = min(letters, key=lambda i: abs(i - len(body) // 2))
    variants = [
        body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1 :],
        body + b" ",
        body.rstrip(b"\n") if body.endswith(b"\n") else body + b"\n",
    ]
    reencoded = json.dumps(json.loads(body)).encode()  # same JSON value, different bytes
    if reencoded != body:
        variants.append(reencoded)
    return variants


def test_every_fixture_is_covered() -> None:
    assert len(FIXTURE_FILES) >= 14
    assert all(json.loads(body) is not None for body in PAYLOADS.values())
    assert any(not body.isascii() for body in PAYLOADS.values())


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_signed_by_us_verifies_with_the_sdk(name: str, secret: str) -> None:
    body = PAYLOADS[name]
    event = sdk().webhooks.construct_event(body.decode("utf-8"), sign(secret, body), secret)
    assert event == json.loads(body)


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_signed_the_sdk_way_verifies_with_us(name: str, secret: str) -> None:
    body = PAYLOADS[name]
    text = body.decode("utf-8")
    ts = int(time.time())
    header = sdk_style_header(secret, text, ts)
    # The replica really is what the SDK accepts ...
    assert sdk().webhooks.construct_event(text, header, secret) == json.loads(body)
    # ... our streaming verifier accepts it ...
    ours_verify(secret, header, body)
    # ... and the two schemes produce the very same header string.
    assert header == sign(secret, body, ts)


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_tampered_body_is_rejected_by_both(name: str) -> None:
    secret = SECRETS[0]
    body = PAYLOADS[name]
    header = sign(secret, body)
    for forged in tampered(body):
        with pytest.raises(BadRequestError) as sdk_refusal:
            sdk().webhooks.construct_event(forged.decode("utf-8"), header, secret)
        assert sdk_refusal.value.status_code == 400
        with pytest.raises(AuthError) as our_refusal:
            ours_verify(secret, header, forged)
        assert our_refusal.value.code == "signature_mismatch"


def test_wrong_secret_is_rejected_by_both() -> None:
    body = PAYLOADS["transcription_unicode.json"]
    header = sign("attacker-guess", body)
    with pytest.raises(BadRequestError):
        sdk().webhooks.construct_event(body.decode("utf-8"), header, SECRETS[0])
    with pytest.raises(AuthError) as refusal:
        ours_verify(SECRETS[0], header, body)
    assert refusal.value.code == "signature_mismatch"
