"""The plugin's own table; its schema is created by the plugin's Alembic branch."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, select
from sqlmodel import Field, SQLModel

from receiver.store.types import UTCDateTime, utcnow


class CallLogEntry(SQLModel, table=True):
    __tablename__ = "call_log"

    conversation_id: str = Field(primary_key=True, max_length=256)
    agent_id: str | None = Field(default=None, max_length=256)
    status: str | None = Field(default=None, max_length=64)
    duration_secs: int | None = None
    delivery_id: int
    logged_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


def recent(engine: Engine, limit: int = 50) -> list[CallLogEntry]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(CallLogEntry.__table__)
            .order_by(  # type: ignore[attr-defined]
                CallLogEntry.logged_at.desc()  # type: ignore[attr-defined]
            )
            .limit(limit)
        ).all()
    return [CallLogEntry(**row._mapping) for row in rows]
