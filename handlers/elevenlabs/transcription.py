"""``post_call_transcription`` -> a conversation row, its transcript turns and its analysis.

The conversation row is an upsert keyed by ``conversation_id``; turns, evaluation results and
collected data are replaced wholesale for that conversation. Everything happens in the job's
transaction, so a retried or re-sent delivery leaves exactly one copy of each turn: either the
whole replacement commits together with the job, or none of it does.

Deliveries can be processed out of order (a replay of an old delivery, a retry that waited out
its backoff while a newer transcription went through), so the row remembers the
``event_timestamp`` it reflects and an older transcription never overwrites a newer one.
Portability matters more than a native upsert here: a select-then-write inside the job's
transaction works on SQLite and Postgres alike. On Postgres the conversation row is locked
(``FOR UPDATE``); two workers creating the same new conversation at once collide on its primary
key (or on a turn's unique index), and the loser's ``IntegrityError`` propagates so its job is
retried and then finds the row.
"""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlmodel import Session, col, delete, select

from handlers.elevenlabs.tables import (
    Conversation,
    ConversationDataCollection,
    ConversationEvaluation,
    ConversationTurn,
    dump,
    from_unix,
    typed_payload,
)
from receiver.events import Event, HandlerContext
from receiver.sources.elevenlabs.models import (
    ConversationData,
    PostCallTranscription,
)
from receiver.store.types import utcnow

log = structlog.get_logger(__name__)


def store_transcription(event: Event, ctx: HandlerContext) -> None:
    """Upsert the conversation and replace its turns and analysis rows."""
    payload = typed_payload(event, PostCallTranscription)
    data = payload.data
    event_time = payload.event_time
    session = ctx.session

    row = lock_conversation(session, data.conversation_id)
    if row is not None and is_older(event_time, row.transcript_event_time):
        log.info(
            "transcription_superseded",
            conversation_id=data.conversation_id,
            delivery_id=event.delivery_id,
            stored_event_time=str(row.transcript_event_time),
            event_time=str(event_time),
        )
        return
    new = row is None
    if row is None:
        row = Conversation(conversation_id=data.conversation_id)
    apply_conversation(row, data, event_time, event.delivery_id)
    session.add(row)
    replace_children(session, data, had_children=not new)
    session.flush()  # surface constraint errors (a concurrent insert) inside the handler


def lock_conversation(session: Session, conversation_id: str) -> Conversation | None:
    """The conversation row, locked for this transaction on Postgres (SQLite has one writer)."""
    query = (
        select(Conversation)
        .where(Conversation.conversation_id == conversation_id)
        .with_for_update()
    )
    return session.exec(query).first()


def is_older(event_time: datetime | None, stored: datetime | None) -> bool:
    """True when the stored transcription is known to be newer than this one.

    Equal times mean "the same transcription again" (a retry or replay): applied, harmlessly.
    Without a timestamp on either side there is nothing to compare, so the later delivery wins.
    """
    return event_time is not None and stored is not None and event_time < stored


def apply_conversation(
    row: Conversation, data: ConversationData, event_time: datetime | None, delivery_id: int
) -> None:
    """Copy the transcription's fields onto the row; the audio link lives elsewhere and stays."""
    metadata = data.metadata
    row.agent_id = data.agent_id
    row.user_id = data.user_id
    row.status = data.status
    row.start_time = from_unix(metadata.start_time_unix_secs) if metadata else None
    row.duration_secs = metadata.call_duration_secs if metadata else None
    row.cost = metadata.cost if metadata else None
    row.termination_reason = metadata.termination_reason if metadata else None
    row.call_successful = data.call_successful
    row.transcript_summary = data.transcript_summary
    row.call_summary_title = data.analysis.call_summary_title if data.analysis else None
    row.dynamic_variables = data.dynamic_variables or None
    row.data = dump(data)
    row.has_audio = data.has_audio
    row.has_user_audio = data.has_user_audio
    row.has_response_audio = data.has_response_audio
    row.transcript_event_time = event_time
    row.last_delivery_id = delivery_id
    row.updated_at = utcnow()


def replace_children(session: Session, data: ConversationData, *, had_children: bool) -> None:
    """Delete this conversation's turns and analysis rows and insert the ones just received.

    A conversation that had no row until now has no children either (they reference the row),
    so its first transcription skips the three deletes: a third of the handler's statements."""
    conversation_id = data.conversation_id
    if had_children:
        for table in (ConversationTurn, ConversationEvaluation, ConversationDataCollection):
            session.exec(delete(table).where(col(table.conversation_id) == conversation_id))
    # The conversation row must exist before its children reference it.
    session.flush()
    for index, turn in enumerate(data.transcript or []):
        session.add(
            ConversationTurn(
                conversation_id=conversation_id,
                turn_index=index,
                role=turn.role,
                message=turn.message,
                time_in_call_secs=turn.time_in_call_secs,
                tool_calls=dump(turn.tool_calls) or None,
                tool_results=dump(turn.tool_results) or None,
                metrics=turn.conversation_turn_metrics,
            )
        )
    analysis = data.analysis
    if analysis is None:
        return
    # The dict keys are the ids (unique by construction); the ``*_id`` inside repeats them.
    for key, result in (analysis.evaluation_criteria_results or {}).items():
        session.add(
            ConversationEvaluation(
                conversation_id=conversation_id,
                criteria_id=key,
                result=result.result,
                rationale=result.rationale,
            )
        )
    for key, item in (analysis.data_collection_results or {}).items():
        session.add(
            ConversationDataCollection(
                conversation_id=conversation_id,
                field_id=key,
                value=item.value,
                json_schema=item.json_schema,
                rationale=item.rationale,
            )
        )
