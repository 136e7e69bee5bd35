"""kie.ai ``elevenlabs/text-to-dialogue-v3`` task callbacks -> ``dialogue_tasks`` rows + audio.

Callbacks for one task can arrive more than once, late, or out of order (kie.ai retries a
callback it thinks failed; our jobs retry too), so a row only ever moves forward:
``waiting < queuing < generating < success | fail``. A callback behind the row's state (a late
``waiting``) or beside it (a ``fail`` after ``success``) changes no state, result or failure; it
may only fill descriptive fields the row is missing. A callback in the row's own state fills
whatever is still missing, which is how a second ``success`` brings audio the first one lacked.

When ``VOICEHOOKS_KIE_API_KEY`` is set, a callback is only a trigger: the task's state and result
URLs are taken from kie.ai's ``recordInfo`` (``confirm``), since the callback's signature does not
cover its body.

On ``success`` the result URLs are downloaded at once (kie.ai says they expire within about a day),
before anything is written through ``ctx.write``, so the SQLite write lock is never held across
the network. A URL that has expired or does not serve audio ends the job as dead with a message
saying so; what is known of the task is still recorded, with the reason in ``audio_error``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from handlers.kie.tables import dialogue_tasks
from receiver.download import (
    DownloadedFile,
    DownloadGone,
    DownloadRefused,
    NotAudio,
    TooLarge,
    download_audio,
)
from receiver.events import Event, HandlerContext, PermanentFailure, RetryLater
from receiver.sources.kie.client import KieClient
from receiver.sources.kie.models import KieCallback
from receiver.sources.provider_api import ProviderRefused, ProviderUnavailable
from receiver.store.types import utcnow

log = structlog.get_logger(__name__)
DIALOGUE_MODEL_PREFIX = "elevenlabs/text-to-dialogue"
STATE_RANK = {"waiting": 0, "queuing": 1, "generating": 2, "success": 3, "fail": 3}
# Filled from any callback, even one behind the row's state: they describe the request.
DESCRIPTIVE = ("model", "dialogue", "stability", "language_code", "create_time")
AUDIO_COLUMNS = (
    "audio_blob_path",
    "audio_size",
    "audio_sha256",
    "audio_content_type",
    "audio_files",
)
BOOKKEEPING = ("task_id", "first_seen_at", "updated_at", "last_delivery_id")
# In-place retries per URL before the job itself is retried later (with the worker's backoff).
DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_BACKOFF_SECONDS = 0.5


def rank(state: str | None) -> int:
    """Unknown states rank with ``waiting``: never above a known later state."""
    return STATE_RANK.get(state or "", 0)


def is_dialogue_model(model: str | None) -> bool:
    return model is None or model.startswith(DIALOGUE_MODEL_PREFIX)


def _from_millis(value: int | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(value / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def task_values(
    callback: KieCallback, task_id: str, raw_record: Any, delivery_id: int
) -> dict[str, Any]:
    """The row this callback alone describes (no audio yet)."""
    record = callback.data
    now = utcnow()
    return {
        "task_id": task_id,
        "model": record.model,
        "state": record.state or "unknown",
        "kie_code": callback.code,
        "kie_msg": callback.msg,
        "dialogue": [turn.model_dump() for turn in record.dialogue] or None,
        "stability": record.stability,
        "language_code": record.language_code,
        "result_urls": record.result_urls or None,
        "fail_code": record.fail_code,
        "fail_msg": record.fail_msg,
        "cost_time_ms": record.cost_time,
        "create_time": _from_millis(record.create_time),
        "complete_time": _from_millis(record.complete_time),
        "raw_record": raw_record if isinstance(raw_record, dict) else None,
        "audio_error": None,
        "first_seen_at": now,
        "updated_at": now,
        "last_delivery_id": delivery_id,
    }


def audio_values(files: list[DownloadedFile]) -> dict[str, Any]:
    first = files[0]
    return {
        "audio_blob_path": first.blob_path,
        "audio_size": first.size,
        "audio_sha256": first.sha256,
        "audio_content_type": first.content_type,
        "audio_files": [
            {
                "url": f.url,
                "blob_path": f.blob_path,
                "size": f.size,
                "sha256": f.sha256,
                "content_type": f.content_type,
                "format": f.format,
            }
            for f in files
        ],
        "audio_error": None,
    }


def merge(current: Mapping[str, Any], incoming: Mapping[str, Any]) -> dict[str, Any]:
    """The column updates that ``incoming`` makes to ``current`` under the forward-only rule.

    Empty means the callback changes nothing (a duplicate, or a late state with nothing new).
    """
    cur_state, new_state = current["state"], incoming["state"]
    changes: dict[str, Any] = {}
    if rank(new_state) > rank(cur_state):
        for column, value in incoming.items():
            if column in ("task_id", "first_seen_at"):
                continue
            if value is not None or column in ("raw_record", "kie_code", "kie_msg"):
                changes[column] = value
    elif new_state == cur_state:
        for column, value in incoming.items():
            if column in BOOKKEEPING or value is None:
                continue
            if current.get(column) is None:
                changes[column] = value
        # A reason the audio could not be fetched is news until the audio itself arrives.
        if (
            incoming.get("audio_error")
            and current.get("audio_blob_path") is None
            and "audio_blob_path" not in changes
        ):
            changes["audio_error"] = incoming["audio_error"]
    else:
        for column in DESCRIPTIVE:
            if current.get(column) is None and incoming.get(column) is not None:
                changes[column] = incoming[column]
    if changes.get("audio_blob_path") is not None:
        changes["audio_error"] = None
    if changes:
        changes["updated_at"] = incoming["updated_at"]
        changes["last_delivery_id"] = incoming["last_delivery_id"]
    return changes


def wants_audio(current: Mapping[str, Any] | None, callback: KieCallback) -> bool:
    """Whether this callback's result URLs would be recorded, so they are worth fetching."""
    record = callback.data
    if record.state != "success" or not record.result_urls:
        return False
    if current is None:
        return True
    if current["state"] == "success":
        return current.get("audio_blob_path") is None
    return rank(current["state"]) < rank("success")


def _insert(conn: Connection) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(dialogue_tasks)


def apply(conn: Connection, incoming: dict[str, Any]) -> str:
    """Insert or merge ``incoming`` in the caller's transaction; returns what happened.

    The insert comes first so that on SQLite the transaction takes the write lock before it
    reads (no stale-snapshot upgrade), and on Postgres the row is then locked ``FOR UPDATE``,
    so two workers handling callbacks of one task serialise instead of overwriting each other.
    """
    inserted = conn.execute(
        _insert(conn).values(**incoming).on_conflict_do_nothing(index_elements=["task_id"])
    )
    if inserted.rowcount == 1:
        return "created"
    row = conn.execute(
        select(dialogue_tasks)
        .where(dialogue_tasks.c.task_id == incoming["task_id"])
        .with_for_update()
    ).one()
    changes = merge(row._asdict(), incoming)
    if not changes:
        return "unchanged"
    conn.execute(
        update(dialogue_tasks)
        .where(dialogue_tasks.c.task_id == incoming["task_id"])
        .values(**changes)
    )
    return "advanced" if "state" in changes else "filled"


def _load(conn: Connection, task_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(dialogue_tasks).where(dialogue_tasks.c.task_id == task_id)).first()
    return row._asdict() if row is not None else None


def _apply_in_session(session: Session, incoming: dict[str, Any]) -> str:
    """In the job's transaction: committed together with the job's end, under its lease."""
    return apply(session.connection(), incoming)


def refusal_message(task_id: str, exc: DownloadRefused) -> str:
    if isinstance(exc, DownloadGone):
        return (
            f"kie task {task_id}: the result URL has expired or is gone ({exc}); kie.ai keeps "
            "result URLs for about 24 hours, so this audio can no longer be downloaded from it"
        )
    if isinstance(exc, NotAudio):
        return f"kie task {task_id}: the result URL did not return audio ({exc})"
    if isinstance(exc, TooLarge):
        return (
            f"kie task {task_id}: the result audio is larger than VOICEHOOKS_KIE_MAX_AUDIO_BYTES "
            f"({exc.limit} bytes), so it was not kept"
        )
    return f"kie task {task_id}: the result URL refused the download ({exc})"


async def _download_all(ctx: HandlerContext, urls: list[str]) -> list[DownloadedFile]:
    return [
        await download_audio(
            ctx.http,
            ctx.blobs,
            url,
            max_bytes=ctx.settings.kie_max_audio_bytes,
            attempts=DOWNLOAD_ATTEMPTS,
            backoff_seconds=DOWNLOAD_BACKOFF_SECONDS,
        )
        for url in urls
    ]


def _raw_record(event: Event) -> Any:
    with event.body.open() as fh:
        document = json.load(fh)
    data = document.get("data") if isinstance(document, dict) else None
    return data


async def confirm(ctx: HandlerContext, task_id: str) -> tuple[KieCallback, Any]:
    """The task as kie.ai's ``recordInfo`` reports it, in place of a callback's claims.

    A callback's signature covers its task id and time, not its body: a replayed signature
    could carry a forged state or result URLs. With ``VOICEHOOKS_KIE_API_KEY`` set the callback
    is therefore only a trigger, and what is recorded (and downloaded) comes from kie.ai itself.
    """
    assert ctx.settings.kie_api_key is not None
    client = KieClient(
        ctx.http, ctx.settings.kie_base_url, ctx.settings.kie_api_key.get_secret_value()
    )
    try:
        callback, document = await client.record_info(task_id)
    except ProviderRefused as exc:
        raise PermanentFailure(
            f"kie task {task_id}: kie.ai would not confirm the callback: {exc}"
        ) from exc
    except ProviderUnavailable as exc:
        if exc.retry_after is not None:
            raise RetryLater(str(exc), delay=exc.retry_after) from exc
        raise
    return callback, document.get("data")


async def record_task(
    ctx: HandlerContext, callback: KieCallback, raw_record: Any, task_id: str, delivery_id: int
) -> dict[str, Any]:
    """Record what ``callback`` (a callback's body, or a recordInfo answer) says of the task,
    downloading its audio first when that would be recorded; returns the row afterwards."""
    incoming = task_values(callback, task_id, raw_record, delivery_id)
    # A look outside the job's transaction: the download below must not hold SQLite's lock.
    current = await ctx.read(_load, task_id)
    if wants_audio(current, callback):
        try:
            files = await _download_all(ctx, callback.data.result_urls)
        except DownloadRefused as exc:
            message = refusal_message(task_id, exc)
            incoming["audio_error"] = message
            # What the callback said is kept, committed with the job's death.
            await ctx.write(_apply_in_session, incoming)
            raise PermanentFailure(message, keep_writes=True) from exc
        incoming |= audio_values(files)
    outcome, row = await ctx.write(_apply_and_load, incoming)
    log.info(
        "kie_task_recorded",
        task_id=task_id,
        state=incoming["state"],
        outcome=outcome,
        previous=current["state"] if current else None,
    )
    return row


def _apply_and_load(session: Session, incoming: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    conn = session.connection()
    outcome = apply(conn, incoming)
    row = _load(conn, incoming["task_id"])
    assert row is not None
    return outcome, row


async def record_dialogue_task(event: Event, ctx: HandlerContext) -> None:
    """Record the task's state and, on success, its audio."""
    try:
        callback: KieCallback = event.payload
        raw_record = _raw_record(event)
    except ValueError as exc:  # identify() lets no such body through; a replay might
        raise PermanentFailure(f"the kie.ai callback cannot be read: {exc}") from exc
    task_id = callback.task_id or event.subject_id
    if not task_id:
        raise PermanentFailure("the kie.ai callback has no taskId")
    if ctx.settings.kie_api_key is not None:
        callback, raw_record = await confirm(ctx, task_id)
    if not is_dialogue_model(callback.data.model):
        log.info("kie_task_skipped", task_id=task_id, model=callback.data.model)
        return
    await record_task(ctx, callback, raw_record, task_id, event.delivery_id)
