"""The handler: one ``call_log`` row per conversation, idempotent under retries and replays."""

from __future__ import annotations

from call_log.tables import CallLogEntry
from receiver.events import Event, HandlerContext


def log_call(event: Event, ctx: HandlerContext) -> None:
    """Sync handler: writes through ``ctx.session``, committed with the job's completion."""
    data = event.payload.data  # ConversationData: typed, unknown fields kept
    duration = data.metadata.call_duration_secs if data.metadata else None
    # merge: a replayed delivery updates its row instead of failing on the primary key.
    ctx.session.merge(
        CallLogEntry(
            conversation_id=data.conversation_id,
            agent_id=data.agent_id,
            status=data.status,
            duration_secs=int(duration) if duration is not None else None,
            delivery_id=event.delivery_id,
        )
    )
