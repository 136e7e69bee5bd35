"""The ``dialogue_tasks`` table: one row per kie.ai text-to-dialogue task, and reads of it.

A row is the task as best known: the latest state (states only move forward, see
``handlers.kie.dialogue``), the request it was made from (dialogue turns and settings, parsed
from ``param``), its result or failure, and the downloaded audio. The schema is created by the
Alembic branch ``kie_handlers`` (``handlers/migrations/0001_kie.py``), which mirrors this class.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Connection, Engine, Text, select
from sqlmodel import Field, SQLModel

from receiver.store.types import UTCDateTime, utcnow

# A callback URL may carry our ``?token=`` secret; it is stored as received but never shown.
_TOKEN_IN_URL = re.compile(r"([?&]token=)[^&\"'\\\s]+")


class DialogueTask(SQLModel, table=True):
    __tablename__ = "dialogue_tasks"

    task_id: str = Field(primary_key=True, max_length=128)
    model: str | None = Field(default=None, max_length=128)
    state: str = Field(max_length=32, index=True)
    kie_code: int | None = None
    kie_msg: str | None = Field(default=None, sa_type=Text)
    dialogue: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True))
    )
    stability: float | None = None
    language_code: str | None = Field(default=None, max_length=32)
    result_urls: list[str] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    fail_code: str | None = Field(default=None, max_length=64)
    fail_msg: str | None = Field(default=None, sa_type=Text)
    cost_time_ms: int | None = Field(default=None, sa_type=BigInteger)
    create_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    complete_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # ``data`` of the callback that set the current state, exactly as it arrived.
    raw_record: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True))
    )
    # The first result's audio; ``audio_files`` lists every result URL's download.
    audio_blob_path: str | None = Field(default=None, max_length=256)
    audio_size: int | None = Field(default=None, sa_type=BigInteger)
    audio_sha256: str | None = Field(default=None, max_length=64)
    audio_content_type: str | None = Field(default=None, max_length=128)
    audio_files: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True))
    )
    # Why the audio could not be fetched (expired URL, not audio, too large), until it is.
    audio_error: str | None = Field(default=None, sa_type=Text)
    first_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_delivery_id: int | None = None


dialogue_tasks = DialogueTask.__table__  # type: ignore[attr-defined]  # SQLModel adds it


def redact(value: Any) -> Any:
    """``value`` with any ``token=`` query value in its strings replaced (for display)."""
    text = json.dumps(value, ensure_ascii=False)
    if "token=" not in text:
        return value
    return json.loads(_TOKEN_IN_URL.sub(r"\1<redacted>", text))


def task_as_dict(row: Any) -> dict[str, Any]:
    """A row as plain JSON-able data for the CLI, with times in ISO 8601 and secrets hidden."""
    data = {column.name: getattr(row, column.name) for column in dialogue_tasks.columns}
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.isoformat()
    data["raw_record"] = redact(data["raw_record"])
    return data


def list_tasks(
    engine: Engine, *, limit: int = 50, state: str | None = None
) -> list[dict[str, Any]]:
    """Most recently updated first."""
    query = select(dialogue_tasks).order_by(dialogue_tasks.c.updated_at.desc()).limit(limit)
    if state:
        query = query.where(dialogue_tasks.c.state == state)
    with engine.connect() as conn:
        return [task_as_dict(row) for row in conn.execute(query)]


def get_task(engine: Engine, task_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(dialogue_tasks).where(dialogue_tasks.c.task_id == task_id)
        ).first()
    return task_as_dict(row) if row is not None else None


def recorded_ids(engine: Engine, task_ids: set[str]) -> set[str]:
    """Which of ``task_ids`` have a row."""
    if not task_ids:
        return set()
    column = dialogue_tasks.c.task_id
    with engine.connect() as conn:
        return set(conn.execute(select(column).where(column.in_(sorted(task_ids)))).scalars())


def blob_paths(conn: Connection) -> set[str]:
    """Every blob a task's audio lives in: the first result's, and each one in ``audio_files``
    (``voicehooks gc`` keeps them)."""
    table = DialogueTask.__table__  # type: ignore[attr-defined]  # SQLModel adds it
    rows = conn.execute(
        select(table.c.audio_blob_path, table.c.audio_files).where(
            (table.c.audio_blob_path.is_not(None)) | (table.c.audio_files.is_not(None))
        )
    )
    paths: set[str] = set()
    for first, files in rows:
        if first:
            paths.add(first)
        if isinstance(files, str):  # a JSON column read back as text on some backends
            files = json.loads(files)
        for entry in files or ():
            if isinstance(entry, dict) and isinstance(entry.get("blob_path"), str):
                paths.add(entry["blob_path"])
    return paths
