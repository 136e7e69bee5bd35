"""Workspace voice events -> a ``workspace_notices`` row each.

``voice_removal_notice``, ``voice_removal_notice_withdrawn`` and ``voice_removed`` tell a
workspace that a shared voice it may use is going away (or not). ElevenLabs publishes no schema
for their ``data``, so the row keeps it whole as JSON and pulls out only ``voice_id``, the one
field worth an index ("which of our agents use this voice?"). One row per delivery.
"""

from __future__ import annotations

from sqlmodel import select

from handlers.elevenlabs.tables import WorkspaceNotice, dump, typed_payload
from receiver.events import Event, HandlerContext
from receiver.sources.elevenlabs.models import (
    WebhookEnvelope,
)


def store_workspace_notice(event: Event, ctx: HandlerContext) -> None:
    """Insert the notice once per delivery."""
    payload = typed_payload(event, WebhookEnvelope)
    session = ctx.session
    existing = session.exec(
        select(WorkspaceNotice.id).where(WorkspaceNotice.delivery_id == event.delivery_id)
    ).first()
    if existing is not None:
        return
    data = payload.data
    voice_id = getattr(data, "voice_id", None)
    session.add(
        WorkspaceNotice(
            delivery_id=event.delivery_id,
            event_type=payload.type,
            voice_id=voice_id if isinstance(voice_id, str) else None,
            data=dump(data),
            event_time=payload.event_time,
        )
    )
    session.flush()
