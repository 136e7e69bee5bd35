"""`voicehooks replay`, `sign` and `deliveries export`: payload files delivered as the provider
would send them, to a real uvicorn server and in-process, and stored deliveries turned back into
replayable fixtures byte for byte."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from receiver.app import create_app
from receiver.body import ReceivedBody
from receiver.cli.main import app as cli_app
from receiver.registry import Registry
from receiver.replay import (
    STREAM_ABOVE_BYTES,
    Replayer,
    ReplayError,
    collect_paths,
    export_delivery,
    infer_source,
    inspect_payload,
    sign_request,
)
from receiver.service import Services
from receiver.settings import Settings
from receiver.sources import elevenlabs, load_sources
from receiver.sources.elevenlabs import ElevenLabsSource
from receiver.sources.kie import KieSource
from receiver.store.models import Delivery, Job
from tests.conftest import FIXTURES, SECRET, free_port, make_settings, serve_in_thread

KIE_KEY = "kie_test_hmac_key"
KIE_TASK = "5f1c0a9e3b7d4c2a8e6f1b0d9c8a7e01"
AUDIO = FIXTURES / "elevenlabs" / "post_call_audio.json"
TRANSCRIPTION = FIXTURES / "elevenlabs" / "post_call_transcription.json"
KIE_SUCCESS = FIXTURES / "kie" / "success.json"
deliveries = Delivery.__table__  # type: ignore[attr-defined]


def big_audio_payload(directory: Path) -> Path:
    """A ``post_call_audio`` body over the streaming threshold (spooled and kept as a blob)."""
    mp3 = (FIXTURES / "audio" / "hello.mp3").read_bytes()
    audio = mp3 * (STREAM_ABOVE_BYTES // len(mp3) + 2)
    body = {
        "type": "post_call_audio",
        "event_timestamp": 1760000999,
        "data": {
            "agent_id": "agent_big",
            "conversation_id": "conv_big",
            "full_audio": base64.b64encode(audio).decode(),
        },
    }
    path = directory / "big_audio.json"
    path.write_text(json.dumps(body, indent=2) + "\n")
    assert path.stat().st_size > STREAM_ABOVE_BYTES
    return path


def stored_body(services: Services, delivery_id: int) -> bytes:
    out = io.BytesIO()
    export_delivery(services.engine, services.blobs, delivery_id, out)
    return out.getvalue()


def delivery_row(services: Services, delivery_id: int) -> Any:
    with services.engine.connect() as conn:
        return conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).one()


class RecordingApp:
    """ASGI wrapper that notes the headers each request arrived with at the server."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests.append(
                {
                    "path": scope["path"],
                    "query": scope["query_string"].decode(),
                    "headers": {k.decode().lower(): v.decode() for k, v in scope["headers"]},
                }
            )
        await self.app(scope, receive, send)


@contextmanager
def recording_server(services: Services) -> Iterator[tuple[str, RecordingApp]]:
    """The real app under uvicorn on loopback, wrapped so the test sees the request headers."""
    recorder = RecordingApp(create_app(services=services, run_worker=False))
    with serve_in_thread(recorder) as url:
        yield url, recorder


async def replay_all(settings: Settings, paths: list[Path], **options: Any) -> list[Any]:
    async with Replayer(settings, **options) as replayer:
        await replayer.check_reachable()
        return [await replayer.send(path) for path in paths]


# -- what a payload is ----------------------------------------------------------------------


SOURCES = load_sources(Settings())


def test_source_is_inferred_from_each_fixture_shape() -> None:
    for path in sorted((FIXTURES / "elevenlabs").glob("*.json")):
        assert inspect_payload(path, SOURCES).source == "elevenlabs", path.name
    for path in sorted((FIXTURES / "kie").glob("*.json")):
        payload = inspect_payload(path, SOURCES)
        assert (payload.source, payload.event_type) == ("kie", "task_callback"), path.name
        assert payload.subject_id, path.name
    variant = inspect_payload(FIXTURES / "kie" / "task_id_variant.json", SOURCES)
    assert variant.subject_id == "c3a1e5f7b9d1c3e5a7f9b1d3e5c7a903"
    assert infer_source({"taskId": "t1", "state": "success"}, SOURCES) == "kie"
    assert infer_source({"data": {"task_id": "t1", "state": "fail"}}, SOURCES) == "kie"
    assert infer_source({"hello": "world"}, SOURCES) is None
    audio = inspect_payload(AUDIO, SOURCES)
    assert (audio.event_type, audio.chunked) == ("post_call_audio", True)
    assert inspect_payload(TRANSCRIPTION, SOURCES).chunked is False


def test_unknown_shapes_need_source_and_source_overrides(tmp_path: Path) -> None:
    odd = tmp_path / "odd.json"
    odd.write_text('{"hello": "world"}')
    with pytest.raises(ReplayError, match="--source"):
        inspect_payload(odd, SOURCES)
    assert inspect_payload(odd, SOURCES, "elevenlabs").source == "elevenlabs"
    assert inspect_payload(TRANSCRIPTION, SOURCES, "kie").source == "kie"
    with pytest.raises(ReplayError, match="unknown source 'nope'"):
        inspect_payload(TRANSCRIPTION, SOURCES, "nope")


def test_collect_paths_takes_files_directories_and_globs(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    for name in ("one.json", "a/two.json", "a/b/three.json", "a/notes.txt"):
        (tmp_path / name).write_text("{}")
    assert collect_paths([str(tmp_path / "a")]) == [
        tmp_path / "a" / "b" / "three.json",
        tmp_path / "a" / "two.json",
    ]
    assert collect_paths([str(tmp_path / "*.json"), str(tmp_path / "one.json")]) == [
        tmp_path / "one.json"
    ]
    with pytest.raises(ReplayError, match="no such file"):
        collect_paths([str(tmp_path / "missing-*.json")])


def test_streamed_signature_equals_the_provider_scheme(tmp_path: Path) -> None:
    big = big_audio_payload(tmp_path)
    expected = elevenlabs.sign(SECRET, big.read_bytes(), 1760001000)
    sources = load_sources(make_settings("sqlite://", tmp_path))
    payload = inspect_payload(big, sources)
    signed = sign_request(payload, sources, timestamp=1760001000)
    assert signed.headers["ElevenLabs-Signature"] == expected


# -- over HTTP, to a real uvicorn server -----------------------------------------------------


def test_replay_over_http_both_sources_audio_chunked(
    database_url: str, tmp_path: Path, services_factory: Any
) -> None:
    settings = make_settings(database_url, tmp_path / "data", kie_hmac_keys=[KIE_KEY])
    services = services_factory(settings, Registry())
    big = big_audio_payload(tmp_path)
    paths = [AUDIO, big, TRANSCRIPTION, KIE_SUCCESS]
    with recording_server(services) as (url, recorder):
        results = asyncio.run(replay_all(settings, paths, url=url))
        wrong = make_settings(database_url, tmp_path / "data", elevenlabs_secrets=["wrong"])
        [refused] = asyncio.run(replay_all(wrong, [TRANSCRIPTION], url=url))
        again = asyncio.run(replay_all(settings, [AUDIO], url=url))

    assert [(r.status_code, r.duplicate, r.error) for r in results] == [(200, False, None)] * 4
    posted = [r for r in recorder.requests if r["path"].startswith("/webhooks/")]
    audio_req, big_req, text_req, kie_req = (r["headers"] for r in posted[:4])
    # As ElevenLabs sends audio: chunked, no Content-Length; small JSON keeps its length.
    for seen, result in ((audio_req, results[0]), (big_req, results[1])):
        assert seen["transfer-encoding"] == "chunked" and "content-length" not in seen
        assert result.chunked is True
    assert text_req["content-length"] == str(TRANSCRIPTION.stat().st_size)
    assert "transfer-encoding" not in text_req and results[2].chunked is False
    assert posted[3]["path"] == "/webhooks/kie"
    assert {"x-webhook-timestamp", "x-webhook-signature"} <= kie_req.keys()
    assert abs(int(kie_req["x-webhook-timestamp"]) - time.time()) < 60

    # The stored bodies are the files, byte for byte; the big one went to the blob store.
    for path, result in zip(paths, results, strict=True):
        assert stored_body(services, result.delivery_id) == path.read_bytes()
    assert delivery_row(services, results[1].delivery_id).blob_path is not None
    kie_row = delivery_row(services, results[3].delivery_id)
    assert (kie_row.source, kie_row.auth_method, kie_row.subject_id) == ("kie", "hmac", KIE_TASK)

    assert (refused.status_code, refused.acknowledged) == (401, False)
    assert refused.error.startswith("signature_mismatch")
    assert [(r.delivery_id, r.duplicate) for r in again] == [(results[0].delivery_id, True)]


def test_replay_to_nothing_listening_says_what_to_do(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "data")
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ReplayError, match="voicehooks serve"):
        asyncio.run(replay_all(settings, [TRANSCRIPTION], url=url))


# -- in-process ------------------------------------------------------------------------------


def test_replay_in_process_stores_and_queues_jobs(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data", kie_url_token="tok_in_url")
    files = collect_paths([str(FIXTURES / "elevenlabs"), str(FIXTURES / "kie")])
    results = asyncio.run(replay_all(settings, files, in_process=True))

    assert all(r.acknowledged for r in results), [r.as_dict() for r in results]
    by_name = {r.path.name: r for r in results}
    # The docs reuse one conversation id and timestamp: the twins are one event.
    twin = by_name["call_initiation_failure_twilio.json"]
    assert (
        twin.duplicate
        and twin.delivery_id == by_name["call_initiation_failure_sip.json"].delivery_id
    )
    assert by_name["post_call_audio.json"].chunked is True

    services = Services.create(settings)
    try:
        with services.engine.connect() as conn:
            rows = conn.execute(select(deliveries).order_by(deliveries.c.id)).all()
            jobs = conn.execute(select(Job.__table__)).all()  # type: ignore[attr-defined]
        assert len(rows) == sum(1 for r in results if not r.duplicate)
        kie_rows = [row for row in rows if row.source == "kie"]
        # Only the URL token is configured: kie.ai callbacks authenticate with ?token=.
        assert {row.auth_method for row in kie_rows} == {"url_token"} and len(kie_rows) == 4
        # No worker in-process: the built-in handlers' jobs wait for `voicehooks worker`.
        assert jobs and {job.status for job in jobs} == {"pending"}
        assert (
            stored_body(services, by_name["transcription_unicode.json"].delivery_id)
            == (FIXTURES / "elevenlabs" / "transcription_unicode.json").read_bytes()
        )
    finally:
        services.close()


# -- export, sign and the CLI ----------------------------------------------------------------


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("VOICEHOOKS_DATABASE_URL", database_url)
    monkeypatch.setenv("VOICEHOOKS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VOICEHOOKS_ELEVENLABS_SECRETS", SECRET)
    monkeypatch.setenv("VOICEHOOKS_KIE_HMAC_KEYS", KIE_KEY)
    return Settings()


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args))


def test_export_then_replay_is_identical_and_duplicate(cli_env: Settings, tmp_path: Path) -> None:
    big = big_audio_payload(tmp_path)
    originals = [big, FIXTURES / "elevenlabs" / "transcription_unicode.json", KIE_SUCCESS]
    result = invoke("replay", "--in-process", "--json", *map(str, originals))
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)
    assert [r["duplicate"] for r in first] == [False, False, False]

    exported = []
    for original, row in zip(originals, first, strict=True):
        target = tmp_path / "exported" / f"{row['delivery_id']}.json"
        done = invoke("deliveries", "export", str(row["delivery_id"]), "-o", str(target))
        assert done.exit_code == 0, done.output
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        assert digest == hashlib.sha256(original.read_bytes()).hexdigest()
        exported.append(target)

    result = invoke("replay", "--in-process", "--json", str(tmp_path / "exported"))
    assert result.exit_code == 0, result.output
    again = {r["file"]: r for r in json.loads(result.stdout)}
    for path, row in zip(exported, first, strict=True):
        assert again[str(path)]["duplicate"] is True
        assert again[str(path)]["delivery_id"] == row["delivery_id"]

    missing = invoke("deliveries", "export", "999999", "-o", str(tmp_path / "none.json"))
    assert missing.exit_code == 1 and "no delivery with id 999999" in missing.output
    assert not (tmp_path / "none.json").exists()


def test_replay_cli_table_and_exit_status(
    cli_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from receiver.cli.output import console

    monkeypatch.setattr(console, "_width", 200)  # a wide terminal: one table row per file
    monkeypatch.chdir(tmp_path)
    odd = Path("odd.json")
    odd.write_text('{"hello": "world"}')
    result = invoke("replay", "--in-process", str(TRANSCRIPTION), str(odd))
    assert result.exit_code == 1
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if ".json" in line}
    assert rows[str(TRANSCRIPTION)][1:] == [
        "elevenlabs",
        "post_call_transcription",
        "200",
        "1",
        "new",
    ]
    assert rows[str(odd)][1:] == ["-", "-", "-", "-", "not", "sent"]
    assert "pass --source to send it anyway" in " ".join(result.stdout.split())
    assert "1 of 2 acknowledged" in result.stdout
    as_json = json.loads(invoke("replay", "--in-process", "--json", str(odd)).stdout)
    assert as_json[0]["acknowledged"] is False and "--source" in as_json[0]["error"]


def test_sign_prints_headers_that_verify(cli_env: Settings) -> None:
    result = invoke("sign", str(TRANSCRIPTION))
    assert result.exit_code == 0, result.output
    header = re.search(r"^ElevenLabs-Signature: (t=\d+,v0=[0-9a-f]{64})$", result.stdout, re.M)
    assert header is not None
    body = TRANSCRIPTION.read_bytes()
    source = ElevenLabsSource(cli_env)
    verifier = source.begin({"elevenlabs-signature": header.group(1)}, {})
    verifier.update(body)
    hashed = hashlib.sha256(body).hexdigest()
    assert verifier.verify(ReceivedBody(len(body), hashed, data=body)).method == "hmac"
    assert f"--data-binary @{TRANSCRIPTION}" in result.stdout
    assert "curl -sS -X POST http://127.0.0.1:8000/webhooks/elevenlabs" in result.stdout

    audio = invoke("sign", str(AUDIO), "--url", "http://example.test:9000/")
    assert "-H 'Transfer-Encoding: chunked'" in audio.stdout
    assert "http://example.test:9000/webhooks/elevenlabs" in audio.stdout

    kie = json.loads(invoke("sign", str(KIE_SUCCESS), "--json").stdout)
    headers = {k.lower(): v for k, v in kie["headers"].items()}
    kie_body = KIE_SUCCESS.read_bytes()
    auth = (
        KieSource(cli_env)
        .begin(headers, {})
        .verify(ReceivedBody(len(kie_body), hashlib.sha256(kie_body).hexdigest(), data=kie_body))
    )
    assert auth.method == "hmac" and kie["url"].endswith("/webhooks/kie")
