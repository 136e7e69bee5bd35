"""Distinct, correctly signed ElevenLabs transcription webhooks for the benchmarks.

Every body is the documented transcription fixture (about 2.5 KB as compact JSON) with its own
``event_timestamp`` and ``data.conversation_id``, so no two requests share a dedupe key: each 2xx
from a storing target must then be a new row, which is what lets the harness check stored == 2xx.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

from receiver.sources.elevenlabs import sign

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "elevenlabs" / "post_call_transcription.json"
WEBHOOK_PATH = "/webhooks/elevenlabs"
_TS_MARK = "7777777777777"
_ID_MARK = "@@conversation_id@@"


class Bodies:
    """A source of never-repeating bodies; ``take(n)`` reserves the next ``n`` indices."""

    def __init__(self, secret: str, event_type: str | None = None, fixture: Path = FIXTURE) -> None:
        self.secret = secret.encode()
        self._secret_text = secret
        document = json.loads(fixture.read_text())
        if event_type is not None:
            document["type"] = event_type
        document["event_timestamp"] = int(_TS_MARK)
        document["data"]["conversation_id"] = _ID_MARK
        text = json.dumps(document)  # the fixture's indentation dropped: ~2.5 KB
        ts_at, id_at = text.index(_TS_MARK), text.index(_ID_MARK)
        # The body is head + first + mid + second + tail, in document order.
        (first_at, first_len), (second_at, second_len) = sorted(
            [(ts_at, len(_TS_MARK)), (id_at, len(_ID_MARK))]
        )
        self.ts_first = ts_at < id_at
        self.head = text[:first_at]
        self.mid = text[first_at + first_len : second_at]
        self.tail = text[second_at + second_len :]
        self._run = secrets.token_hex(4)
        self._next = 0
        self._base_ts = int(time.time())

    def take(self, n: int) -> range:
        start, self._next = self._next, self._next + n
        return range(start, start + n)

    def fields(self, index: int) -> tuple[str, str]:
        timestamp = str(self._base_ts + index)
        conversation = f"bench_{self._run}_{index:09d}"
        return (timestamp, conversation) if self.ts_first else (conversation, timestamp)

    def body(self, index: int) -> bytes:
        first, second = self.fields(index)
        return (self.head + first + self.mid + second + self.tail).encode()

    def signer(self, timestamp: int) -> hmac.HMAC:
        """An HMAC already fed ``"<t>."``: copy it per body instead of re-keying each time."""
        return hmac.new(self.secret, f"{timestamp}.".encode(), hashlib.sha256)

    def check_signing(self, timestamp: int) -> None:
        """Our fast signing must produce exactly what the receiver's own ``sign`` produces."""
        body = self.body(0)
        mac = self.signer(timestamp).copy()
        mac.update(body)
        expected = sign(self._secret_text, body, timestamp)
        assert expected == f"t={timestamp},v0={mac.hexdigest()}", "bench signing is wrong"

    def write_wrk_file(self, path: Path, indices: range, timestamp: int) -> None:
        """The data file bench/webhooks.lua reads (format described there)."""
        self.check_signing(timestamp)
        prefix = self.signer(timestamp)
        with path.open("w") as out:
            out.write(f"{WEBHOOK_PATH}\n{timestamp}\n{self.head}\n{self.mid}\n{self.tail}\n")
            lines = []
            for index in indices:
                first, second = self.fields(index)
                mac = prefix.copy()
                mac.update((self.head + first + self.mid + second + self.tail).encode())
                lines.append(f"{first} {second} {mac.hexdigest()}\n")
            out.writelines(lines)

    def http_request(self, index: int, timestamp: int, prefix: hmac.HMAC | None = None) -> bytes:
        """One complete HTTP/1.1 request for body ``index`` (for the paced and idle clients)."""
        body = self.body(index)
        mac = (prefix or self.signer(timestamp)).copy()
        mac.update(body)
        return (
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\n"
            f"ElevenLabs-Signature: t={timestamp},v0={mac.hexdigest()}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
