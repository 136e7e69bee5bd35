"""This plugin's sections of ``voicehooks demo``'s report, read from its own tables."""

from __future__ import annotations

from rich.table import Table
from sqlalchemy import Engine, func, select

from handlers.elevenlabs.tables import (
    CallFailure,
    Conversation,
    ConversationAudio,
    ConversationTurn,
    WorkspaceNotice,
)
from receiver.cli.output import short

conversations = Conversation.__table__  # type: ignore[attr-defined]  # SQLModel adds it
turns_table = ConversationTurn.__table__  # type: ignore[attr-defined]  # SQLModel adds it
audio_table = ConversationAudio.__table__  # type: ignore[attr-defined]  # SQLModel adds it
failures = CallFailure.__table__  # type: ignore[attr-defined]  # SQLModel adds it
notices = WorkspaceNotice.__table__  # type: ignore[attr-defined]  # SQLModel adds it


def conversations_table(engine: Engine) -> tuple[str, Table]:
    with engine.connect() as conn:
        rows = conn.execute(select(conversations).order_by(conversations.c.conversation_id)).all()
        turns: dict[str, int] = dict(
            conn.execute(
                select(turns_table.c.conversation_id, func.count()).group_by(
                    turns_table.c.conversation_id
                )
            ).all()
        )
        audio: dict[str, int] = dict(
            conn.execute(select(audio_table.c.conversation_id, audio_table.c.size)).all()
        )
    table = Table("conversation", "agent", "status", "successful", "turns", "audio", "summary")
    for row in rows:
        size = audio.get(row.conversation_id)
        table.add_row(
            short(row.conversation_id),
            short(row.agent_id),
            short(row.status),
            short(row.call_successful),
            str(turns.get(row.conversation_id, 0)),
            f"{size:,} B mp3" if size else "-",
            short(row.call_summary_title or row.transcript_summary, 34),
        )
    return "Conversations", table


def call_failures_table(engine: Engine) -> tuple[str, Table]:
    with engine.connect() as conn:
        rows = conn.execute(select(failures).order_by(failures.c.id)).all()
    table = Table("conversation", "reason", "provider", "detail")
    for row in rows:
        detail = row.sip_status_code or row.twilio_call_status or row.sip_reason
        table.add_row(
            short(row.conversation_id),
            short(row.failure_reason),
            short(row.provider_type),
            short(detail),
        )
    return "Call initiation failures", table


def notices_table(engine: Engine) -> tuple[str, Table]:
    with engine.connect() as conn:
        rows = conn.execute(select(notices).order_by(notices.c.id)).all()
    table = Table("event", "voice")
    for row in rows:
        table.add_row(short(row.event_type), short(row.voice_id))
    return "Workspace notices", table
