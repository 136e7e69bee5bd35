"""Tables the built-in ElevenLabs handlers write, and the few helpers those handlers share.

One row per conversation (keyed by ElevenLabs' ``conversation_id``) holds what people filter and
sort on; its transcript turns and analysis results are rows of their own so they can be queried
("every failed evaluation this week", "calls where the agent used tool X"). The full ``data`` of
the last transcription is kept as JSON too, so nothing the columns leave out is lost.

The stored audio lives in its own table rather than in columns of ``conversations``: the
transcription handler replaces the conversation's columns and the audio handler never touches
them, so neither can undo the other whichever arrives first.

Schema changes go through ``handlers/migrations`` (Alembic branch ``elevenlabs_handlers``); the
tests compare these classes with the migrated schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import JSON, Column, Connection, Float, Index, Text, UniqueConstraint, select
from sqlmodel import Field, SQLModel

from receiver.events import Event, PermanentFailure
from receiver.store.types import UTCDateTime, utcnow

SOURCE = "elevenlabs"


def _json(nullable: bool = True) -> Any:
    """A JSON column in which Python ``None`` is SQL NULL (not the JSON text ``null``)."""
    return Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=nullable))


class Conversation(SQLModel, table=True):
    """One ElevenLabs conversation, as of its latest transcription.

    A row can exist without a transcription (the audio arrived first): then ``status`` and every
    transcription column are NULL until the transcription comes. ``transcript_event_time`` is the
    ``event_timestamp`` of the transcription the row reflects, so an older transcription that is
    replayed later cannot overwrite a newer one.
    """

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_start_time", "start_time"),)

    conversation_id: str = Field(primary_key=True, max_length=256)
    agent_id: str | None = Field(default=None, max_length=256, index=True)
    user_id: str | None = Field(default=None, max_length=256)
    status: str | None = Field(default=None, max_length=64)
    start_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    duration_secs: float | None = Field(default=None, sa_type=Float)
    cost: float | None = Field(default=None, sa_type=Float)
    termination_reason: str | None = Field(default=None, sa_type=Text)
    call_successful: str | None = Field(default=None, max_length=64)
    transcript_summary: str | None = Field(default=None, sa_type=Text)
    call_summary_title: str | None = Field(default=None, sa_type=Text)
    dynamic_variables: dict[str, Any] | None = _json()
    data: dict[str, Any] | None = _json()
    has_audio: bool | None = None
    has_user_audio: bool | None = None
    has_response_audio: bool | None = None
    transcript_event_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_delivery_id: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ConversationTurn(SQLModel, table=True):
    """One transcript turn. ``(conversation_id, turn_index)`` is unique, so a turn can never be
    stored twice even if two workers race on the same conversation (one of them fails and
    retries)."""

    __tablename__ = "conversation_turns"
    __table_args__ = (
        UniqueConstraint("conversation_id", "turn_index", name="uq_conversation_turns_index"),
    )

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: str = Field(foreign_key="conversations.conversation_id", max_length=256)
    turn_index: int
    role: str | None = Field(default=None, max_length=32)
    message: str | None = Field(default=None, sa_type=Text)
    time_in_call_secs: float | None = Field(default=None, sa_type=Float)
    tool_calls: list[Any] | None = _json()
    tool_results: list[Any] | None = _json()
    metrics: dict[str, Any] | None = _json()


class ConversationEvaluation(SQLModel, table=True):
    """The verdict on one evaluation criterion of a conversation's analysis."""

    __tablename__ = "conversation_evaluations"
    __table_args__ = (
        UniqueConstraint("conversation_id", "criteria_id", name="uq_conversation_evaluations"),
    )

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: str = Field(foreign_key="conversations.conversation_id", max_length=256)
    criteria_id: str = Field(max_length=256)
    result: str | None = Field(default=None, max_length=64, index=True)
    rationale: str | None = Field(default=None, sa_type=Text)


class ConversationDataCollection(SQLModel, table=True):
    """One value the analysis extracted from a conversation (``value`` is any JSON)."""

    __tablename__ = "conversation_data_collection"
    __table_args__ = (
        UniqueConstraint("conversation_id", "field_id", name="uq_conversation_data_collection"),
    )

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: str = Field(foreign_key="conversations.conversation_id", max_length=256)
    field_id: str = Field(max_length=256)
    value: Any = _json()
    json_schema: dict[str, Any] | None = _json()
    rationale: str | None = Field(default=None, sa_type=Text)


class ConversationAudio(SQLModel, table=True):
    """The call recording of a conversation: an MP3 in the blob store (path relative to it)."""

    __tablename__ = "conversation_audio"

    conversation_id: str = Field(
        primary_key=True, foreign_key="conversations.conversation_id", max_length=256
    )
    blob_path: str = Field(max_length=256)
    size: int
    sha256: str = Field(max_length=64)
    delivery_id: int
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CallFailure(SQLModel, table=True):
    """An outbound call that could not be connected (``call_initiation_failure``).

    One row per delivery (``delivery_id`` is unique), so re-running the job changes nothing.
    """

    __tablename__ = "call_failures"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(unique=True)
    agent_id: str | None = Field(default=None, max_length=256, index=True)
    conversation_id: str | None = Field(default=None, max_length=256, index=True)
    failure_reason: str | None = Field(default=None, max_length=64)
    provider_type: str | None = Field(default=None, max_length=32)
    sip_status_code: int | None = None
    sip_reason: str | None = Field(default=None, sa_type=Text)
    twilio_call_sid: str | None = Field(default=None, max_length=64)
    twilio_call_status: str | None = Field(default=None, max_length=32)
    raw_metadata: dict[str, Any] | None = _json()
    event_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class WorkspaceNotice(SQLModel, table=True):
    """A workspace event about a shared voice (notice, withdrawal, removal), one per delivery."""

    __tablename__ = "workspace_notices"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(unique=True)
    event_type: str = Field(max_length=128)
    voice_id: str | None = Field(default=None, max_length=256, index=True)
    data: dict[str, Any] | None = _json()
    event_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ReconcileTurn(SQLModel, table=True):
    """Whose turn it is to reconcile with the ElevenLabs API, across every process on the store.

    One row per task (``name``). A process runs the task only if it moves ``due_at`` forward in
    a single conditional UPDATE (``... WHERE due_at <= now``): the database lets exactly one
    process win each interval, however many workers share it.
    """

    __tablename__ = "elevenlabs_reconcile_turns"

    name: str = Field(primary_key=True, max_length=64)
    due_at: datetime = Field(sa_type=UTCDateTime)
    holder: str | None = Field(default=None, max_length=256)
    claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    summary: dict[str, Any] | None = _json()


# -- helpers shared by the handlers ---------------------------------------------------------

ModelT = TypeVar("ModelT")


def typed_payload(event: Event, model: type[ModelT]) -> ModelT:
    """``event.payload`` checked to be ``model``; a body that does not fit fails for good.

    Parsing the same stored bytes again cannot succeed, so a validation error is a
    ``PermanentFailure`` (the job goes dead at once, to be re-queued after a fix) rather than
    eight retries that end the same way.
    """
    try:
        payload = event.payload
    except (ValidationError, ValueError) as exc:
        raise PermanentFailure(
            f"{event.type} delivery {event.delivery_id} does not match the ElevenLabs model: {exc}"
        ) from exc
    if not isinstance(payload, model):
        raise PermanentFailure(
            f"{event.type} delivery {event.delivery_id} parsed as {type(payload).__name__}, "
            f"expected {model.__name__}"
        )
    return payload


def from_unix(seconds: float | None) -> datetime | None:
    """Unix seconds as an aware UTC datetime; ``None`` for missing or unrepresentable values."""
    if seconds is None or isinstance(seconds, bool):
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def dump(model: Any) -> Any:
    """A pydantic model (or list of them) as JSON-ready data, with only the fields that arrived.

    ``exclude_unset`` keeps the stored JSON equal to what ElevenLabs sent (unknown fields
    included) instead of padding it with every optional field the model knows as ``null``.
    """
    if model is None:
        return None
    if isinstance(model, list):
        return [dump(item) for item in model]
    return model.model_dump(mode="json", exclude_unset=True)


def blob_paths(conn: Connection) -> set[str]:
    """Every call recording's blob (``voicehooks gc`` keeps them)."""
    table = ConversationAudio.__table__  # type: ignore[attr-defined]  # SQLModel adds it
    return set(conn.execute(select(table.c.blob_path)).scalars())
