"""Tests for receiver.jsonstream: the streaming JSON field reader and base64 decoder.

The oracle is always the standard library: ``json.loads`` for documents and strings,
``binascii.a2b_base64(strict_mode=True)`` / ``base64.b64decode`` for base64.  Tiny chunk sizes
put a buffer boundary at every byte position, so escapes, numbers, literals and base64 groups
get split in every possible way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import itertools
import json
import os
import random
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.jsonstream import (
    Base64DecodeError,
    Base64StreamDecoder,
    JSONStreamError,
    copy_string,
    decode_base64_string,
    read_fields,
)

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- helpers ----------------------------------------------------------------------------------

# Characters that stress the scanner: JSON punctuation inside strings, every escape, control
# characters, multi-byte UTF-8 and a non-BMP character (a surrogate pair when ASCII-escaped).
TRICKY = '"\\/{}[]:, \t\n\r\b\f\x00\x1f\x7fé€\u2028😀'
text = st.text(st.sampled_from(TRICKY) | st.characters(codec="utf-8"), max_size=12)
keys = st.text(st.sampled_from('ab"\\{é😀 '), max_size=3)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)
documents = st.dictionaries(keys, values, max_size=6)
chunk_sizes = st.sampled_from([1, 2, 3, 4, 5, 7, 16, 1 << 20])
WHITESPACE = ["", " ", "\t", "\n", "\r\n", "  \n\t "]


def canon(value: Any) -> str:
    """Type- and order-exact comparison form (1 != 1.0 != True, -0.0 != 0.0)."""
    return json.dumps(value, sort_keys=True)


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


def object_paths(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in obj.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from object_paths(value, (*prefix, key))


def lookup(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            raise KeyError(path)
        obj = obj[key]
    return obj


def dumps_spaced(value: Any, ws: Iterator[str], ensure_ascii: bool) -> str:
    """json.dumps, but with whitespace from ``ws`` around every token."""
    if isinstance(value, dict):
        members = [
            f"{next(ws)}{json.dumps(k, ensure_ascii=ensure_ascii)}{next(ws)}:"
            f"{dumps_spaced(v, ws, ensure_ascii)}"
            for k, v in value.items()
        ]
        return "{" + ",".join(members) + next(ws) + "}" + next(ws)
    if isinstance(value, list):
        items = [dumps_spaced(v, ws, ensure_ascii) for v in value]
        return next(ws) + "[" + ",".join(items) + next(ws) + "]" + next(ws)
    return next(ws) + json.dumps(value, ensure_ascii=ensure_ascii) + next(ws)


@st.composite
def serialized(draw: st.DrawFn, docs: st.SearchStrategy[Any] = documents) -> tuple[Any, bytes]:
    """A document and one of many equivalent serializations of it."""
    doc = draw(docs)
    ensure_ascii = draw(st.booleans())
    style = draw(st.sampled_from(["compact", "spaced", "indent", "everywhere"]))
    if style == "everywhere":
        spaces = draw(st.lists(st.sampled_from(WHITESPACE), min_size=1, max_size=8))
        ws = iter(spaces * 10_000)
        out = dumps_spaced(doc, ws, ensure_ascii)
    elif style == "indent":
        indent = draw(st.sampled_from([0, 2, "\t", " \r\n"]))
        out = json.dumps(doc, ensure_ascii=ensure_ascii, indent=indent)
    else:
        seps = (",", ":") if style == "compact" else (" ,\t", " :\r\n")
        out = json.dumps(doc, ensure_ascii=ensure_ascii, separators=seps)
    return doc, out.encode("utf-8")


def escape_everything(s: str) -> str:
    """A JSON string literal with every character as a \\uXXXX escape (mixed hex case)."""
    utf16 = s.encode("utf-16-be")
    units = [int.from_bytes(utf16[i : i + 2], "big") for i in range(0, len(utf16), 2)]
    return '"' + "".join(f"\\u{u:04x}" if u % 2 else f"\\u{u:04X}" for u in units) + '"'


def slash_escaped(doc: bytes) -> bytes:
    r"""Escape every '/' as '\/' (PHP style).  '/' only ever occurs inside strings, unescaped."""
    return doc.replace(b"/", b"\\/")


def upper_hex(doc: bytes) -> bytes:
    r"""Upper-case the hex digits of every \u escape, respecting escape boundaries."""
    return re.sub(
        rb"\\(u[0-9a-f]{4}|.)",
        lambda m: b"\\u" + m.group(1)[1:].upper() if len(m.group(1)) == 5 else m.group(0),
        doc,
    )


def copied(doc: bytes, path: tuple[str, ...], chunk_size: int) -> bytes:
    pieces: list[bytes] = []
    count = copy_string(io.BytesIO(doc), path, pieces.append, chunk_size=chunk_size)
    assert all(isinstance(p, bytes) and p for p in pieces)
    data = b"".join(pieces)
    assert count == len(data)
    return data


def b64_decode_chunked(encoded: bytes, cuts: list[int]) -> bytes:
    decoder = Base64StreamDecoder()
    bounds = [0, *sorted(c % (len(encoded) + 1) for c in cuts), len(encoded)]
    out = [decoder.feed(encoded[a:b]) for a, b in itertools.pairwise(bounds)]
    out.append(decoder.finish())
    return b"".join(out)


# -- read_fields ------------------------------------------------------------------------------


@SETTINGS
@given(serialized(), chunk_sizes, st.data())
def test_read_fields_matches_json_loads(case: tuple[Any, bytes], chunk: int, data: Any) -> None:
    _, raw = case
    parsed = json.loads(raw)
    existing = sorted(set(object_paths(parsed)))
    wanted = data.draw(st.lists(st.sampled_from(existing), max_size=4)) if existing else []
    absent = data.draw(st.lists(st.tuples(keys, keys).map(lambda t: ("zz", *t)), max_size=1))
    got = read_fields(io.BytesIO(raw), wanted + absent, chunk_size=chunk, max_value_bytes=1 << 30)
    expected = {path: lookup(parsed, path) for path in wanted}
    assert canon(sorted(got.items())) == canon(sorted(expected.items()))


def test_read_fields_elevenlabs_any_key_order() -> None:
    body = {
        "data": {"full_audio": "QUJD" * 1000, "agent_id": "xyz", "conversation_id": "abc"},
        "type": "post_call_audio",
        "event_timestamp": 1739537319,
    }
    paths = [("type",), ("event_timestamp",), ("data", "conversation_id"), ("data", "agent_id")]
    for raw in (json.dumps(body), json.dumps(dict(reversed(body.items())), indent=2)):
        got = read_fields(io.BytesIO(raw.encode()), paths, chunk_size=100)
        assert got == {
            ("type",): "post_call_audio",
            ("event_timestamp",): 1739537319,
            ("data", "conversation_id"): "abc",
            ("data", "agent_id"): "xyz",
        }


def test_read_fields_tricky_strings_do_not_confuse_keys() -> None:
    raw = rb'{"x": "}\"{\"type\": 1, [", "y": {"type": 2}, "a\"b": [{"type": 3}], "type": 4}'
    for chunk in range(1, 8):
        got = read_fields(io.BytesIO(raw), [("type",), ('a"b',), ("y", "type")], chunk_size=chunk)
        assert got == {("type",): 4, ('a"b',): [{"type": 3}], ("y", "type"): 2}


def test_read_fields_prefix_paths_and_size_limit() -> None:
    big = "A" * 1000
    raw = json.dumps({"data": {"audio": big, "id": "abc"}, "n": [1, 2]}).encode()
    got = read_fields(io.BytesIO(raw), [("data",), ("data", "id"), ("n",)], max_value_bytes=100)
    assert got == {("data", "id"): "abc", ("n",): [1, 2]}  # "data" is too large: left out
    exact = len(json.dumps(big))
    got = read_fields(io.BytesIO(raw), [("data", "audio")], max_value_bytes=exact)
    assert got == {("data", "audio"): big}
    assert read_fields(io.BytesIO(raw), [("data", "audio")], max_value_bytes=exact - 1) == {}


def test_read_fields_missing_and_non_object_paths() -> None:
    raw = b'{"a": [{"b": 1}], "c": "x", "d": {}}'
    paths = [("a", "b"), ("c", "x"), ("d", "e"), ("q",)]
    assert read_fields(io.BytesIO(raw), paths) == {}
    assert read_fields(io.BytesIO(b"[1, 2]"), [("a",)]) == {}
    assert read_fields(io.BytesIO(raw), []) == {}
    with pytest.raises(ValueError):
        read_fields(io.BytesIO(raw), [()])


def test_read_fields_first_duplicate_wins() -> None:
    raw = b'{"a": 1, "b": {"c": 1, "c": 2}, "a": 2, "d": 5, "d": {"e": 1}}'
    got = read_fields(io.BytesIO(raw), [("a",), ("b",), ("d", "e"), ("b", "c")])
    assert got == {("a",): 1, ("b",): {"c": 1}, ("b", "c"): 1}


def test_read_fields_stops_early() -> None:
    raw = b'{"type": "post_call_audio", "data": ' + b"x" * 1000
    fp = io.BytesIO(raw)
    assert read_fields(fp, [("type",)], chunk_size=64) == {("type",): "post_call_audio"}
    assert fp.tell() < 100
    with pytest.raises(JSONStreamError):
        read_fields(io.BytesIO(raw), [("type",), ("data", "x")], chunk_size=64)


def test_read_fields_bom_and_lone_surrogates() -> None:
    raw = b'\xef\xbb\xbf{"k\\ud800": "\\udc00x", "n": 1}'
    got = read_fields(io.BytesIO(raw), [("k\ud800",), ("n",)], chunk_size=3)
    assert got == {("k\ud800",): "\udc00x", ("n",): 1}


# -- copy_string ------------------------------------------------------------------------------


@SETTINGS
@given(text, st.booleans(), st.sampled_from(["plain", "slash", "upper", "all-u"]), values)
def test_copy_string_matches_json_loads(
    s: str, ensure_ascii: bool, variant: str, other: Any
) -> None:
    doc = {"before": other, "data": {"x": other, "s": s, "y": [s]}, "after": s}
    raw = json.dumps(doc, ensure_ascii=ensure_ascii).encode()
    if variant == "slash":
        raw = slash_escaped(raw)
    elif variant == "upper":
        raw = upper_hex(raw)
    elif variant == "all-u":
        raw = raw.replace(json.dumps(s, ensure_ascii=ensure_ascii).encode(), b"@@", 2)
        raw = raw.replace(b"@@", escape_everything(s).encode())
    assert json.loads(raw) == doc
    expected = s.encode("utf-8")
    for chunk in range(1, 8):
        assert copied(raw, ("data", "s"), chunk) == expected
    assert copied(raw, ("data", "s"), 1 << 20) == expected
    assert copied(raw, ("after",), 3) == expected


def test_copy_string_every_escape_kind() -> None:
    raw = rb'{"s": "a\"b\\c\/d\be\ff\ng\rh\ti\u0041\u00e9\u20AC\ud83d\ude00\u0000z/\\\/\\u"}'
    expected = json.loads(raw)["s"].encode("utf-8")
    for chunk in [*range(1, 8), 1 << 20]:
        assert copied(raw, ("s",), chunk) == expected


def test_copy_string_long_slash_escaped_string() -> None:
    s = base64.b64encode(os.urandom(30_000)).decode() + "\\/\\" + "/" * 100
    raw = slash_escaped(json.dumps({"s": s}).encode())
    assert raw.count(b"\\/") > 300
    for chunk in (5, 4096, 1 << 20):
        assert copied(raw, ("s",), chunk) == s.encode()


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [
        (b'{"a": 1}', ("s",), "no string value"),
        (b'{"s": 1}', ("s",), "not a string"),
        (b'{"s": {"t": "x"}}', ("s",), "not a string"),
        (b'{"s": ["x"]}', ("s", "t"), "no string value"),
        (b'{"s": "x", "s": "y"}', ("s",), "duplicate"),
        (b'{"d": {"s": "x"}, "d": {}}', ("d", "s"), "duplicate"),
        (b'{"s": "\\ud800"}', ("s",), "surrogate"),
        (b'{"s": "\\udc00\\ud800"}', ("s",), "surrogate"),
        (b'{"s": "a\\ud800\\u0041"}', ("s",), "surrogate"),
        (b'{"s": "a\x01b"}', ("s",), "control character"),
        (b'{"s": "a\nb"}', ("s",), "control character"),
        (b'{"s": "a\xffb"}', ("s",), "UTF-8"),
        (b'{"s": "a\xc3"}', ("s",), "UTF-8"),
        (b'{"s": "a\xc3\\n"}', ("s",), "UTF-8"),
        (b'{"s": "\\x"}', ("s",), "invalid escape"),
        (b'{"s": "\\u00G0"}', ("s",), "invalid \\u escape"),
        (b'{"s": "abc"', ("s",), "end of document"),
        (b'{"s": "abc"} []', ("s",), "after the document"),
        (b'{"s": "abc", "t": [1,]}', ("s",), "expected a value"),
    ],
)
def test_copy_string_errors(raw: bytes, path: tuple[str, ...], message: str) -> None:
    for chunk in (1, 2, 3, 1 << 20):
        with pytest.raises(JSONStreamError, match=re.escape(message)):
            copy_string(io.BytesIO(raw), path, lambda _: None, chunk_size=chunk)


# -- malformed and truncated documents --------------------------------------------------------

MALFORMED = [
    b"",
    b"   ",
    b"{",
    b"}",
    b'{"a"}',
    b'{"a" 1}',
    b'{"a":1,}',
    b'{"a":1 "b":2}',
    b'{,"a":1}',
    b"{a:1}",
    b"{'a':1}",
    b'{"a":[1,2}',
    b'{"a":[1,]}',
    b'{"a":[,1]}',
    b'{"a":{"b":1]}',
    b'{"a":1}}',
    b'{"a":1} 2',
    b'{"a":01}',
    b'{"a":-}',
    b'{"a":1.}',
    b'{"a":.5}',
    b'{"a":1e}',
    b'{"a":+1}',
    b'{"a":1x}',
    b'{"a":NaN}',
    b'{"a":Infinity}',
    b'{"a":tru}',
    b'{"a":nul}',
    b'{"a":True}',
    b'{"a":"\\q"}',
    b'{"a":"\\u12"}',
    b'{"a":"\\u12G4"}',
    b'{"a":"x}',
    b'{"a":"x\\"}',
    b'{"a\\":1}',
    b'{"a":1}\xef\xbb\xbf',
    b'{"a":\xc3\xa9}',
    b"[1 2]",
    b"[1,]",
    b"[",
    b'"abc',
    b"nul",
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_documents_raise(raw: bytes) -> None:
    with pytest.raises(ValueError):  # sanity: the oracle agrees it is malformed
        json.loads(raw, parse_constant=reject_constant)
    for chunk in (1, 2, 3, 1 << 20):
        with pytest.raises(JSONStreamError):
            read_fields(io.BytesIO(raw), [("zz",)], chunk_size=chunk)
        with pytest.raises(JSONStreamError):
            copy_string(io.BytesIO(raw), ("a",), lambda _: None, chunk_size=chunk)


@settings(SETTINGS, max_examples=40)  # each example parses every prefix twice
@given(serialized(st.dictionaries(keys, values, min_size=1, max_size=3)), chunk_sizes)
def test_every_truncation_raises(case: tuple[Any, bytes], chunk: int) -> None:
    doc, raw = case
    raw = raw.rstrip()
    string_path = next((p for p in object_paths(doc) if isinstance(lookup(doc, p), str)), ("a",))
    for end in range(len(raw)):
        prefix = raw[:end]
        with pytest.raises(JSONStreamError):
            read_fields(io.BytesIO(prefix), [("zz",)], chunk_size=chunk)
        with pytest.raises(JSONStreamError):
            copy_string(io.BytesIO(prefix), string_path, lambda _: None, chunk_size=chunk)


MUTATION_CHARS = '{}[]":,\\ 0123456789-+.eEtrufalsn/ubx'


@SETTINGS
@given(
    documents,
    st.sampled_from([(",", ":"), (", ", ": ")]),
    st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "replace"]),
            st.integers(min_value=0),
            st.sampled_from(MUTATION_CHARS),
        ),
        min_size=1,
        max_size=3,
    ),
    chunk_sizes,
)
def test_mutated_documents_agree_with_json_loads(
    doc: Any, seps: tuple[str, str], edits: list[tuple[str, int, str]], chunk: int
) -> None:
    """Random edits: we reject exactly what json.loads rejects, and agree on everything else.

    ASCII-only output without control characters keeps to the part of the grammar that
    skipped strings are checked for (see the module docstring).
    """
    text_doc = json.dumps(doc, ensure_ascii=True, separators=seps)
    for op, where, char in edits:
        i = where % (len(text_doc) + 1)
        if op == "insert":
            text_doc = text_doc[:i] + char + text_doc[i:]
        elif op == "delete":
            text_doc = text_doc[:i] + text_doc[i + 1 :]
        else:
            text_doc = text_doc[:i] + char + text_doc[i + 1 :]
    raw = text_doc.encode()
    try:
        parsed = json.loads(text_doc, object_pairs_hook=first_wins)
    except ValueError:
        with pytest.raises(JSONStreamError):
            read_fields(io.BytesIO(raw), [("zz", "zz")], chunk_size=chunk)
        return
    paths = sorted(set(object_paths(parsed))) if isinstance(parsed, dict) else []
    got = read_fields(io.BytesIO(raw), [*paths, ("zz", "zz")], chunk_size=chunk)
    assert canon(sorted(got.items())) == canon([(p, lookup(parsed, p)) for p in paths])


def test_deep_nesting_is_bounded() -> None:
    deep = b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert read_fields(io.BytesIO(deep), [("b",)], chunk_size=7) == {}
    with pytest.raises(JSONStreamError, match="too deep"):
        read_fields(io.BytesIO(b'{"a": ' + b"[" * 20_000), [("b",)])


def test_long_tokens_across_chunks() -> None:
    number = "-" + "7" * 3000 + ".5e-" + "9" * 100
    raw = f'{{"n": {number}, "k{"é" * 3000}": 1, "s": "x"}}'.encode()
    for chunk in (1, 3, 1000):
        got = read_fields(io.BytesIO(raw), [("n",), ("k" + "é" * 3000,), ("s",)], chunk_size=chunk)
        assert got == {("n",): float(number), ("k" + "é" * 3000,): 1, ("s",): "x"}
    with pytest.raises(JSONStreamError, match="number too long"):
        read_fields(io.BytesIO(b'{"n": 1' + b"0" * 70_000 + b"}"), [("x",)])


# -- Base64StreamDecoder ----------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=8))
def test_base64_any_chunking(data: bytes, cuts: list[int]) -> None:
    encoded = base64.b64encode(data)
    assert b64_decode_chunked(encoded, cuts) == data
    mime = base64.encodebytes(data)
    assert b64_decode_chunked(mime, cuts) == data
    assert b64_decode_chunked(mime.replace(b"\n", b"\r\n"), cuts) == data


@SETTINGS
@given(
    st.lists(st.sampled_from(list(b"QUJDab09+/=\n*- \x00\xc3")), max_size=24).map(bytes),
    st.lists(st.integers(min_value=0), max_size=6),
)
def test_base64_agrees_with_strict_binascii(encoded: bytes, cuts: list[int]) -> None:
    """Accept only what strict a2b_base64 accepts, with the same result.

    The one intended difference: we also reject '=' after a complete group ("QUJD===="),
    and "QUJD=", which a2b_base64 lets through.  Everything a canonical encoder emits is accepted.
    """
    stripped = encoded.replace(b"\n", b"")
    try:
        ours: bytes | None = b64_decode_chunked(encoded, cuts)
    except Base64DecodeError as exc:
        assert isinstance(exc, ValueError)
        assert "offset" in str(exc)
        ours = None
    try:
        oracle: bytes | None = binascii.a2b_base64(stripped, strict_mode=True)
    except binascii.Error:
        oracle = None
    if ours is not None:
        assert ours == oracle
    elif oracle is not None:
        core = stripped.rstrip(b"=")
        assert core and len(core) % 4 == 0 and b"=" not in core and core != stripped
    if oracle is not None and base64.b64encode(oracle) == stripped:
        assert ours == oracle


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ([b"QUJD*QUJ"], "invalid character b'*' at offset 4"),
        ([b"QUJD", b"QU", b"J\x00"], "invalid character b'\\x00' at offset 7"),
        ([b"QUJD QUJD"], "invalid character b' ' at offset 4"),
        ([b"QUJDQQ==", b"QUJD"], "data after padding b'Q' at offset 8"),
        ([b"QQ=", b"=QQ=="], "data after padding b'Q' at offset 4"),
        ([b"QQ=A"], "data after padding b'A' at offset 3"),
        ([b"QUJD===="], "misplaced padding b'=' at offset 4"),
        ([b"QUJD", b"Q==="], "misplaced padding b'=' at offset 5"),
        ([b"=QUJ"], "misplaced padding b'=' at offset 0"),
        ([b"QUJDQU"], "truncated input: 2 character(s)"),
        ([b"QUJ\n", b"DQ"], "truncated input: 1 character(s)"),
    ],
)
def test_base64_errors_say_where(pieces: list[bytes], message: str) -> None:
    decoder = Base64StreamDecoder()
    with pytest.raises(Base64DecodeError, match=re.escape(message)):
        for piece in pieces:
            decoder.feed(piece)
        decoder.finish()


def test_base64_feed_after_finish() -> None:
    decoder = Base64StreamDecoder()
    assert decoder.feed(b"QUJ") == b""
    assert decoder.feed(b"D") == b"ABC"
    assert decoder.finish() == b""
    with pytest.raises(ValueError):
        decoder.feed(b"QUJD")


def test_decode_base64_string_errors() -> None:
    out = io.BytesIO()
    with pytest.raises(Base64DecodeError, match="offset 4"):
        decode_base64_string(io.BytesIO(b'{"a": "QUJD!!!!"}'), ("a",), out)
    with pytest.raises(Base64DecodeError, match="truncated"):
        decode_base64_string(io.BytesIO(b'{"a": "QUJDQQ"}'), ("a",), out)
    with pytest.raises(JSONStreamError):
        decode_base64_string(io.BytesIO(b'{"a": "QUJD"'), ("a",), out)
    with pytest.raises(JSONStreamError):
        decode_base64_string(io.BytesIO(b'{"b": "QUJD"}'), ("a",), out)


# -- large bodies: memory stays flat ----------------------------------------------------------


class _Hasher:
    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return len(data)


def _write_audio_body(path: Path, raw_size: int, audio_first: bool) -> str:
    """Write an ElevenLabs-style body whose base64 audio encodes ``raw_size`` random bytes."""
    sha = hashlib.sha256()
    rng = random.Random(1234)
    head = b'{"type": "post_call_audio", "event_timestamp": 1739537319, "data": {'
    ids = b'"agent_id": "xyz", "conversation_id": "abc"'
    with path.open("wb") as f:
        f.write(head)
        if not audio_first:
            f.write(ids + b", ")
        f.write(b'"full_audio": "')
        block = 3 * (1 << 18)
        remaining = raw_size
        while remaining:
            data = rng.randbytes(min(block, remaining))
            remaining -= len(data)
            sha.update(data)
            f.write(base64.b64encode(data))
        f.write(b'"')
        if audio_first:
            f.write(b", " + ids)
        f.write(b"}}\n")
    return sha.hexdigest()


@pytest.mark.parametrize("audio_first", [True, False])
def test_50mb_body_decodes_with_flat_memory(tmp_path: Path, audio_first: bool) -> None:
    body = tmp_path / "body.json"
    digest = _write_audio_body(body, 37_500_000, audio_first)  # ~50 MB of base64
    assert body.stat().st_size > 50_000_000
    out = _Hasher()
    tracemalloc.start()
    try:
        with body.open("rb") as fp:
            fields = read_fields(fp, [("type",), ("data", "conversation_id"), ("data", "agent_id")])
        with body.open("rb") as fp:
            written = decode_base64_string(fp, ("data", "full_audio"), out)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fields == {
        ("type",): "post_call_audio",
        ("data", "conversation_id"): "abc",
        ("data", "agent_id"): "xyz",
    }
    assert written == out.size == 37_500_000
    assert out.sha.hexdigest() == digest
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB"
