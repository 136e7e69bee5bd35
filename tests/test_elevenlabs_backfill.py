"""Reconciliation with ElevenLabs (issue 12): conversations and audio whose webhooks never came.

Everything is real but ElevenLabs: the fake API (tests/fakes) and the receiver both run under
uvicorn on loopback, webhooks are signed and POSTed, the store is SQLite and Postgres.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import Session, select
from typer.testing import CliRunner

from handlers.elevenlabs.backfill import Reconciler, Summary, claim_turn
from handlers.elevenlabs.cli_backfill import parse_when
from handlers.elevenlabs.tables import Conversation, ConversationAudio, ConversationTurn
from receiver.cli.main import app
from receiver.registry import load_registry
from receiver.service import Services
from receiver.settings import Settings
from receiver.sources.elevenlabs.conversations_api import ConversationsAPI
from receiver.store.blobs import BlobStore
from receiver.store.models import Delivery
from tests.conftest import make_settings, serve_in_thread, wait_until
from tests.fakes.elevenlabs_conversations import API_KEY, HELLO_MP3, FakeConversations

NOW = int(time.time())


@pytest.fixture
def fake() -> Iterator[tuple[FakeConversations, str]]:
    server = FakeConversations()
    server.add("conv_webhooked", start=NOW - 7200, audio=HELLO_MP3)
    server.add("conv_missed", start=NOW - 5400, turns=4, audio=HELLO_MP3)
    server.add("conv_missed_too", start=NOW - 3600, turns=2)
    server.add("conv_running", start=NOW - 60, status="in-progress")
    with serve_in_thread(server.app()) as url:
        yield server, url


def api_settings(database_url: str, data_dir: Path, url: str, **overrides: Any) -> Settings:
    return make_settings(
        database_url,
        data_dir,
        elevenlabs_api_key=API_KEY,
        elevenlabs_base_url=url,
        **overrides,
    )


def run_backfill(services: Services, *, dry_run: bool = False, hours: int = 24) -> Summary:
    until = datetime.now(UTC)

    async def main() -> Summary:
        async with httpx.AsyncClient(timeout=10) as http:
            api = ConversationsAPI.from_settings(services.settings, http, backoff_base=0.01)
            reconciler = Reconciler(
                api,
                engine=services.engine,
                blobs=services.blobs,
                inbox=services.inbox,
                source=services.sources["elevenlabs"],
                settings=services.settings,
                dry_run=dry_run,
            )
            return await reconciler.run(until - timedelta(hours=hours), until)

    return asyncio.run(main())


def webhook_body(server: FakeConversations, conversation_id: str, timestamp: int) -> bytes:
    details = server.conversations[conversation_id]
    envelope = {"type": "post_call_transcription", "event_timestamp": timestamp, "data": details}
    return json.dumps(envelope).encode()


def stored(services: Services) -> dict[str, Any]:
    with Session(services.engine) as session:
        conversations = {
            c.conversation_id: c.last_delivery_id for c in session.exec(select(Conversation))
        }
        turns = dict(
            session.exec(
                select(ConversationTurn.conversation_id, func.count()).group_by(
                    ConversationTurn.conversation_id
                )
            ).all()
        )
        audio = {a.conversation_id: a for a in session.exec(select(ConversationAudio))}
        deliveries = session.exec(select(Delivery).order_by(Delivery.id)).all()
    return {
        "conversations": conversations,
        "turns": turns,
        "audio": audio,
        "deliveries": deliveries,
    }


def processed(services: Services, conversation_id: str, turns: int) -> bool:
    return stored(services)["turns"].get(conversation_id) == turns


def test_backfill_recovers_what_webhooks_missed_once_and_a_late_webhook_adds_nothing(
    database_url: str,
    tmp_path: Path,
    fake: tuple[FakeConversations, str],
    services_factory,
    live_server,
) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    services = services_factory(api_settings(database_url, tmp_path / "data", url), load_registry())
    receiver = live_server(services)
    # Before: one conversation arrived by webhook (its audio webhook was lost).
    ended = NOW - 7200 + 42
    assert (
        receiver.post_signed(webhook_body(server, "conv_webhooked", ended + 5)).status_code == 200
    )
    wait_until(lambda: processed(services, "conv_webhooked", 3))

    summary = run_backfill(services)
    assert summary.counts() == {
        "listed": 4,
        "already_stored": 1,
        "fetched": 2,
        "audio_fetched": 2,
        "skipped_running": 1,
        "failed": 0,
    }
    # The webhook's conversation and the running one were never fetched.
    assert sorted(server.paths("get")) == [
        "/v1/convai/conversations/conv_missed",
        "/v1/convai/conversations/conv_missed_too",
    ]
    wait_until(lambda: processed(services, "conv_missed", 4))
    wait_until(lambda: processed(services, "conv_missed_too", 2))
    state = stored(services)
    recovered = sorted(
        (d for d in state["deliveries"] if d.auth_method == "api"), key=lambda d: d.subject_id
    )
    assert [(d.source, d.event_type, d.subject_id) for d in recovered] == [
        ("elevenlabs", "post_call_transcription", "conv_missed"),
        ("elevenlabs", "post_call_transcription", "conv_missed_too"),
    ]
    body = json.loads(recovered[0].body)
    assert body["type"] == "post_call_transcription"
    assert body["event_timestamp"] == NOW - 5400 + 42  # when the call ended
    assert body["data"] == server.conversations["conv_missed"]
    # Audio lands exactly where the audio handler puts it: the content-addressed .mp3 blob.
    blob = BlobStore.relpath_for(hashlib.sha256(HELLO_MP3).hexdigest(), ".mp3")
    assert set(state["audio"]) == {"conv_webhooked", "conv_missed"}
    for audio in state["audio"].values():
        assert audio.blob_path == blob and audio.size == len(HELLO_MP3)
        assert services.blobs.path(blob).read_bytes() == HELLO_MP3
    assert state["audio"]["conv_missed"].delivery_id == recovered[0].id

    # A second backfill over the same window fetches nothing.
    requests_before = len(server.requests)
    again = run_backfill(services)
    assert again.counts() == {
        "listed": 4,
        "already_stored": 3,
        "fetched": 0,
        "audio_fetched": 0,
        "skipped_running": 1,
        "failed": 0,
    }
    assert [p for p, _ in server.requests[requests_before:]] == ["/v1/convai/conversations"]

    # The webhook arrives late: 200, and still one conversation with its four turns.
    late = receiver.post_signed(webhook_body(server, "conv_missed", int(time.time())))
    assert late.status_code == 200
    late_id = late.json()["delivery_id"]
    wait_until(lambda: stored(services)["conversations"]["conv_missed"] == late_id)
    state = stored(services)
    assert list(state["conversations"]).count("conv_missed") == 1
    assert state["turns"]["conv_missed"] == 4
    assert len(state["conversations"]) == 3


def test_a_failed_conversation_does_not_stop_the_others(
    tmp_path: Path, fake: tuple[FakeConversations, str], services_factory
) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    services = services_factory(
        api_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path / "data", url), load_registry()
    )
    server.fail_next(500, times=5, path_contains="conv_missed_too")  # every attempt
    summary = run_backfill(services)
    assert summary.failed == 1 and summary.fetched == 2
    assert summary.failures == [
        {
            "conversation_id": "conv_missed_too",
            "error": "getting conversation conv_missed_too: HTTP 500: forced failure "
            "(after 5 attempts)",
        }
    ]
    subjects = sorted(d.subject_id for d in stored(services)["deliveries"])
    assert subjects == ["conv_missed", "conv_webhooked"]
    # The next run picks up what failed.
    assert run_backfill(services).counts()["fetched"] == 1


def test_dry_run_fetches_and_stores_nothing(
    tmp_path: Path, fake: tuple[FakeConversations, str], services_factory
) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    services = services_factory(
        api_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path / "data", url), load_registry()
    )
    summary = run_backfill(services, dry_run=True)
    assert summary.counts()["fetched"] == 3 and summary.dry_run
    assert server.paths("get") == [] and server.paths("audio") == []
    assert stored(services)["deliveries"] == []


def test_claiming_the_reconcile_turn_has_one_winner_per_interval(
    database_url: str, tmp_path: Path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    services = services_factory(make_settings(database_url, tmp_path / "data"), load_registry())
    winners: list[int] = []
    barrier = threading.Barrier(6)

    def contend(n: int) -> None:
        barrier.wait()
        if claim_turn(services.engine, "conversations", 3600, f"p{n}"):
            winners.append(n)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert not claim_turn(services.engine, "conversations", 3600, "later")
    assert claim_turn(services.engine, "other-task", 3600, "p0")


def test_periodic_reconciliation_runs_once_across_worker_processes(
    database_url: str, tmp_path: Path, fake: tuple[FakeConversations, str], services_factory
) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    settings = api_settings(database_url, tmp_path / "data", url, elevenlabs_reconcile_seconds=3600)
    # Two worker "processes" on one store, each with its own engine, as `voicehooks worker` x2.
    workers = [services_factory(settings, load_registry()) for _ in range(2)]
    for services in workers:
        services.worker.start_in_thread()
    try:
        wait_until(lambda: processed(workers[0], "conv_missed", 4))
        wait_until(lambda: processed(workers[0], "conv_missed_too", 2))
        time.sleep(0.5)  # give the second worker every chance to list too
    finally:
        for services in workers:
            services.worker.stop()
    assert len(server.paths("list")) == 1
    assert sorted(stored(workers[0])["audio"]) == ["conv_missed", "conv_webhooked"]


def test_periodic_reconciliation_is_off_by_default(
    tmp_path: Path, fake: tuple[FakeConversations, str], services_factory
) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    services = services_factory(
        api_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path / "data", url), load_registry()
    )
    services.worker.start_in_thread()
    time.sleep(0.5)
    services.worker.stop()
    assert server.requests == []


# -- the command -----------------------------------------------------------------------------


def cli(tmp_path: Path, url: str, *args: str, key: str = API_KEY) -> Any:
    env = {
        "VOICEHOOKS_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "VOICEHOOKS_DATA_DIR": str(tmp_path / "data"),
        "VOICEHOOKS_ELEVENLABS_API_KEY": key,
        "VOICEHOOKS_ELEVENLABS_BASE_URL": url,
    }
    return CliRunner().invoke(app, ["elevenlabs", "backfill", *args], env=env)


def test_cli_backfill_summary_json_and_second_run(
    tmp_path: Path, fake: tuple[FakeConversations, str]
) -> None:
    server, url = fake
    first = cli(tmp_path, url)
    assert first.exit_code == 0, first.output
    assert "page 1: listed 4" in first.output  # not a terminal: a plain line per page
    for label, count in [("listed", 4), ("fetched", 3), ("audio fetched", 2)]:
        assert any(
            line.split("│")[1:3]
            and label == line.split("│")[1].strip()
            and str(count) == line.split("│")[2].strip()
            for line in first.output.splitlines()
            if line.count("│") >= 3
        ), (label, first.output)
    # No worker ran: the transcriptions wait in the inbox, and still count as stored.
    fetched_before = len(server.paths("get")) + len(server.paths("audio"))
    second = cli(tmp_path, url, "--since", "7d", "--json")
    assert len(server.paths("get")) + len(server.paths("audio")) == fetched_before
    assert second.exit_code == 0, second.output
    document = json.loads(second.output[second.output.index("{") :])
    assert document["fetched"] == 0 and document["already_stored"] == 3
    assert document["skipped_running"] == 1 and document["failed"] == 0


def test_cli_exits_1_when_a_conversation_failed(
    tmp_path: Path, fake: tuple[FakeConversations, str]
) -> None:
    server, url = fake
    server.add("conv_[bold]gone", start=NOW - 100)
    server.fail_next(404, path_contains="gone")
    result = cli(tmp_path, url)
    assert result.exit_code == 1
    assert "failed conv_[bold]gone: getting conversation conv_[bold]gone: HTTP 404" in result.output


def test_cli_401_is_one_line_without_the_key(
    tmp_path: Path, fake: tuple[FakeConversations, str]
) -> None:
    _, url = fake
    result = cli(tmp_path, url, key="xi-this-key-is-wrong")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "error: ElevenLabs refused the API key (401): check VOICEHOOKS_ELEVENLABS_API_KEY"
    )
    assert "xi-this-key-is-wrong" not in result.output and "Traceback" not in result.output


def test_cli_without_a_key_says_which_setting(
    tmp_path: Path, fake: tuple[FakeConversations, str]
) -> None:
    _, url = fake
    result = cli(tmp_path, url, key="")
    assert result.exit_code == 1
    assert "set VOICEHOOKS_ELEVENLABS_API_KEY" in result.output


def test_cli_dry_run_and_bad_when(tmp_path: Path, fake: tuple[FakeConversations, str]) -> None:
    server, url = fake
    result = cli(tmp_path, url, "--dry-run")
    assert result.exit_code == 0 and "dry run" in result.output
    assert server.paths("get") == []
    bad = cli(tmp_path, url, "--since", "yesterday")
    assert bad.exit_code == 2 and "neither an ISO date/time" in bad.output


def test_when_is_an_iso_date_time_or_a_duration() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_when("36h", now) == now - timedelta(hours=36)
    assert parse_when("7d", now) == datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_when("90m", now) == datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
    assert parse_when("2026-11-30", now) == datetime(2026, 11, 30, tzinfo=UTC)
    assert parse_when("2026-11-30T08:00:00+01:00", now) == datetime(2026, 11, 30, 7, tzinfo=UTC)
    assert parse_when("2026-11-30T08:00Z", now) == datetime(2026, 11, 30, 8, tzinfo=UTC)


def test_the_reconcile_turns_table_matches_its_migration(
    database_url: str, tmp_path: Path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    from tests.test_elevenlabs_handlers import _tables_named

    services = services_factory(make_settings(database_url, tmp_path / "data"), load_registry())
    with services.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert [d for d in diffs if "elevenlabs_reconcile_turns" in _tables_named(d)] == []
