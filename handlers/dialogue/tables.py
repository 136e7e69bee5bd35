"""``dialogue_renders`` (one row per submitted script) and ``dialogue_voice_segments``.

A render is created ``queued`` together with the job that will run it (one transaction, see
``handlers.dialogue.submit``). It becomes ``running`` once a provider has accepted it and must be
followed (kie.ai: its ``task_id`` is recorded in the same transaction as that state), then
``succeeded`` with its audio in the blob store, or ``failed`` with the provider's own code and
message. The schema is the Alembic branch ``dialogue_handlers`` (``migrations/``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Float,
    ForeignKey,
    Integer,
    Text,
    select,
)
from sqlmodel import Field, SQLModel

from receiver.store.types import UTCDateTime, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
FINAL_STATES = frozenset({SUCCEEDED, FAILED})


class DialogueRender(SQLModel, table=True):
    __tablename__ = "dialogue_renders"

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(max_length=32)
    state: str = Field(max_length=32, index=True)
    title: str | None = Field(default=None, sa_type=Text)
    script: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    # The local delivery whose job runs this render (``voicehooks deliveries show``).
    delivery_id: int | None = Field(default=None, index=True)
    # kie.ai's taskId, stored in the transaction that records the task as running.
    task_id: str | None = Field(default=None, max_length=128, unique=True)
    error_code: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_type=Text)
    warning: str | None = Field(default=None, sa_type=Text)
    audio_blob_path: str | None = Field(default=None, max_length=256)
    audio_size: int | None = Field(default=None, sa_type=BigInteger)
    audio_sha256: str | None = Field(default=None, max_length=64)
    audio_content_type: str | None = Field(default=None, max_length=128)
    audio_seconds: float | None = None
    # ElevenLabs' character alignments, as answered.
    alignment: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True))
    )
    normalized_alignment: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True))
    )
    submitted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DialogueVoiceSegment(SQLModel, table=True):
    __tablename__ = "dialogue_voice_segments"

    id: int | None = Field(default=None, primary_key=True)
    render_id: int = Field(
        sa_column=Column(Integer, ForeignKey("dialogue_renders.id"), nullable=False, index=True)
    )
    position: int
    voice_id: str = Field(max_length=128)
    start_seconds: float = Field(sa_type=Float)
    end_seconds: float = Field(sa_type=Float)
    character_start: int
    character_end: int
    input_index: int


dialogue_renders = DialogueRender.__table__  # type: ignore[attr-defined]
dialogue_voice_segments = DialogueVoiceSegment.__table__  # type: ignore[attr-defined]


def blob_paths(conn: Connection) -> set[str]:
    """Every blob a render's audio lives in (``voicehooks gc`` keeps them)."""
    table = DialogueRender.__table__  # type: ignore[attr-defined]  # SQLModel adds it
    column = table.c.audio_blob_path
    return set(conn.execute(select(column).where(column.is_not(None))).scalars())
