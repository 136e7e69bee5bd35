"""``post_call_audio`` -> the call's MP3 in the blob store, linked to its conversation.

The body can be hundreds of MB of JSON whose one big value is the base64 MP3. It is read from
the stored body in chunks and decoded straight into a blob file
(``receiver.jsonstream.decode_base64_string``), so neither the body nor the audio is ever held in
memory. The decode runs before the handler touches the database: on SQLite a write transaction
held across a long decode would block every other writer.

A body that cannot give a good MP3 (``full_audio`` missing, not strict base64, or decoding to
something that is not MP3) fails the job permanently with a message that says which, and no blob
is kept: retrying the same stored bytes cannot help, and a broken file must never look like a
stored recording.
"""

from __future__ import annotations

from typing import BinaryIO, cast

import structlog
from sqlmodel import Session

from handlers.elevenlabs.tables import (
    Conversation,
    ConversationAudio,
    typed_payload,
)
from receiver.events import Event, HandlerContext, PermanentFailure
from receiver.jsonstream import Base64DecodeError, JSONStreamError, decode_base64_string
from receiver.sources.elevenlabs.models import PostCallAudio
from receiver.store.blobs import BlobStore
from receiver.store.types import utcnow

log = structlog.get_logger(__name__)
AUDIO_PATH = ("data", "full_audio")


def looks_like_mp3(head: bytes) -> bool:
    """An ID3v2 tag, or an MPEG audio frame sync (11 set bits) at the very start."""
    if head.startswith(b"ID3"):
        return True
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0


def describe_head(head: bytes) -> str:
    return head[:8].hex(" ") if head else "nothing"


def store_audio(event: Event, ctx: HandlerContext) -> None:
    """Decode ``data.full_audio`` into the blob store, then link it to the conversation."""
    payload = typed_payload(event, PostCallAudio)
    conversation_id = payload.data.conversation_id
    relpath, size, sha256 = decode_audio(event, ctx.blobs, conversation_id)
    link_audio(
        ctx.session,
        conversation_id=conversation_id,
        agent_id=payload.data.agent_id,
        blob_path=relpath,
        size=size,
        sha256=sha256,
        delivery_id=event.delivery_id,
    )
    log.info(
        "audio_stored",
        conversation_id=conversation_id,
        delivery_id=event.delivery_id,
        size=size,
        blob=relpath,
    )


def decode_audio(event: Event, blobs: BlobStore, conversation_id: str) -> tuple[str, int, str]:
    """Stream-decode the audio into a committed blob; ``(relpath, size, sha256)``."""
    where = f"post_call_audio for conversation {conversation_id} (delivery {event.delivery_id})"
    with event.body.open() as body, blobs.writer(suffix=".mp3") as out:
        try:
            decode_base64_string(body, AUDIO_PATH, cast(BinaryIO, out))
        except Base64DecodeError as exc:
            raise PermanentFailure(
                f"{where}: data.full_audio is not valid base64 ({exc}); no audio stored"
            ) from exc
        except JSONStreamError as exc:
            raise PermanentFailure(
                f"{where}: cannot read data.full_audio from the body ({exc}); no audio stored"
            ) from exc
        if out.size == 0:
            raise PermanentFailure(f"{where}: data.full_audio is empty; no audio stored")
        if not looks_like_mp3(out.head):
            raise PermanentFailure(
                f"{where}: data.full_audio decodes to {out.size} bytes that are not MP3 "
                f"(no ID3 tag or MPEG frame sync; first bytes: {describe_head(out.head)}); "
                "no audio stored"
            )
        size, sha256 = out.size, out.sha256
        # Leaving the block after commit() is a no-op; on any exception it discards the file.
        return out.commit(), size, sha256


def link_audio(
    session: Session,
    *,
    conversation_id: str,
    agent_id: str,
    blob_path: str,
    size: int,
    sha256: str,
    delivery_id: int,
) -> None:
    """Record the blob for the conversation, creating a bare conversation row if needed.

    The transcription handler fills the row in later without touching this link. A second audio
    for the same conversation replaces the link (the old blob stays, content-addressed and
    possibly shared).
    """
    conversation = session.get(Conversation, conversation_id, with_for_update=True)
    if conversation is None:
        session.add(Conversation(conversation_id=conversation_id, agent_id=agent_id))
        session.flush()  # the row the audio's foreign key points at; a racing insert fails here
    audio = session.get(ConversationAudio, conversation_id, with_for_update=True)
    if audio is None:
        audio = ConversationAudio(
            conversation_id=conversation_id,
            blob_path=blob_path,
            size=size,
            sha256=sha256,
            delivery_id=delivery_id,
        )
    else:
        audio.blob_path, audio.size, audio.sha256 = blob_path, size, sha256
        audio.delivery_id, audio.created_at = delivery_id, utcnow()
    session.add(audio)
    session.flush()
