"""``call_initiation_failure`` -> a ``call_failures`` row (an outbound call never connected).

The provider details people act on (SIP status code and reason, Twilio CallSid and CallStatus)
get columns; the whole provider ``metadata`` is kept as JSON, because Twilio's StatusCallback has
dozens of fields and a new telephony provider may send a shape nobody has modelled yet.
One row per delivery: re-running the job (retry, replay) finds the row and changes nothing.
"""

from __future__ import annotations

from sqlmodel import select

from handlers.elevenlabs.tables import CallFailure, dump, typed_payload
from receiver.events import Event, HandlerContext
from receiver.sources.elevenlabs.models import CallInitiationFailure


def store_call_failure(event: Event, ctx: HandlerContext) -> None:
    """Insert the failure once per delivery."""
    payload = typed_payload(event, CallInitiationFailure)
    session = ctx.session
    existing = session.exec(
        select(CallFailure.id).where(CallFailure.delivery_id == event.delivery_id)
    ).first()
    if existing is not None:
        return
    data = payload.data
    session.add(
        CallFailure(
            delivery_id=event.delivery_id,
            agent_id=data.agent_id,
            conversation_id=data.conversation_id,
            failure_reason=data.failure_reason,
            provider_type=payload.provider_type,
            sip_status_code=payload.sip_status_code,
            sip_reason=payload.sip_reason,
            twilio_call_sid=payload.twilio_call_sid,
            twilio_call_status=payload.twilio_call_status,
            raw_metadata=dump(data.metadata),
            event_time=payload.event_time,
        )
    )
    session.flush()  # a concurrent insert for the same delivery fails here and is retried
