"""Reconcile with ElevenLabs: recover the conversations and audio whose webhooks never arrived.

ElevenLabs sends most webhooks once, never retries ``post_call_audio`` and disables an endpoint
that keeps failing; a receiver that was down has lost those events unless it asks the API. This
lists the conversations that started in a window (``GET /v1/convai/conversations``) and, for
each finished one (``done`` or ``failed``) whose transcription is not stored:

* fetches its details and stores them through the inbox, as the ``post_call_transcription``
  delivery the webhook would have been (``{"type", "event_timestamp", "data": <details>}``),
  recorded with ``auth_method = "api"``: the same jobs and handlers then store it;
* streams its audio (when ``has_audio``) into the blob store and links it with the audio
  handler's own ``link_audio``, so it lands exactly where a ``post_call_audio`` webhook puts it.

No duplicates either way:

* "stored" means a transcription delivery for the conversation is in the inbox (processed or
  not) or the conversation row reflects one, so neither a webhook's conversation nor one this
  queued but no worker has run yet is fetched again; a second run over the same window fetches
  nothing;
* the delivery's ``event_timestamp`` is when the call ended (start + duration), which is
  deterministic (two overlapping runs produce the same dedupe key, so the inbox keeps one) and
  not later than the real webhook's (sent after the call ended). A webhook that arrives after
  the backfill is a new delivery (its own timestamp), answered 200, and the transcription handler
  upserts the conversation by id and replaces its turns: still one conversation, no extra turns.

A conversation already stored from a webhook whose audio never came (``has_audio`` but none
stored) gets its audio fetched too: that webhook is the one ElevenLabs never retries.

Conversations still running are counted and skipped (the next run gets them). A failure on one
conversation is counted and the run goes on; a rejected API key stops it at once.

``reconcile_periodically`` is the same run over a sliding look-back window, registered as the
blueprint's periodic task; a row in ``elevenlabs_reconcile_turns`` makes it run once per interval
across every process that shares the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
import structlog
from sqlalchemy import Engine, insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from handlers.elevenlabs.audio import link_audio, looks_like_mp3
from handlers.elevenlabs.tables import SOURCE, Conversation, ConversationAudio, ReconcileTurn
from receiver import jobs
from receiver.body import ReceivedBody
from receiver.events import PeriodicContext
from receiver.inbox import Inbox, IncomingDelivery, Receipt
from receiver.settings import Settings
from receiver.sources.base import Authenticity, Source
from receiver.sources.elevenlabs.conversations_api import (
    FINISHED,
    APIKeyRejected,
    ConversationsAPI,
    ConversationsAPIError,
    ConversationsPage,
    ConversationSummary,
)
from receiver.sources.elevenlabs.models import POST_CALL_TRANSCRIPTION
from receiver.store.blobs import BlobStore
from receiver.store.db import writer
from receiver.store.types import utcnow

log = structlog.get_logger(__name__)
API_AUTH = Authenticity(method="api")  # authenticated by our API key, not a webhook signature
RECONCILE_TASK = "conversations"
turns_table = ReconcileTurn.__table__  # type: ignore[attr-defined]  # SQLModel adds it


@dataclass
class Summary:
    """What one run did. In a dry run ``fetched``/``audio_fetched`` count what it would fetch."""

    listed: int = 0
    already_stored: int = 0
    fetched: int = 0
    audio_fetched: int = 0
    skipped_running: int = 0
    failed: int = 0
    pages: int = 0
    dry_run: bool = False
    failures: list[dict[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "listed": self.listed,
            "already_stored": self.already_stored,
            "fetched": self.fetched,
            "audio_fetched": self.audio_fetched,
            "skipped_running": self.skipped_running,
            "failed": self.failed,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fail(self, conversation_id: str, reason: str) -> None:
        self.failed += 1
        self.failures.append({"conversation_id": conversation_id, "error": reason})
        log.warning("backfill_conversation_failed", conversation_id=conversation_id, error=reason)


@dataclass
class Stored:
    """What the store already has for one page's conversations."""

    transcribed: set[str]
    audio: set[str]
    # Transcribed, ``has_audio``, no audio stored: id -> (agent_id, the transcription delivery).
    audio_missing: dict[str, tuple[str | None, int]]


def stored_state(engine: Engine, ids: list[str]) -> Stored:
    with Session(engine) as session:
        rows = session.exec(
            select(
                Conversation.conversation_id,
                Conversation.agent_id,
                Conversation.has_audio,
                Conversation.last_delivery_id,
            ).where(col(Conversation.conversation_id).in_(ids))
        ).all()
        audio = set(
            session.exec(
                select(ConversationAudio.conversation_id).where(
                    col(ConversationAudio.conversation_id).in_(ids)
                )
            ).all()
        )
    # ``last_delivery_id`` is set only by the transcription handler: a row the audio handler
    # created alone (audio arrived first) has no transcription yet.
    applied: set[str] = set()
    missing: dict[str, tuple[str | None, int]] = {}
    for cid, agent_id, has_audio, last_delivery_id in rows:
        if last_delivery_id is None:
            continue
        applied.add(cid)
        if has_audio and cid not in audio:
            missing[cid] = (agent_id, last_delivery_id)
    queued = jobs.stored_subjects(engine, SOURCE, POST_CALL_TRANSCRIPTION, ids)
    return Stored(applied | queued, audio, missing)


def event_timestamp(details: dict[str, Any], summary: ConversationSummary) -> int:
    """When the call ended: deterministic, and no later than the real webhook's timestamp."""
    metadata = details.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    start = metadata.get("start_time_unix_secs", summary.start_time_unix_secs)
    duration = metadata.get("call_duration_secs", summary.call_duration_secs) or 0
    if isinstance(start, int | float) and isinstance(duration, int | float):
        return int(start + duration)
    return int(utcnow().timestamp())


def transcription_delivery(
    details: dict[str, Any],
    timestamp: int,
    source: Source,
    blobs: BlobStore,
    spool_threshold: int,
) -> IncomingDelivery:
    """The ``post_call_transcription`` delivery the webhook would have been, identified by the
    source exactly as ingest identifies one (so the dedupe key has the webhook's form)."""
    envelope = {"type": POST_CALL_TRANSCRIPTION, "event_timestamp": timestamp, "data": details}
    body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
    sha256 = hashlib.sha256(body).hexdigest()
    identity = source.identify(ReceivedBody(size=len(body), sha256=sha256, data=body))
    blob_path = None
    if len(body) > spool_threshold:  # as ingest does: a large body lives in the blob store
        with blobs.writer(suffix=".body") as out:
            out.write(body)
            blob_path = out.commit()
    return IncomingDelivery(
        source=SOURCE,
        identity=identity,
        auth=API_AUTH,
        sha256=sha256,
        size=len(body),
        body=None if blob_path else body,
        blob_path=blob_path,
        content_type="application/json",
    )


def link_recovered_audio(
    engine: Engine,
    *,
    conversation_id: str,
    agent_id: str | None,
    blob_path: str,
    size: int,
    sha256: str,
    delivery_id: int,
) -> bool:
    """Link the blob unless audio arrived meanwhile (a webhook's audio is left alone).

    A worker creating the same conversation row at that moment makes one side fail on the
    primary key; the link is then tried again and finds the row.
    """
    for attempt in range(3):
        try:
            with Session(writer(engine)) as session:
                if session.get(ConversationAudio, conversation_id) is not None:
                    return False
                link_audio(
                    session,
                    conversation_id=conversation_id,
                    agent_id=agent_id or "",
                    blob_path=blob_path,
                    size=size,
                    sha256=sha256,
                    delivery_id=delivery_id,
                )
                session.commit()
                return True
        except IntegrityError:
            if attempt == 2:
                raise
    return False  # pragma: no cover


class Reconciler:
    """One reconciliation run: list a window, recover what is missing, count everything."""

    def __init__(
        self,
        api: ConversationsAPI,
        *,
        engine: Engine,
        blobs: BlobStore,
        inbox: Inbox,
        source: Source,
        settings: Settings,
        dry_run: bool = False,
        on_page: Callable[[Summary], None] | None = None,
    ) -> None:
        self.api = api
        self.engine = engine
        self.blobs = blobs
        self.inbox = inbox
        self.source = source
        self.settings = settings
        self.dry_run = dry_run
        self.on_page = on_page

    async def run(self, since: datetime, until: datetime, agent_id: str | None = None) -> Summary:
        summary = Summary(dry_run=self.dry_run)
        async for page in self.api.pages(
            after_unix=int(since.timestamp()),
            before_unix=int(until.timestamp()),
            agent_id=agent_id,
        ):
            await self._page(page, summary)
            summary.pages += 1
            if self.on_page is not None:
                self.on_page(summary)
        return summary

    async def _page(self, page: ConversationsPage, summary: Summary) -> None:
        ids = [c.conversation_id for c in page.conversations]
        stored = await anyio.to_thread.run_sync(stored_state, self.engine, ids)
        for conversation in page.conversations:
            summary.listed += 1
            cid = conversation.conversation_id
            if not conversation.finished:
                summary.skipped_running += 1
            elif cid in stored.transcribed:
                summary.already_stored += 1
                if cid in stored.audio_missing:
                    agent_id, delivery_id = stored.audio_missing[cid]
                    await self._audio(summary, cid, agent_id, delivery_id)
            elif self.dry_run:
                summary.fetched += 1
            else:
                await self._recover(summary, conversation, cid in stored.audio)

    async def _recover(
        self, summary: Summary, conversation: ConversationSummary, audio_stored: bool
    ) -> None:
        cid = conversation.conversation_id
        try:
            details = await self.api.get(cid)
        except APIKeyRejected:
            raise
        except ConversationsAPIError as exc:
            summary.fail(cid, str(exc))
            return
        if details.get("status") not in FINISHED:  # it was reopened or the list was stale
            summary.skipped_running += 1
            return
        try:
            receipt = await anyio.to_thread.run_sync(self._store, details, conversation)
        except Exception as exc:
            summary.fail(cid, f"storing conversation {cid}: {type(exc).__name__}: {exc}")
            return
        if receipt.duplicate:  # another run (or process) stored the same delivery meanwhile
            summary.already_stored += 1
        else:
            summary.fetched += 1
            log.info("backfill_stored", conversation_id=cid, delivery_id=receipt.delivery_id)
        if details.get("has_audio") and not audio_stored:
            agent_id = details.get("agent_id")
            agent_id = agent_id if isinstance(agent_id, str) else None
            await self._audio(summary, cid, agent_id, receipt.delivery_id)

    def _store(self, details: dict[str, Any], conversation: ConversationSummary) -> Receipt:
        incoming = transcription_delivery(
            details,
            event_timestamp(details, conversation),
            self.source,
            self.blobs,
            self.settings.spool_threshold_bytes,
        )
        return self.inbox.accept_now(incoming)

    async def _audio(
        self, summary: Summary, cid: str, agent_id: str | None, delivery_id: int
    ) -> None:
        if self.dry_run:
            summary.audio_fetched += 1
            return
        try:
            if await self.fetch_audio(cid, agent_id, delivery_id):
                summary.audio_fetched += 1
        except APIKeyRejected:
            raise
        except ConversationsAPIError as exc:
            summary.fail(cid, str(exc))
        except Exception as exc:
            summary.fail(cid, f"storing the audio of {cid}: {type(exc).__name__}: {exc}")

    async def fetch_audio(self, cid: str, agent_id: str | None, delivery_id: int) -> bool:
        """Stream the recording into a blob (never whole in memory) and link it as the audio
        handler does; a body that is not MP3 is discarded, as the handler discards one."""
        out = await anyio.to_thread.run_sync(self.blobs.writer, ".mp3")
        try:
            size = await self.api.stream_audio(cid, out.write)
            if size == 0:
                raise ConversationsAPIError(f"the audio of conversation {cid} is empty")
            if not looks_like_mp3(out.head):
                raise ConversationsAPIError(
                    f"the audio of conversation {cid} is not MP3 ({size} bytes); not stored"
                )
            sha256 = out.sha256
            relpath = await anyio.to_thread.run_sync(out.commit)
        finally:
            out.__exit__(None)  # discards the spool file unless committed
        linked = await anyio.to_thread.run_sync(
            lambda: link_recovered_audio(
                self.engine,
                conversation_id=cid,
                agent_id=agent_id,
                blob_path=relpath,
                size=size,
                sha256=sha256,
                delivery_id=delivery_id,
            )
        )
        if linked:
            log.info("backfill_audio_stored", conversation_id=cid, size=size, blob=relpath)
        return linked


# -- periodic reconciliation ---------------------------------------------------------------


def reconcile_interval(settings: Settings) -> float:
    """``VOICEHOOKS_ELEVENLABS_RECONCILE_SECONDS``: 0 (the default) leaves it off."""
    return settings.elevenlabs_reconcile_seconds


def claim_turn(engine: Engine, name: str, interval: float, holder: str) -> bool:
    """True for exactly one caller per interval, across every process sharing the store.

    The conditional UPDATE is atomic on both databases (Postgres re-checks ``due_at`` after a
    concurrent claimer commits, and SQLite has one writer); the very first claim inserts the
    row, and a racing first claim loses on its primary key.
    """
    now = utcnow()
    due = now + timedelta(seconds=interval)
    with writer(engine).begin() as conn:
        won = conn.execute(
            update(turns_table)
            .where(turns_table.c.name == name, turns_table.c.due_at <= now)
            .values(due_at=due, holder=holder, claimed_at=now)
        ).rowcount
        if won:
            return True
        if conn.execute(sa_select(turns_table.c.name).where(turns_table.c.name == name)).first():
            return False
    try:
        with writer(engine).begin() as conn:
            conn.execute(
                insert(turns_table).values(name=name, due_at=due, holder=holder, claimed_at=now)
            )
    except IntegrityError:
        return False
    return True


def finish_turn(engine: Engine, name: str, summary: dict[str, Any]) -> None:
    with writer(engine).begin() as conn:
        conn.execute(
            update(turns_table)
            .where(turns_table.c.name == name)
            .values(finished_at=utcnow(), summary=summary)
        )


async def reconcile_periodically(ctx: PeriodicContext) -> None:
    """The blueprint's periodic task: reconcile the last look-back window, if it is our turn."""
    settings = ctx.settings
    interval = reconcile_interval(settings)
    try:
        api = ConversationsAPI.from_settings(settings, ctx.http)
    except ConversationsAPIError as exc:
        log.warning("elevenlabs_reconcile_skipped", reason=str(exc))
        return
    holder = f"{socket.gethostname()}:{os.getpid()}"
    if not await anyio.to_thread.run_sync(claim_turn, ctx.engine, RECONCILE_TASK, interval, holder):
        return
    until = utcnow()
    since = until - timedelta(seconds=settings.elevenlabs_reconcile_lookback_seconds)
    reconciler = Reconciler(
        api,
        engine=ctx.engine,
        blobs=ctx.blobs,
        inbox=ctx.inbox,
        source=ctx.sources[SOURCE],
        settings=settings,
    )
    result: dict[str, Any]
    try:
        summary = await reconciler.run(since, until)
        result = {**summary.counts(), "since": since.isoformat(), "until": until.isoformat()}
        log.info("elevenlabs_reconciled", **summary.counts())
    except ConversationsAPIError as exc:
        result = {"error": str(exc)}
        log.warning("elevenlabs_reconcile_failed", error=str(exc))
    await anyio.to_thread.run_sync(finish_turn, ctx.engine, RECONCILE_TASK, result)
