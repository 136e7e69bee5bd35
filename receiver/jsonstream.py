"""Streaming access to large JSON webhook bodies spooled to disk.

ElevenLabs ``post_call_audio`` webhooks carry the whole call recording as one base64 string
(``data.full_audio``), so a body can be hundreds of MB.  ``json.load`` would hold the body, the
decoded ``str`` and the decoded audio in memory at once.  This module instead makes one forward
pass over the file with a small buffer:

* :func:`read_fields` pulls a few small values (``type``, ``data.conversation_id`` ...) out of
  the document, whatever the key order;
* :func:`copy_string` streams the decoded content of one string value to a callback;
* :class:`Base64StreamDecoder` turns a base64 stream into bytes incrementally;
* :func:`decode_base64_string` combines the last two to write the MP3 to a file.

Memory stays at a few multiples of ``chunk_size`` no matter how large the body is.  Speed
comes from never looking at string contents byte by byte in Python: the scanner jumps from
quote to backslash with ``bytes.find`` over whole chunks, and base64 is decoded by
``binascii`` in large blocks.

Only UTF-8 JSON (RFC 8259) is accepted; a leading UTF-8 byte order mark is tolerated.
``NaN``/``Infinity`` and other extensions are rejected.  Structure (brackets, commas, colons,
keys, numbers, literals, escapes) is fully validated.  The *contents* of string values that
are skipped over are not checked for raw control characters or UTF-8 validity, because that
would cost a pass over every byte and cannot change where keys are; every value that is
returned or copied is checked completely.

If a key occurs more than once in an object, :func:`read_fields` uses the first occurrence
(``json.loads`` keeps the last one; later ones cannot be known without reading on).
:func:`copy_string` reads the whole document anyway and rejects a duplicate of the target key
or of any key on the way to it, since the two interpretations would disagree.
"""

from __future__ import annotations

import binascii
import codecs
import contextlib
import json
import re
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

__all__ = [
    "Base64DecodeError",
    "Base64StreamDecoder",
    "JSONStreamError",
    "copy_string",
    "decode_base64_string",
    "read_fields",
]

Path = tuple[str, ...]

DEFAULT_CHUNK_SIZE = 1 << 20
#: Keys longer than this (encoded) are skipped without being decoded; they can never match.
MAX_KEY_BYTES = 64 * 1024
#: A number token longer than this is rejected instead of being buffered without bound.
MAX_NUMBER_BYTES = 64 * 1024

#: Deeper nesting is rejected (json.loads gives up near 1000), so a body of 300 MB of "["
#: cannot grow the bracket stack without bound.
MAX_DEPTH = 10_000

_QUOTE = ord('"')
_LBRACE, _RBRACE = ord("{"), ord("}")
_LBRACKET, _RBRACKET = ord("["), ord("]")
_COMMA, _COLON = ord(","), ord(":")
_NUMBER_START = frozenset(b"-0123456789")
_LITERALS = {ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}
_SIMPLE_ESCAPES = {
    ord('"'): b'"',
    ord("\\"): b"\\",
    ord("/"): b"/",
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
}
_CONTROL_BYTES = bytes(range(0x20))
_BOM = b"\xef\xbb\xbf"

_WHITESPACE_RE = re.compile(rb"[ \t\n\r]*")
_NUMBER_CHARS_RE = re.compile(rb"[-+.eE0-9]*")
_NUMBER_RE = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_HEX4_RE = re.compile(rb"[0-9a-fA-F]{4}")
_CONTROL_RE = re.compile(rb"[\x00-\x1f]")
# A backslash that does not start a "\/" escape (or whose next byte is not buffered yet).
# Runs of plain text and "\/" (PHP-style encoders escape every slash of a base64 string)
# are handled with one bytes.replace instead of a Python step per escape.
_HARD_ESCAPE_RE = re.compile(rb"\\(?!/)")


class JSONStreamError(ValueError):
    """The document is malformed or truncated, or the requested value is missing/unusable."""


class _Done(Exception):
    """Internal: every requested field has been resolved, stop reading."""


def _span_end(pattern: re.Pattern[bytes], buf: bytes, pos: int) -> int:
    """End of the (possibly empty) run matched by a ``[...]*`` pattern at ``pos``."""
    match = pattern.match(buf, pos)
    assert match is not None  # a starred pattern always matches
    return match.end()


def _describe(byte: int) -> str:
    return repr(chr(byte)) if 0x20 <= byte < 0x7F else f"byte 0x{byte:02x}"


def _error(message: str, offset: int) -> JSONStreamError:
    return JSONStreamError(f"{message} at byte {offset}")


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


def _loads(raw: bytes, offset: int) -> Any:
    """Decode a captured, structurally valid value; strict about its string contents.

    Duplicate keys inside it resolve like paths do: the first occurrence wins.
    """
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_first_wins)
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, int digit limit
        raise _error(f"invalid value ({exc})", offset) from None


class _Capture:
    """Collects the raw bytes the reader consumes, up to a limit, across buffer refills."""

    __slots__ = ("limit", "mark", "overflow", "parts", "size")

    def __init__(self, mark: int, limit: int) -> None:
        self.mark = mark
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.overflow = False

    def take(self, buf: bytes, end: int) -> None:
        if not self.overflow and end > self.mark:
            self.size += end - self.mark
            if self.size > self.limit:
                self.overflow = True
                self.parts = []
            else:
                self.parts.append(buf[self.mark : end])
        self.mark = 0


class _StringSink:
    """Receives decoded string content for copy_string and checks what JSON requires of it.

    Raw segments must not contain control characters and, together with escape output, must
    form valid UTF-8.  Pure-ASCII segments (base64 audio) take a fast path: ``isascii`` is a
    C loop, the incremental decoder is only involved for non-ASCII data.
    """

    def __init__(self, reader: _Reader, write: Callable[[bytes], object]) -> None:
        self._reader = reader
        self._write = write
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._utf8_pending = False
        self.count = 0

    def raw(self, data: bytes, start: int) -> None:
        """``data`` is verbatim string content that began at buffer index ``start``."""
        if len(data.translate(None, _CONTROL_BYTES)) != len(data):
            m = _CONTROL_RE.search(data)
            assert m is not None
            raise self._reader.error("unescaped control character in string", start + m.start())
        self._emit(data, start)

    def escaped(self, data: bytes, start: int) -> None:
        """``data`` is the UTF-8 encoding of an escape sequence found at ``start``."""
        self._emit(data, start)

    def _emit(self, data: bytes, start: int) -> None:
        if self._utf8_pending or not data.isascii():
            try:
                self._utf8.decode(data)
            except UnicodeDecodeError as exc:
                raise self._reader.error("invalid UTF-8 in string", start + exc.start) from None
            self._utf8_pending = self._utf8.getstate()[0] != b""
        if data:
            self._write(data)
            self.count += len(data)

    def close(self, end: int) -> None:
        if self._utf8_pending:
            raise self._reader.error("truncated UTF-8 sequence at end of string", end)


class _Reader:
    """A forward-only byte buffer over ``fp`` with a small JSON lexer on top.

    ``buf[pos:]`` is the unconsumed input; ``_base`` is the file offset of ``buf[0]`` so errors
    can name the absolute byte offset.  Refilling drops consumed bytes, so memory is bounded by
    the chunk size plus the longest token that has to be seen whole (a few bytes for escapes
    and literals, ``MAX_NUMBER_BYTES`` for numbers).
    """

    def __init__(self, fp: BinaryIO, chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self._fp = fp
        self._chunk_size = chunk_size
        self._base = 0
        self._eof = False
        self._captures: list[_Capture] = []
        self._fills = 0  # bumped whenever buf is replaced; buffer indices are per generation
        self.buf = b""
        self.pos = 0

    # -- buffer management ------------------------------------------------------------------

    def tell(self) -> int:
        """Absolute file offset of ``pos``; buffer indices go stale when the buffer refills."""
        return self._base + self.pos

    def error(self, message: str, index: int | None = None) -> JSONStreamError:
        """An error located at buffer index ``index`` (default: ``pos``)."""
        return _error(message, self._base + (self.pos if index is None else index))

    def fill(self) -> bool:
        """Append the next chunk, dropping consumed bytes.  False at end of input."""
        if self._eof:
            return False
        chunk = self._fp.read(self._chunk_size)
        if not chunk:
            self._eof = True
            return False
        for cap in self._captures:
            cap.take(self.buf, self.pos)
        self._base += self.pos
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        self._fills += 1
        return True

    def ensure(self, n: int) -> bool:
        """Make at least ``n`` unconsumed bytes available; False if the input ends first."""
        while len(self.buf) - self.pos < n:
            if not self.fill():
                return False
        return True

    def start_capture(self, limit: int) -> _Capture:
        cap = _Capture(self.pos, limit)
        self._captures.append(cap)
        return cap

    def end_capture(self, cap: _Capture) -> bytes | None:
        """Stop capturing; the raw bytes consumed since the start, or None if over the limit."""
        self._captures.remove(cap)
        cap.take(self.buf, self.pos)
        return None if cap.overflow else b"".join(cap.parts)

    # -- lexing -----------------------------------------------------------------------------

    def peek(self) -> int:
        """Skip whitespace and return the next byte without consuming it."""
        while True:
            self.pos = _span_end(_WHITESPACE_RE, self.buf, self.pos)
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                raise self.error("unexpected end of document")

    def at_end(self) -> bool:
        """Skip whitespace; True if nothing but whitespace is left."""
        try:
            self.peek()
        except JSONStreamError:
            return True
        return False

    def skip_bom(self) -> None:
        if self.ensure(len(_BOM)) and self.buf.startswith(_BOM, self.pos):
            self.pos += len(_BOM)

    def expect(self, byte: int, what: str) -> None:
        found = self.peek()
        if found != byte:
            raise self.error(f"expected {what}, found {_describe(found)}")
        self.pos += 1

    def read_key(self) -> str | None:
        """Consume an object key; None if it is too long to be worth decoding."""
        found = self.peek()
        if found != _QUOTE:
            raise self.error(f"expected string key, found {_describe(found)}")
        start = self.tell()
        cap = self.start_capture(MAX_KEY_BYTES)
        self.pos += 1
        self.scan_string(None)
        raw = self.end_capture(cap)
        return None if raw is None else _loads(raw, start)

    def scan_string(self, sink: _StringSink | None) -> None:
        """Consume string content through the closing quote; ``pos`` starts after the opener.

        Between escapes the content is located with ``bytes.find`` over the whole buffer, so
        a 300 MB base64 string costs a few C-level scans per chunk.
        """
        quote_fill, quote = -1, -1
        while True:
            buf, pos = self.buf, self.pos
            if quote_fill != self._fills or 0 <= quote < pos:
                # Only look again when the buffer changed or the quote found was escaped
                # (re-searching per escape would be quadratic in escape-heavy strings).
                quote_fill, quote = self._fills, buf.find(b'"', pos)
            end = quote if quote >= 0 else len(buf)
            backslash = buf.find(b"\\", pos, end)
            if backslash < 0:
                if sink is not None and end > pos:
                    sink.raw(buf[pos:end], pos)
                if quote >= 0:
                    self.pos = quote + 1
                    if sink is not None:
                        sink.close(quote)
                    return
                self.pos = end
                if not self.fill():
                    raise self.error("unterminated string")
                continue
            hard = _HARD_ESCAPE_RE.search(buf, backslash, end)
            stop = hard.start() if hard else end
            if stop > backslash:
                # [pos, stop) is plain text plus "\/" escapes only.
                if sink is not None:
                    sink.raw(buf[pos:stop].replace(b"\\/", b"/"), pos)
                self.pos = stop
                continue
            if sink is not None and backslash > pos:
                sink.raw(buf[pos:backslash], pos)
            self.pos = backslash
            self._escape(sink)

    def _escape(self, sink: _StringSink | None) -> None:
        """Consume one escape sequence at ``pos`` (which is a backslash)."""
        # ensure() may refill and move the buffer, so indices are taken after each call.
        if not self.ensure(2):
            raise self.error("unterminated string")
        kind = self.buf[self.pos + 1]
        if kind != ord("u"):
            out = _SIMPLE_ESCAPES.get(kind)
            if out is None:
                raise self.error(f"invalid escape {self.buf[self.pos : self.pos + 2]!r}")
            if sink is not None:
                sink.escaped(out, self.pos)
            self.pos += 2
            return
        if not self.ensure(6):
            raise self.error("unterminated string")
        if not _HEX4_RE.fullmatch(self.buf, self.pos + 2, self.pos + 6):
            raise self.error("invalid \\u escape")
        code = int(self.buf[self.pos + 2 : self.pos + 6], 16)
        length = 6
        if 0xD800 <= code < 0xDC00 and self.ensure(12):
            # A high surrogate combines with an immediately following low surrogate escape.
            low = self.pos + 6
            if self.buf.startswith(b"\\u", low) and _HEX4_RE.fullmatch(self.buf, low + 2, low + 6):
                low_code = int(self.buf[low + 2 : low + 6], 16)
                if 0xDC00 <= low_code < 0xE000:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low_code - 0xDC00)
                    length = 12
        if sink is not None:
            if 0xD800 <= code < 0xE000:
                raise self.error("lone surrogate escape cannot be encoded as UTF-8")
            sink.escaped(chr(code).encode("utf-8"), self.pos)
        self.pos += length

    def skip_number(self) -> None:
        """Consume a number token, which may straddle chunks.

        ``pos`` stays on the token's first byte while more input is appended, so the token is
        seen whole; ``MAX_NUMBER_BYTES`` bounds how much may pile up.
        """
        scanned = 0
        while True:
            end = _span_end(_NUMBER_CHARS_RE, self.buf, self.pos + scanned)
            scanned = end - self.pos
            if scanned > MAX_NUMBER_BYTES:
                raise self.error("number too long")
            if end < len(self.buf) or not self.fill():
                break
        if not _NUMBER_RE.fullmatch(self.buf, self.pos, end):
            raise self.error(f"invalid number {self.buf[self.pos : end][:40]!r}")
        self.pos = end

    def skip_value(self) -> None:
        """Consume one complete JSON value, validating its structure.

        Iterative with an explicit stack so deeply nested input cannot hit the recursion limit.
        """
        stack = bytearray()  # the closing bracket of each open container
        while True:
            # Expecting a value.
            byte = self.peek()
            if byte in (_LBRACE, _LBRACKET):
                self.pos += 1
                close = _RBRACE if byte == _LBRACE else _RBRACKET
                if self.peek() == close:
                    self.pos += 1
                else:
                    if len(stack) >= MAX_DEPTH:
                        raise self.error("nesting too deep")
                    stack.append(close)
                    if close == _RBRACE:
                        self._skip_key()
                    continue
            elif byte == _QUOTE:
                self.pos += 1
                self.scan_string(None)
            elif byte in _NUMBER_START:
                self.skip_number()
            elif byte in _LITERALS:
                literal = _LITERALS[byte]
                self.ensure(len(literal))
                if not self.buf.startswith(literal, self.pos):
                    raise self.error(f"invalid literal (expected {literal.decode()!r})")
                self.pos += len(literal)
            else:
                raise self.error(f"expected a value, found {_describe(byte)}")
            # A value is complete: close containers until one continues with a comma.
            while stack:
                byte = self.peek()
                self.pos += 1
                if byte == _COMMA:
                    if stack[-1] == _RBRACE:
                        self._skip_key()
                    break
                if byte != stack[-1]:
                    self.pos -= 1
                    raise self.error(
                        f"expected ',' or {_describe(stack[-1])}, found {_describe(byte)}"
                    )
                stack.pop()
            else:
                return

    def _skip_key(self) -> None:
        found = self.peek()
        if found != _QUOTE:
            raise self.error(f"expected string key, found {_describe(found)}")
        self.pos += 1
        self.scan_string(None)
        self.expect(_COLON, "':'")


# A visitor consumes the value of the member at ``path`` (the reader is positioned on it).
_Visitor = Callable[[_Reader, Path], None]


def _walk_members(reader: _Reader, prefix: Path, visit: _Visitor) -> None:
    """Walk the members of an object whose ``{`` has just been consumed."""
    if reader.peek() == _RBRACE:
        reader.pos += 1
        return
    while True:
        key = reader.read_key()
        reader.expect(_COLON, "':'")
        if key is None:
            reader.skip_value()
        else:
            visit(reader, (*prefix, key))
        byte = reader.peek()
        reader.pos += 1
        if byte == _RBRACE:
            return
        if byte != _COMMA:
            reader.pos -= 1
            raise reader.error(f"expected ',' or '}}', found {_describe(byte)}")


def _enter_or_skip(reader: _Reader, path: Path, visit: _Visitor) -> None:
    """Walk into the value if it is an object, otherwise skip it."""
    if reader.peek() == _LBRACE:
        reader.pos += 1
        _walk_members(reader, path, visit)
    else:
        reader.skip_value()


def _walk_document(reader: _Reader, visit: _Visitor) -> None:
    reader.skip_bom()
    _enter_or_skip(reader, (), visit)
    if not reader.at_end():
        raise reader.error("unexpected data after the document")


def _check_path(path: Iterable[str]) -> Path:
    path = tuple(path)
    if not path or not all(isinstance(key, str) for key in path):
        raise ValueError(f"a path must be a non-empty tuple of str keys, got {path!r}")
    return path


def read_fields(
    fp: BinaryIO,
    paths: Iterable[tuple[str, ...]],
    *,
    max_value_bytes: int = 64 * 1024,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[tuple[str, ...], Any]:
    """Return the values at ``paths`` (key paths through nested objects) in one pass.

    Each path, e.g. ``("data", "conversation_id")``, names a member reached through objects
    only.  The result maps each path that was found to its decoded value (any JSON value).
    Paths that are absent, pass through a non-object, or whose value encodes to more than
    ``max_value_bytes`` bytes are simply left out: a huge value is skipped at scanning speed
    and never materialised, so a caller asking for ``("type",)`` cannot be made to load a
    300 MB value.  A path may be a prefix of another; both are resolved.

    ``fp`` is read from its current position.  Reading stops as soon as every path is
    resolved, so the rest of the document is not validated and ``fp`` is left at an
    unspecified position.  If some path is not found the
    whole document is read and validated.  Raises :class:`JSONStreamError` for malformed or
    truncated input met while reading.
    """
    pending = {_check_path(path) for path in paths}
    found: dict[Path, Any] = {}
    if not pending:
        return found
    seen: set[Path] = set()  # relevant members met so far, so later duplicates are ignored

    def visit(reader: _Reader, path: Path) -> None:
        depth = len(path)
        want_value = path in pending
        want_inside = any(len(p) > depth and p[:depth] == path for p in pending)
        if path in seen or not (want_value or want_inside):
            reader.skip_value()
            return
        seen.add(path)
        reader.peek()  # capture from the value's first byte, not the whitespace before it
        start = reader.tell()
        cap = reader.start_capture(max_value_bytes) if want_value else None
        if want_inside:
            _enter_or_skip(reader, path, visit)
        else:
            reader.skip_value()
        if cap is not None:
            raw = reader.end_capture(cap)
            pending.discard(path)
            if raw is not None:
                found[path] = _loads(raw, start)
            if not pending:
                raise _Done

    with contextlib.suppress(_Done):
        _walk_document(_Reader(fp, chunk_size), visit)
    return found


def copy_string(
    fp: BinaryIO,
    path: tuple[str, ...],
    write: Callable[[bytes], object],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Stream the decoded content of the string at ``path`` to ``write``; return its length.

    ``write`` receives the UTF-8 bytes of the string with all escapes resolved (``\\uXXXX``
    surrogate pairs are combined), in pieces of roughly ``chunk_size`` bytes or smaller.
    ``fp`` is read from its current position to the end.
    The whole document is read and validated, including after the string, so a truncated or
    malformed body is always reported.  Because that check can only finish after the content
    has been written, treat whatever ``write`` received as garbage if this raises.

    Raises :class:`JSONStreamError` if the document is malformed or truncated, ``path`` is
    missing, its value is not a string, a key on it is duplicated, or the string cannot be
    represented as UTF-8 (a lone ``\\uD800``-style surrogate escape).
    """
    target = _check_path(path)
    copied: list[int] = []
    seen: set[Path] = set()

    def visit(reader: _Reader, member: Path) -> None:
        on_route = len(member) <= len(target) and target[: len(member)] == member
        if on_route:
            # json.loads would take the last duplicate, this scanner the first: refuse to guess.
            if member in seen:
                raise reader.error(f"duplicate key {member[-1]!r} on path {target!r}")
            seen.add(member)
        if member == target:
            byte = reader.peek()
            if byte != _QUOTE:
                raise reader.error(f"value at path {target!r} is not a string")
            reader.pos += 1
            sink = _StringSink(reader, write)
            reader.scan_string(sink)
            copied.append(sink.count)
        elif on_route:
            _enter_or_skip(reader, member, visit)
        else:
            reader.skip_value()

    _walk_document(_Reader(fp, chunk_size), visit)
    if not copied:
        raise JSONStreamError(f"no string value at path {target!r}")
    return copied[0]


class Base64DecodeError(binascii.Error):
    """Invalid base64 input.  Also a ValueError, like every ``binascii.Error``."""


_B64_ALPHABET_RE = re.compile(rb"[^A-Za-z0-9+/=]")
_PAD = ord("=")


class Base64StreamDecoder:
    """Incremental strict base64 (RFC 4648, standard alphabet) decoder.

    Feed any chunking of the encoded text; each call decodes every complete 4-character group
    received so far (with ``binascii.a2b_base64(strict_mode=True)``, in C, on the whole block)
    and carries the remaining 0-3 characters to the next call.  After an error the decoder
    is unusable.

    Strict means: only ``A-Z a-z 0-9 + /`` and ``=`` padding, padding required, ``=`` only at
    the very end (at most two, completing the last group), nothing after it.  As the one
    leniency, ``\\n`` and ``\\r`` are dropped anywhere so MIME-style line-wrapped input decodes;
    JSON strings from ElevenLabs contain none.  Errors are :class:`Base64DecodeError` and
    name the offset in the encoded text, counted without those line breaks.
    """

    def __init__(self) -> None:
        self._carry = b""
        self._offset = 0  # position of _carry[0] in the encoded text (line breaks not counted)
        self._padded = False
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        """Decode as much of ``data`` (plus any carried remainder) as forms whole groups."""
        if self._finished:
            raise ValueError("feed() called after finish()")
        if b"\n" in data or b"\r" in data:
            data = data.replace(b"\n", b"").replace(b"\r", b"")
        if not data:
            return b""
        if self._padded:
            raise self._error("data after padding", self._offset, data[:1])
        buf = self._carry + data if self._carry else data
        whole = len(buf) - len(buf) % 4
        self._carry = bytes(buf[whole:])
        if not whole:
            return b""
        block = memoryview(buf)[:whole]
        base = self._offset
        self._offset += whole
        if block[-1] == _PAD:
            self._padded = True
            if block[-3] == _PAD:  # "x===" or "====": a group cannot carry three pad chars
                raise self._locate(bytes(block[-4:]), base + whole - 4)
        try:
            return binascii.a2b_base64(block, strict_mode=True)
        except binascii.Error:
            raise self._locate(bytes(block), base) from None

    def finish(self) -> bytes:
        """Check that the input ended on a group boundary; returns the (empty) remainder."""
        self._finished = True
        if self._carry:
            raise self._error(
                f"truncated input: {len(self._carry)} character(s) after the last complete"
                " group (missing padding?)",
                self._offset,
            )
        return b""

    def _locate(self, block: bytes, base: int) -> Base64DecodeError:
        """Explain why ``block`` (encoded text starting at ``base``) was rejected.

        Only runs on the error path, so it may take its time.
        """
        bad = _B64_ALPHABET_RE.search(block)
        if bad:
            return self._error("invalid character", base + bad.start(), bad.group())
        pad = block.find(b"=")
        if pad < 0:  # not expected: all characters valid, length a multiple of 4, no padding
            return self._error("undecodable group", base + len(block) - 4)
        group_end = pad - pad % 4 + 4
        if pad % 4 < 2:
            return self._error("misplaced padding", base + pad, b"=")
        for i in range(pad, group_end):
            if block[i] != _PAD:
                return self._error("data after padding", base + i, block[i : i + 1])
        return self._error("data after padding", base + group_end, block[group_end : group_end + 1])

    @staticmethod
    def _error(message: str, offset: int, char: bytes | None = None) -> Base64DecodeError:
        what = f" {char!r}" if char else ""
        return Base64DecodeError(f"invalid base64: {message}{what} at offset {offset}")


def decode_base64_string(
    fp: BinaryIO,
    path: tuple[str, ...],
    out: BinaryIO,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Base64-decode the JSON string at ``path`` into ``out``; return the bytes written.

    Raises :class:`JSONStreamError` for JSON problems and :class:`Base64DecodeError` for bad
    base64 (offsets in the latter are within the string).  ``out`` may hold partial output
    when either is raised.
    """
    decoder = Base64StreamDecoder()
    written = 0

    def write(piece: bytes) -> None:
        nonlocal written
        decoded = decoder.feed(piece)
        if decoded:
            out.write(decoded)
            written += len(decoded)

    copy_string(fp, path, write, chunk_size=chunk_size)
    tail = decoder.finish()
    if tail:
        out.write(tail)
        written += len(tail)
    return written
