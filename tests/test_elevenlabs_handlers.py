"""The built-in ElevenLabs handlers, fed through the real ingest path.

Every delivery here is a signed fixture body POSTed to a real uvicorn server; the worker then
drains the jobs against real SQLite and real Postgres, and the assertions read the handlers'
tables (and the blob store) back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
import tracemalloc
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, SQLModel, col, func, select

from handlers.elevenlabs.audio import looks_like_mp3, store_audio
from handlers.elevenlabs.call_failure import store_call_failure
from handlers.elevenlabs.tables import (
    CallFailure,
    Conversation,
    ConversationAudio,
    ConversationDataCollection,
    ConversationEvaluation,
    ConversationTurn,
    WorkspaceNotice,
)
from handlers.elevenlabs.transcription import store_transcription
from handlers.elevenlabs.workspace import store_workspace_notice
from receiver.jobs import requeue_delivery
from receiver.body import ReceivedBody
from receiver.events import Event, HandlerContext
from receiver.registry import HandlerSpec, Registry, load_registry
from receiver.sources.elevenlabs import sign
from receiver.sources.elevenlabs.models import VOICE_EVENT_TYPES
from receiver.store.models import Delivery, Job
from receiver.store.types import utcnow
from tests.conftest import (
    FIXTURES,
    SECRET,
    event_body,
    fixture_bytes,
    make_settings,
    wait_until,
)

HELLO_MP3 = (FIXTURES / "audio" / "hello.mp3").read_bytes()
HANDLER_TABLES = {
    "conversations",
    "conversation_turns",
    "conversation_evaluations",
    "conversation_data_collection",
    "conversation_audio",
    "call_failures",
    "workspace_notices",
}


def elevenlabs_registry(*extra: HandlerSpec) -> Registry:
    """Exactly the built-in ElevenLabs handlers (plus ``extra``), independent of other plugins."""
    specs = [
        HandlerSpec("elevenlabs", "post_call_transcription", store_transcription),
        HandlerSpec("elevenlabs", "post_call_audio", store_audio),
        HandlerSpec("elevenlabs", "call_initiation_failure", store_call_failure),
        *(HandlerSpec("elevenlabs", t, store_workspace_notice) for t in sorted(VOICE_EVENT_TYPES)),
    ]
    return Registry.of([*specs, *extra])


REGISTRY = elevenlabs_registry()


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture
def store(settings, services_factory, live_server):  # type: ignore[no-untyped-def]
    """A receiver with the ElevenLabs handlers; its worker is drained by hand."""
    services = services_factory(settings, REGISTRY)
    return live_server(services, run_worker=False)


def post(server, body: bytes) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = server.post_signed(body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def post_fixture(server, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return post(server, fixture_bytes(f"elevenlabs/{name}"))


def drain(server) -> int:  # type: ignore[no-untyped-def]
    return asyncio.run(server.services.worker.drain())


def rows(server, query) -> list[Any]:  # type: ignore[no-untyped-def]
    with Session(server.services.engine) as session:
        return list(session.exec(query).all())


def jobs_of(server, delivery_id: int) -> list[Job]:  # type: ignore[no-untyped-def]
    return rows(server, select(Job).where(Job.delivery_id == delivery_id))


def count(server, table, conversation_id: str) -> int:  # type: ignore[no-untyped-def]
    query = select(func.count()).select_from(table).where(table.conversation_id == conversation_id)
    return rows(server, query)[0]  # type: ignore[no-any-return]


def turns_of(server, conversation_id: str) -> list[ConversationTurn]:  # type: ignore[no-untyped-def]
    return rows(
        server,
        select(ConversationTurn)
        .where(ConversationTurn.conversation_id == conversation_id)
        .order_by(col(ConversationTurn.turn_index)),
    )


def conversation(server, conversation_id: str) -> Conversation | None:  # type: ignore[no-untyped-def]
    with Session(server.services.engine) as session:
        return session.get(Conversation, conversation_id)


def audio_of(server, conversation_id: str) -> ConversationAudio | None:  # type: ignore[no-untyped-def]
    with Session(server.services.engine) as session:
        return session.get(ConversationAudio, conversation_id)


def load(name: str) -> dict[str, Any]:
    return json.loads(fixture_bytes(f"elevenlabs/{name}"))  # type: ignore[no-any-return]


def dedupe_key(document: dict[str, Any]) -> tuple[Any, ...]:
    return (document["type"], document["data"].get("conversation_id"), document["event_timestamp"])


def fixture_rounds() -> list[list[str]]:
    """All ElevenLabs fixtures, split so that no round holds two with the same dedupe key.

    Some doc examples share (type, conversation_id, event_timestamp) with each other (the SIP
    and Twilio failures; the two transcription examples), so in one store the second would
    rightly be acknowledged as a duplicate and never processed.
    """
    rounds: list[list[str]] = []
    keys: list[set[tuple[Any, ...]]] = []
    for path in sorted((FIXTURES / "elevenlabs").glob("*.json")):
        key = dedupe_key(json.loads(path.read_bytes()))
        for names, used in zip(rounds, keys, strict=True):
            if key not in used:
                names.append(path.name)
                used.add(key)
                break
        else:
            rounds.append([path.name])
            keys.append({key})
    return rounds


ROUNDS = fixture_rounds()


# -- every fixture --------------------------------------------------------------------------


def test_fixture_rounds_cover_every_fixture_once() -> None:
    names = [name for names in ROUNDS for name in names]
    assert sorted(names) == sorted(p.name for p in (FIXTURES / "elevenlabs").glob("*.json"))
    assert len(ROUNDS) == 2  # the doc examples sharing a dedupe key: see fixture_rounds


def check_transcription(server, document: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    data = document["data"]
    row = conversation(server, data["conversation_id"])
    assert row is not None
    analysis = data.get("analysis") or {}
    assert row.agent_id == data["agent_id"] and row.user_id == data.get("user_id")
    assert row.status == data["status"]
    assert row.duration_secs == data["metadata"]["call_duration_secs"]
    assert row.start_time is not None
    assert row.start_time.timestamp() == data["metadata"]["start_time_unix_secs"]
    assert row.call_successful == analysis.get("call_successful")
    assert row.transcript_summary == analysis.get("transcript_summary")
    assert row.data == data  # the whole data object, unknown fields and unicode included
    client = data.get("conversation_initiation_client_data") or {}
    assert (row.dynamic_variables or {}) == (client.get("dynamic_variables") or {})
    assert row.has_audio == data.get("has_audio")
    turns = turns_of(server, data["conversation_id"])
    assert [(t.turn_index, t.role, t.message) for t in turns] == [
        (i, t["role"], t.get("message")) for i, t in enumerate(data["transcript"])
    ]
    evaluations = analysis.get("evaluation_criteria_results") or {}
    collected = analysis.get("data_collection_results") or {}
    assert count(server, ConversationEvaluation, data["conversation_id"]) == len(evaluations)
    assert count(server, ConversationDataCollection, data["conversation_id"]) == len(collected)


#: Provider details of the two call-failure doc examples, as the columns must hold them.
FAILURE_COLUMNS = {
    "call_initiation_failure_sip.json": {
        "provider_type": "sip",
        "sip_status_code": 486,
        "sip_reason": "Busy here",
        "twilio_call_sid": None,
        "twilio_call_status": None,
    },
    "call_initiation_failure_twilio.json": {
        "provider_type": "twilio",
        "sip_status_code": None,
        "sip_reason": None,
        "twilio_call_sid": "CA8367245817625617832576245724",
        "twilio_call_status": "busy",
    },
}


def check_round(server, receipts: dict[str, dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    """Each fixture's job ended as it should and left the rows it should."""
    latest: dict[str, dict[str, Any]] = {}  # conversation -> its newest transcription
    for name, receipt in receipts.items():
        document = load(name)
        delivery_id = receipt["delivery_id"]
        jobs = jobs_of(server, delivery_id)
        kind = document["type"]
        if kind == "post_call_summary_v2":  # no handler for it: stored, reachable, no job
            assert jobs == []
            (delivery,) = rows(server, select(Delivery).where(Delivery.id == delivery_id))
            assert delivery.event_type == kind and delivery.parse_error is None
            assert json.loads(delivery.body) == document
            continue
        (job,) = jobs
        if name == "post_call_audio_doc_example.json":
            assert job.status == "dead" and "not valid base64" in (job.last_error or "")
            continue
        assert (job.status, job.last_error) == ("done", None), name
        data = document["data"]
        if kind == "post_call_transcription":
            newest = latest.get(data["conversation_id"])
            if newest is None or newest["event_timestamp"] < document["event_timestamp"]:
                latest[data["conversation_id"]] = document
        elif kind == "post_call_audio":
            audio = audio_of(server, data["conversation_id"])
            assert audio is not None and audio.delivery_id == delivery_id
            assert server.services.blobs.path(audio.blob_path).read_bytes() == HELLO_MP3
        elif kind == "call_initiation_failure":
            (failure,) = rows(
                server, select(CallFailure).where(CallFailure.delivery_id == delivery_id)
            )
            assert (failure.agent_id, failure.conversation_id, failure.failure_reason) == (
                data["agent_id"],
                data["conversation_id"],
                data["failure_reason"],
            )
            expected = FAILURE_COLUMNS[name]
            assert {key: getattr(failure, key) for key in expected} == expected
            assert failure.raw_metadata == data["metadata"]
            assert failure.event_time is not None
            assert failure.event_time.timestamp() == document["event_timestamp"]
        else:
            assert kind in VOICE_EVENT_TYPES
            (notice,) = rows(
                server, select(WorkspaceNotice).where(WorkspaceNotice.delivery_id == delivery_id)
            )
            assert (notice.event_type, notice.voice_id) == (kind, data["voice_id"])
            assert notice.data == data
    assert latest  # every round has at least one transcription
    for document in latest.values():
        check_transcription(server, document)


def table_sizes(server) -> dict[str, int]:  # type: ignore[no-untyped-def]
    tables = [t for t in SQLModel.metadata.sorted_tables if t.name in HANDLER_TABLES]
    return {t.name: rows(server, select(func.count()).select_from(t))[0] for t in tables}


@pytest.mark.parametrize("round_index", range(len(ROUNDS)))
def test_every_fixture_is_processed_and_reprocessing_changes_nothing(  # type: ignore[no-untyped-def]
    store, round_index: int
) -> None:
    receipts = {name: post_fixture(store, name) for name in ROUNDS[round_index]}
    assert not any(r["duplicate"] for r in receipts.values())
    drain(store)
    check_round(store, receipts)
    sizes = table_sizes(store)

    # Re-run every job (as `voicehooks deliveries retry` does): nothing is stored twice.
    for receipt in receipts.values():
        requeue_delivery(store.services.engine, REGISTRY, receipt["delivery_id"])
    drain(store)
    check_round(store, receipts)
    assert table_sizes(store) == sizes


# -- transcription --------------------------------------------------------------------------


def test_later_transcription_updates_the_conversation_and_an_older_one_does_not(store) -> None:  # type: ignore[no-untyped-def]
    first = post_fixture(store, "transcription_unicode.json")  # event_timestamp ...080
    drain(store)
    check_transcription(store, load("transcription_unicode.json"))
    assert conversation(store, "conv_fixture_0001").last_delivery_id == first["delivery_id"]  # type: ignore[union-attr]

    second = post_fixture(store, "transcription_tool_calls.json")  # event_timestamp ...085
    drain(store)
    check_transcription(store, load("transcription_tool_calls.json"))
    row = conversation(store, "conv_fixture_0001")
    assert row is not None and row.last_delivery_id == second["delivery_id"]
    assert row.call_summary_title == "Appointment moved to Friday 14:30"
    tools = [t for t in turns_of(store, "conv_fixture_0001") if t.tool_calls]
    assert tools and tools[0].tool_calls[0]["tool_name"] == "check_availability"  # type: ignore[index]

    # Replaying the older transcription must not roll the conversation back.
    assert requeue_delivery(store.services.engine, REGISTRY, first["delivery_id"]) == 1
    drain(store)
    assert [j.status for j in jobs_of(store, first["delivery_id"])] == ["done"]
    check_transcription(store, load("transcription_tool_calls.json"))
    assert conversation(store, "conv_fixture_0001").last_delivery_id == second["delivery_id"]  # type: ignore[union-attr]


def test_retried_delivery_never_duplicates_turns(store) -> None:  # type: ignore[no-untyped-def]
    receipt = post_fixture(store, "transcription_tool_calls.json")
    drain(store)
    before = [(t.turn_index, t.role, t.message) for t in turns_of(store, "conv_fixture_0001")]
    evaluations = count(store, ConversationEvaluation, "conv_fixture_0001")
    assert before and evaluations == 3

    for _ in range(2):
        assert requeue_delivery(store.services.engine, REGISTRY, receipt["delivery_id"]) == 1
        assert drain(store) == 1
        (job,) = jobs_of(store, receipt["delivery_id"])
        assert (job.status, job.last_error) == ("done", None)  # applied again, not refused
    after = [(t.turn_index, t.role, t.message) for t in turns_of(store, "conv_fixture_0001")]
    assert after == before
    assert count(store, ConversationEvaluation, "conv_fixture_0001") == evaluations
    assert count(store, ConversationDataCollection, "conv_fixture_0001") == 4
    assert rows(store, select(func.count()).select_from(Conversation)) == [1]


def test_failure_after_writing_rolls_the_turns_back(
    database_url, tmp_path, services_factory, live_server
) -> None:  # type: ignore[no-untyped-def]
    """A handler that dies after its writes leaves nothing behind; the retry writes it once."""

    def crash_first_attempt(event, ctx) -> None:  # type: ignore[no-untyped-def]
        store_transcription(event, ctx)
        if ctx.attempt == 1:
            raise RuntimeError("worker lost after writing")

    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", crash_first_attempt)])
    # A retry delay long enough that the first drain cannot run the retry as well.
    settings = make_settings(
        database_url, tmp_path / "data", job_retry_base_seconds=0.4, job_retry_max_seconds=0.4
    )
    server = live_server(services_factory(settings, registry), run_worker=False)
    receipt = post_fixture(server, "transcription_tool_calls.json")
    drain(server)
    (job,) = jobs_of(server, receipt["delivery_id"])
    assert job.status == "pending" and "worker lost" in (job.last_error or "")
    assert conversation(server, "conv_fixture_0001") is None
    assert turns_of(server, "conv_fixture_0001") == []

    deadline = time.monotonic() + 10
    while jobs_of(server, receipt["delivery_id"])[0].status != "done":
        assert time.monotonic() < deadline, "retry did not run"
        time.sleep(0.05)
        drain(server)
    check_transcription(server, load("transcription_tool_calls.json"))


def handler_call(services, name: str, delivery_id: int, session: Session) -> tuple[Any, Any]:  # type: ignore[no-untyped-def]
    """The (event, ctx) a worker would build for a fixture body, on a session of our own."""
    data = fixture_bytes(f"elevenlabs/{name}")
    body = ReceivedBody(len(data), hashlib.sha256(data).hexdigest(), data=data)
    source = services.sources["elevenlabs"]
    identity = source.identify(body)
    event = Event(
        delivery_id, "elevenlabs", identity.event_type, identity.subject_id, utcnow(), body, source
    )
    ctx = HandlerContext(session, services.blobs, None, services.settings, 0, 1)  # type: ignore[arg-type]
    return event, ctx


def test_two_workers_creating_one_conversation_collide_and_the_loser_retries(
    settings, services_factory
) -> None:  # type: ignore[no-untyped-def]
    """The race the upsert cannot see: both find no row, both insert. One must fail loudly
    (so its job is retried), never leave two copies or a mix of both transcriptions."""
    services = services_factory(settings)
    engine = services.engine
    first = Session(engine)
    store_transcription(*handler_call(services, "transcription_unicode.json", 1, first))
    # `first` now holds the new conversation uncommitted; a second worker starts on the newer one.
    errors: list[BaseException] = []

    def second_worker() -> None:
        with Session(engine) as session:
            try:
                store_transcription(
                    *handler_call(services, "transcription_tool_calls.json", 2, session)
                )
                session.commit()
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=second_worker)
    thread.start()
    if engine.dialect.name == "postgresql":  # wait until it is blocked on our insert

        def blocked_on_a_lock() -> bool:
            # A transaction of its own per look: Postgres keeps a transaction's view of
            # pg_stat_activity until it ends, so one long transaction would never see the wait.
            with engine.connect() as conn:
                waiting = conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                ).scalar_one()
            return waiting > 0 or not thread.is_alive()

        wait_until(blocked_on_a_lock)
    else:
        time.sleep(0.3)  # it waits for the SQLite write lock that `first` holds
    first.commit()
    first.close()
    thread.join(30)
    (error,) = errors
    assert isinstance(error, IntegrityError | OperationalError), repr(error)
    check_transcription(services_as_server(services), load("transcription_unicode.json"))

    # The retry (a fresh transaction) finds the row and applies the newer transcription.
    with Session(engine) as session:
        store_transcription(*handler_call(services, "transcription_tool_calls.json", 2, session))
        session.commit()
    check_transcription(services_as_server(services), load("transcription_tool_calls.json"))


def services_as_server(services):  # type: ignore[no-untyped-def]
    """The query helpers take a server; they only use its ``services``."""
    return SimpleNamespace(services=services)


# -- audio ----------------------------------------------------------------------------------


def test_audio_before_transcription_links_up(store) -> None:  # type: ignore[no-untyped-def]
    audio_receipt = post_fixture(store, "post_call_audio.json")
    drain(store)
    bare = conversation(store, "conv_fixture_0001")
    assert bare is not None
    assert (bare.agent_id, bare.status, bare.transcript_event_time) == ("agent_fixture", None, None)
    audio = audio_of(store, "conv_fixture_0001")
    assert audio is not None and audio.delivery_id == audio_receipt["delivery_id"]
    blob = store.services.blobs.path(audio.blob_path)
    assert blob.read_bytes() == HELLO_MP3
    assert (audio.size, audio.sha256) == (len(HELLO_MP3), hashlib.sha256(HELLO_MP3).hexdigest())
    assert blob.suffix == ".mp3"

    post_fixture(store, "transcription_tool_calls.json")
    drain(store)
    check_transcription(store, load("transcription_tool_calls.json"))
    assert audio_of(store, "conv_fixture_0001") == audio  # the transcription kept the link


def test_mp3_sniffing() -> None:
    assert looks_like_mp3(HELLO_MP3[:64])
    frame = HELLO_MP3.index(b"\xff\xf3")  # the first MPEG-2 layer III frame after the tag
    assert looks_like_mp3(HELLO_MP3[frame : frame + 64])
    for head in (b"", b"I", b"ID", b"\xff", b"\xff\x1f", b"RIFF....WAVE", b"OggS", b"{}"):
        assert not looks_like_mp3(head), head


def big_audio_body(audio: bytes) -> bytes:
    """A post_call_audio body with ``full_audio`` last, as large as the audio demands."""
    envelope = {"type": "post_call_audio", "event_timestamp": int(time.time()), "data": {}}
    data = {"agent_id": "agent-big", "conversation_id": "conv-big", "full_audio": ""}
    head = json.dumps(envelope)[: -len("{}}")] + json.dumps(data)[: -len('"}')]
    return head.encode() + base64.b64encode(audio) + b'"}}'


def test_large_audio_is_decoded_in_a_stream(store) -> None:  # type: ignore[no-untyped-def]
    audio = HELLO_MP3 * (16 * 1024 * 1024 // len(HELLO_MP3))  # ~16 MB of MP3, ~21 MB of body
    body = big_audio_body(audio)
    assert len(body) > 20 * 1024 * 1024

    def chunks(data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), 256 * 1024):
            yield data[start : start + 256 * 1024]

    headers = {"ElevenLabs-Signature": sign(SECRET, body), "Content-Type": "application/json"}
    response = httpx.post(
        f"{store.url}/webhooks/elevenlabs", content=chunks(body), headers=headers, timeout=60
    )
    assert response.status_code == 200, response.text
    delivery_id = response.json()["delivery_id"]
    (delivery,) = rows(store, select(Delivery).where(Delivery.id == delivery_id))
    assert delivery.blob_path is not None and delivery.body is None  # spooled, not in the row
    expected_sha = hashlib.sha256(audio).hexdigest()
    del body, audio

    tracemalloc.start()
    try:
        drain(store)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [j.status for j in jobs_of(store, delivery_id)] == ["done"]
    stored = audio_of(store, "conv-big")
    assert stored is not None and stored.sha256 == expected_sha
    blob = store.services.blobs.path(stored.blob_path)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == expected_sha
    assert (
        stored.size == blob.stat().st_size == len(HELLO_MP3) * (16 * 1024 * 1024 // len(HELLO_MP3))
    )
    # Streaming keeps the handler to a few 1 MiB buffers; loading the body would be >35 MB.
    assert peak < 8 * 1024 * 1024, f"peak Python allocation {peak / 2**20:.1f} MiB"


# -- bodies the handlers cannot use -------------------------------------------------------


def test_unusable_bodies_go_dead_at_once_with_a_clear_error(store, settings) -> None:  # type: ignore[no-untyped-def]
    wav = b"RIFF\x24\x08\x00\x00WAVEfmt \x10\x00\x00\x00" + bytes(64)
    bodies = {
        "doc_audio": fixture_bytes("elevenlabs/post_call_audio_doc_example.json"),
        "wav_audio": event_body(
            "post_call_audio", conversation_id="conv-wav", full_audio=base64.b64encode(wav).decode()
        ),
        "no_conversation": json.dumps(
            {"type": "post_call_transcription", "event_timestamp": 1, "data": {"agent_id": "a"}}
        ).encode(),
        # Not unusable: the voice events' data is unpublished, so none at all is still kept.
        "dataless_notice": json.dumps({"type": "voice_removed", "event_timestamp": 2}).encode(),
    }
    receipts = {name: post(store, body) for name, body in bodies.items()}
    drain(store)
    errors = {}
    for name, receipt in receipts.items():
        (job,) = jobs_of(store, receipt["delivery_id"])
        assert (job.status, job.attempts) == (
            ("done", 1) if name == "dataless_notice" else ("dead", 1)
        )
        errors[name] = job.last_error or ""

    # The doc example elides its audio with "...": strict base64 refuses it, nothing is stored.
    assert "post_call_audio for conversation abc" in errors["doc_audio"]
    assert "data.full_audio is not valid base64" in errors["doc_audio"]
    assert "invalid character b'.'" in errors["doc_audio"]
    assert "no audio stored" in errors["doc_audio"]
    assert conversation(store, "abc") is None and audio_of(store, "abc") is None
    assert "not MP3" in errors["wav_audio"] and "52 49 46 46" in errors["wav_audio"]
    assert audio_of(store, "conv-wav") is None and conversation(store, "conv-wav") is None
    assert list(settings.blob_dir.rglob("*.mp3")) == []
    assert list(settings.spool_dir.iterdir()) == []  # the half-written blobs were discarded
    assert "does not match the ElevenLabs model" in errors["no_conversation"]
    assert "conversation_id" in errors["no_conversation"]
    (notice,) = rows(store, select(WorkspaceNotice))
    assert (notice.delivery_id, notice.event_type, notice.voice_id, notice.data) == (
        receipts["dataless_notice"]["delivery_id"],
        "voice_removed",
        None,
        None,
    )


# -- plumbing -------------------------------------------------------------------------------


def test_builtin_handlers_register_through_the_entry_point() -> None:
    registry = load_registry()
    expected = {
        "post_call_transcription": store_transcription,
        "post_call_audio": store_audio,
        "call_initiation_failure": store_call_failure,
        **dict.fromkeys(VOICE_EVENT_TYPES, store_workspace_notice),
    }
    for event_type, func_ in expected.items():
        assert func_ in [s.func for s in registry.handlers_for("elevenlabs", event_type)]


def test_migration_matches_the_table_classes(settings, services_factory) -> None:  # type: ignore[no-untyped-def]
    services = services_factory(settings)
    with services.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    ours = [d for d in diffs if HANDLER_TABLES & _tables_named(d)]
    assert ours == []


def _tables_named(diff: Any) -> set[str]:
    """Table names a compare_metadata diff entry mentions."""
    found: set[str] = set()
    stack = [diff]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(item)
        elif hasattr(item, "table") and getattr(item.table, "name", None):
            found.add(item.table.name)
        elif hasattr(item, "name") and hasattr(item, "columns"):
            found.add(item.name)
        elif isinstance(item, str):
            found.add(item)
    return found
