"""Pydantic models for the webhook events ElevenLabs sends.

Why these models are so permissive
----------------------------------
ElevenLabs sends each event once (only ``post_call_transcription`` can be retried) and disables an
endpoint that keeps failing, so the receiver stores every authentic event before it parses
anything. These models are for the *handlers* that run afterwards. They follow three rules:

* **Unknown fields are kept.** ElevenLabs keeps adding optional fields (``has_audio``,
  ``branch_id``, ...). Every model allows extra fields, keeps them and gives them back from
  ``model_dump()``, so nothing is lost when a model is stored again or passed on.
* **Only identity is required.** ``agent_id`` and ``conversation_id`` are required on the
  conversation events because every document and example has them and handlers cannot do anything
  useful without them. A few provider-documented "required" fields are required too (the SIP
  failure body, the ``body`` of SIP/Twilio failure metadata). Everything else is optional with a
  ``None`` default, because the docs' own examples leave out fields that the OpenAPI spec marks as
  required.
* **Open enums are plain ``str``.** ``status``, ``role``, ``call_successful``, ``failure_reason``
  and similar fields list values that ElevenLabs extends over time. An unexpected value must not
  make an otherwise good event fail, so the documented values are only listed in comments.

Numbers that the spec calls "integer" are typed ``int | float`` (:data:`Number`): pydantic would
reject ``2.5`` for a plain ``int``, and timings such as ``time_in_call_secs`` may arrive that way.
A union keeps whatever type arrived, so a dump gives back the same JSON.

Unknown event types are not errors: :func:`parse_event` returns the generic
:class:`WebhookEnvelope`, which keeps ``data`` as it came.

Field names follow the ElevenLabs webhook docs and the "Get conversation details" OpenAPI
(``GetConversationResponseModel``) exactly, since the transcription webhook's ``data`` is that
model.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

__all__ = [
    "CALL_INITIATION_FAILURE",
    "EVENT_MODELS",
    "POST_CALL_AUDIO",
    "POST_CALL_TRANSCRIPTION",
    "VOICE_EVENT_TYPES",
    "VOICE_REMOVAL_NOTICE",
    "VOICE_REMOVAL_NOTICE_WITHDRAWN",
    "VOICE_REMOVED",
    "AgentMetadata",
    "Analysis",
    "AudioData",
    "BatchCall",
    "CallInitiationFailure",
    "CallInitiationFailureData",
    "Charging",
    "ClientData",
    "ConversationConfigOverride",
    "ConversationData",
    "ConversationError",
    "ConversationFeedback",
    "ConversationMetadata",
    "DataCollectionResult",
    "DeletionSettings",
    "DynamicVariableUpdate",
    "ElevenLabsModel",
    "EvaluationCriteriaResult",
    "FailureMetadata",
    "Number",
    "PhoneCall",
    "PostCallAudio",
    "PostCallTranscription",
    "SipFailureBody",
    "SipFailureMetadata",
    "ToolCall",
    "ToolDetails",
    "ToolResult",
    "TranscriptTurn",
    "TwilioFailureMetadata",
    "TwilioStatusCallback",
    "UnknownFailureMetadata",
    "UserFeedback",
    "VoiceEventData",
    "VoiceRemovalNotice",
    "VoiceRemovalNoticeWithdrawn",
    "VoiceRemoved",
    "WebhookEnvelope",
    "parse_event",
]

# --------------------------------------------------------------------------------------------
# Event type names
# --------------------------------------------------------------------------------------------

POST_CALL_TRANSCRIPTION = "post_call_transcription"
POST_CALL_AUDIO = "post_call_audio"
CALL_INITIATION_FAILURE = "call_initiation_failure"
VOICE_REMOVAL_NOTICE = "voice_removal_notice"
VOICE_REMOVAL_NOTICE_WITHDRAWN = "voice_removal_notice_withdrawn"
VOICE_REMOVED = "voice_removed"

#: Workspace events about shared voices; their ``data`` schema is not published.
VOICE_EVENT_TYPES = frozenset({VOICE_REMOVAL_NOTICE, VOICE_REMOVAL_NOTICE_WITHDRAWN, VOICE_REMOVED})

#: A JSON number. The union keeps ints as ints and floats as floats, so dumps round-trip.
Number = int | float


class ElevenLabsModel(BaseModel):
    """Base for every model here: keeps unknown fields and tolerates numbers in string fields.

    ``extra="allow"`` stores fields we do not know yet and returns them from ``model_dump()``.
    ``coerce_numbers_to_str`` lets a string field (an id, a Twilio form value) accept a JSON
    number instead of failing the whole event over a representation detail.
    """

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)


# --------------------------------------------------------------------------------------------
# Envelope
# --------------------------------------------------------------------------------------------


class WebhookEnvelope(ElevenLabsModel):
    """The top level every ElevenLabs webhook shares: ``{"type", "event_timestamp", "data"}``.

    Used as is for event types this module does not know, so that a new ElevenLabs event is
    still parsed, stored and reachable instead of being an error. ``event_timestamp`` is a number
    in the examples but a string in the general webhook docs' field table, so both are accepted
    and kept as they came (it is part of the deduplication key).
    """

    type: str
    event_timestamp: int | float | str | None = None
    data: Any = None

    @property
    def event_time(self) -> datetime | None:
        """``event_timestamp`` as an aware UTC datetime, or ``None`` if absent or unreadable.

        Accepts unix seconds as a number or numeric string, and ISO 8601 strings.
        """
        ts = self.event_timestamp
        if ts is None or isinstance(ts, bool):
            return None
        if isinstance(ts, str):
            text = ts.strip()
            try:
                ts = float(text)
            except ValueError:
                try:
                    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
                except ValueError:
                    return None
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        try:
            return datetime.fromtimestamp(ts, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None

    @property
    def conversation_id(self) -> str | None:
        """``data.conversation_id`` for any event, typed or generic; ``None`` when there is none.

        Handy for deduplication keys and logs without knowing the concrete event class.
        """
        data = self.data
        value = data.get("conversation_id") if isinstance(data, Mapping) else None
        if value is None and isinstance(data, BaseModel):
            value = getattr(data, "conversation_id", None)
            if value is None and data.model_extra:
                value = data.model_extra.get("conversation_id")
        return value if isinstance(value, str) else None


# --------------------------------------------------------------------------------------------
# post_call_transcription: transcript
# --------------------------------------------------------------------------------------------


class ToolDetails(ElevenLabsModel):
    """What kind of tool was called and how (``tool_details`` of a tool call).

    The spec has three shapes told apart by ``type``: ``webhook`` (method, url, headers, params,
    body), ``client`` (``parameters`` as a JSON string) and ``mcp`` (server and tool names,
    ``parameters`` as an object). One tolerant model covers all of them; fields of a shape we do
    not list stay available as extra fields.
    """

    type: str | None = None  # webhook | client | mcp (open set)
    method: str | None = None
    url: str | None = None
    headers: dict[str, Any] | None = None
    path_params: dict[str, Any] | None = None
    query_params: dict[str, Any] | None = None
    body: str | None = None
    parameters: Any = None  # str for client tools, object for MCP tools
    mcp_server_id: str | None = None
    mcp_server_name: str | None = None
    mcp_tool_name: str | None = None


class ToolCall(ElevenLabsModel):
    """A tool call the agent made during a turn.

    The spec's ``ConversationHistoryTranscriptToolCallCommonModel`` requires ``request_id``,
    ``tool_name``, ``params_as_json`` and ``tool_has_been_called``; they are optional here so that
    one odd tool call does not make the whole transcript unreadable.
    """

    type: str | None = None  # system | webhook | client | mcp | workflow (open set)
    request_id: str | None = None
    tool_name: str | None = None
    params_as_json: str | None = None
    tool_has_been_called: bool | None = None
    tool_details: ToolDetails | None = None

    @property
    def params(self) -> Any:
        """``params_as_json`` decoded, or ``None`` when absent or not valid JSON."""
        if not self.params_as_json:
            return None
        try:
            return json.loads(self.params_as_json)
        except ValueError:
            return None


class DynamicVariableUpdate(ElevenLabsModel):
    """A dynamic variable a tool changed during the call (``DynamicVariableUpdateCommonModel``)."""

    variable_name: str | None = None
    old_value: Any = None
    new_value: Any = None
    updated_at: Number | None = None
    tool_name: str | None = None
    tool_request_id: str | None = None


class ToolResult(ElevenLabsModel):
    """The result of a tool call.

    The spec has three variants (other tools, system tools, workflow tools) that share these
    fields and differ in ``type`` and in the shape of ``result``. ``result`` stays a plain object
    because the system-tool results alone have a dozen shapes (end call, transfer, DTMF, ...),
    each with its own ``result_type``.
    """

    type: str | None = None  # client | webhook | mcp | system | workflow (open set)
    request_id: str | None = None
    tool_name: str | None = None
    result_value: str | None = None
    is_error: bool | None = None
    tool_has_been_called: bool | None = None
    tool_latency_secs: Number | None = None
    dynamic_variable_updates: list[DynamicVariableUpdate] | None = None
    result: dict[str, Any] | None = None

    @property
    def result_type(self) -> str | None:
        """``result.result_type`` (e.g. ``end_call_success``) for system tools, else ``None``."""
        value = (self.result or {}).get("result_type")
        return value if isinstance(value, str) else None


class UserFeedback(ElevenLabsModel):
    """A like or dislike the user gave a turn."""

    score: str | None = None  # like | dislike
    time_in_call_secs: Number | None = None


class AgentMetadata(ElevenLabsModel):
    """Which agent (and workflow node) spoke a turn; differs from the top agent after transfers."""

    agent_id: str | None = None
    workflow_node_id: str | None = None


class TranscriptTurn(ElevenLabsModel):
    """One turn of the transcript (``ConversationHistoryTranscriptCommonModel-Output``).

    ``role`` is ``user`` or ``agent`` today but kept as ``str``. ``conversation_turn_metrics``
    stays a plain object: the spec describes ``{"metrics": {...}}`` while the webhook example
    sends the metric names directly (``{"convai_llm_service_ttfb": {"elapsed_time": ...}}``).
    """

    role: str | None = None  # user | agent (open set)
    agent_metadata: AgentMetadata | None = None
    message: str | None = None
    multivoice_message: dict[str, Any] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_results: list[ToolResult] | None = None
    feedback: UserFeedback | None = None
    llm_override: str | None = None
    time_in_call_secs: Number | None = None
    conversation_turn_metrics: dict[str, Any] | None = None
    rag_retrieval_info: dict[str, Any] | None = None
    llm_usage: dict[str, Any] | None = None
    interrupted: bool | None = None
    original_message: str | None = None
    source_medium: str | None = None  # audio | text (open set)


# --------------------------------------------------------------------------------------------
# post_call_transcription: metadata
# --------------------------------------------------------------------------------------------


class DeletionSettings(ElevenLabsModel):
    """When ElevenLabs deletes (or deleted) the conversation's logs, audio and transcript."""

    deletion_time_unix_secs: Number | None = None
    deleted_logs_at_time_unix_secs: Number | None = None
    deleted_audio_at_time_unix_secs: Number | None = None
    deleted_transcript_at_time_unix_secs: Number | None = None
    delete_transcript_and_pii: bool | None = None
    delete_audio: bool | None = None


class ConversationFeedback(ElevenLabsModel):
    """Aggregated user feedback for the whole conversation."""

    overall_score: str | None = None  # like | dislike
    likes: Number | None = None
    dislikes: Number | None = None


class Charging(ElevenLabsModel):
    """Billing details of the call. ``llm_usage`` is kept as a nested object."""

    dev_discount: bool | None = None
    is_burst: bool | None = None
    tier: str | None = None
    llm_usage: dict[str, Any] | None = None
    llm_price: Number | None = None
    llm_charge: Number | None = None
    call_charge: Number | None = None
    free_minutes_consumed: Number | None = None
    free_llm_dollars_consumed: Number | None = None


class PhoneCall(ElevenLabsModel):
    """Telephony details when the conversation was a phone call.

    The spec has two variants told apart by ``type``: ``twilio`` (with ``stream_sid``) and
    ``sip_trunking``. One model with optional fields covers both and any future provider, so a
    new telephony integration cannot break parsing of the transcript.
    """

    type: str | None = None  # twilio | sip_trunking (open set)
    direction: str | None = None  # inbound | outbound
    phone_number_id: str | None = None
    agent_number: str | None = None
    external_number: str | None = None
    call_sid: str | None = None
    stream_sid: str | None = None  # Twilio only


class BatchCall(ElevenLabsModel):
    """Set when the conversation was placed by a batch calling job."""

    batch_call_id: str | None = None
    batch_call_recipient_id: str | None = None


class ConversationError(ElevenLabsModel):
    """An error ElevenLabs recorded for the conversation."""

    code: int | None = None
    reason: str | None = None


class ConversationMetadata(ElevenLabsModel):
    """Call timing, cost, telephony and bookkeeping (``ConversationHistoryMetadataCommonModel``).

    Objects with many small, fast-changing sub-fields (``features_usage``, ``rag_usage``,
    ``initiation_trigger``, ``async_metadata``, ``eleven_assistant``) are kept as plain objects.
    """

    start_time_unix_secs: Number | None = None
    accepted_time_unix_secs: Number | None = None
    call_duration_secs: Number | None = None
    cost: Number | None = None
    deletion_settings: DeletionSettings | None = None
    feedback: ConversationFeedback | None = None
    authorization_method: str | None = None  # authorization_header | signed_url | ... (open set)
    charging: Charging | None = None
    phone_call: PhoneCall | None = None
    batch_call: BatchCall | None = None
    termination_reason: str | None = None
    error: ConversationError | None = None
    main_language: str | None = None
    rag_usage: dict[str, Any] | None = None
    text_only: bool | None = None
    features_usage: dict[str, Any] | None = None
    eleven_assistant: dict[str, Any] | None = None
    initiator_id: str | None = None
    conversation_initiation_source: str | None = None  # widget | twilio | sip_trunk | ...
    conversation_initiation_source_version: str | None = None
    timezone: str | None = None
    initiation_trigger: dict[str, Any] | None = None
    async_metadata: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------
# post_call_transcription: analysis and client data
# --------------------------------------------------------------------------------------------


class EvaluationCriteriaResult(ElevenLabsModel):
    """The verdict on one of the agent's evaluation criteria."""

    criteria_id: str | None = None
    result: str | None = None  # success | failure | unknown (open set)
    rationale: str | None = None


class DataCollectionResult(ElevenLabsModel):
    """One value the analysis extracted from the conversation. ``value`` can be any JSON."""

    data_collection_id: str | None = None
    value: Any = None
    json_schema: dict[str, Any] | None = None
    rationale: str | None = None


class Analysis(ElevenLabsModel):
    """Post-call analysis: evaluation criteria, collected data, success verdict and summary."""

    evaluation_criteria_results: dict[str, EvaluationCriteriaResult] | None = None
    data_collection_results: dict[str, DataCollectionResult] | None = None
    call_successful: str | None = None  # success | failure | unknown (open set)
    transcript_summary: str | None = None
    call_summary_title: str | None = None


class ConversationConfigOverride(ElevenLabsModel):
    """Per-conversation overrides the client sent. Sub-objects stay plain objects.

    The webhook example sends ``agent.prompt`` as ``null`` while the spec describes an object,
    and the override sections grow with every new agent feature.
    """

    agent: dict[str, Any] | None = None
    tts: dict[str, Any] | None = None
    conversation: dict[str, Any] | None = None


class ClientData(ElevenLabsModel):
    """``conversation_initiation_client_data``: what the client sent when starting the call.

    ``dynamic_variables`` is where integrations usually put their own ids (a CRM user id, a
    lead id), so it is the main way to connect a conversation back to our own records.
    """

    conversation_config_override: ConversationConfigOverride | None = None
    custom_llm_extra_body: dict[str, Any] | None = None
    user_id: str | None = None
    source_info: dict[str, Any] | None = None
    dynamic_variables: dict[str, Any] | None = None


class ConversationData(ElevenLabsModel):
    """``data`` of ``post_call_transcription``: the "Get conversation details" model.

    The same model serves the conversations API, which is used to backfill events that never
    arrived. Only ``agent_id`` and ``conversation_id`` are required.
    """

    agent_id: str
    conversation_id: str
    status: str | None = None  # initiated | in-progress | processing | done | failed (open set)
    user_id: str | None = None
    transcript: list[TranscriptTurn] | None = None
    metadata: ConversationMetadata | None = None
    analysis: Analysis | None = None
    conversation_initiation_client_data: ClientData | None = None
    has_audio: bool | None = None
    has_user_audio: bool | None = None
    has_response_audio: bool | None = None
    branch_id: str | None = None
    version_id: str | None = None

    @property
    def dynamic_variables(self) -> dict[str, Any]:
        """``conversation_initiation_client_data.dynamic_variables``, or ``{}`` when absent."""
        client = self.conversation_initiation_client_data
        if client is None or client.dynamic_variables is None:
            return {}
        return client.dynamic_variables

    @property
    def call_successful(self) -> str | None:
        """``analysis.call_successful`` or ``None`` when there is no analysis."""
        return self.analysis.call_successful if self.analysis else None

    @property
    def transcript_summary(self) -> str | None:
        """``analysis.transcript_summary`` or ``None`` when there is no analysis."""
        return self.analysis.transcript_summary if self.analysis else None

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Every tool call of the conversation, in transcript order."""
        return [call for turn in self.transcript or [] for call in turn.tool_calls or []]


class PostCallTranscription(WebhookEnvelope):
    """``post_call_transcription``: the full conversation after the call and its analysis.

    The only event type ElevenLabs can retry, so the same payload may arrive more than once.
    """

    data: ConversationData


# --------------------------------------------------------------------------------------------
# post_call_audio
# --------------------------------------------------------------------------------------------


class AudioData(ElevenLabsModel):
    """``data`` of ``post_call_audio``: ids plus the whole call as base64 MP3.

    ``full_audio`` is optional on purpose: for a big (spooled) body the source builds this model
    from the small fields only, and the audio handler decodes the MP3 straight from the stored
    body into the blob store, so nothing holds megabytes of base64 in memory. It is left out of
    ``repr`` to keep logs short.
    """

    agent_id: str
    conversation_id: str
    full_audio: str | None = Field(default=None, repr=False)

    def decode_audio(self) -> bytes | None:
        """The MP3 bytes of ``full_audio``, or ``None`` when the audio is not inline.

        Raises ``ValueError`` when ``full_audio`` is present but is not valid base64.
        """
        if self.full_audio is None:
            return None
        try:
            return base64.b64decode(self.full_audio, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"full_audio is not valid base64: {exc}") from exc


class PostCallAudio(WebhookEnvelope):
    """``post_call_audio``: the call's audio, sent separately (and chunked) from the transcript."""

    data: AudioData


# --------------------------------------------------------------------------------------------
# call_initiation_failure
# --------------------------------------------------------------------------------------------


class SipFailureBody(ElevenLabsModel):
    """Why a SIP-trunk call could not be placed. The first three fields are documented required."""

    sip_status_code: int
    error_reason: str
    call_sid: str
    twirp_code: str | None = None
    sip_status: str | None = None


class SipFailureMetadata(ElevenLabsModel):
    """Failure metadata for calls placed through a SIP trunk (``metadata.type == "sip"``)."""

    type: Literal["sip"]
    body: SipFailureBody


class TwilioStatusCallback(ElevenLabsModel):
    """Twilio's StatusCallback form as ElevenLabs forwards it: every value is a string.

    The commonly used parameters are listed; the geographic ones (``FromCity``, ``ToCountry``,
    ``CallerZip``, ...) and anything Twilio adds later are kept as extra fields.
    """

    CallSid: str | None = None
    AccountSid: str | None = None
    CallStatus: str | None = None  # queued | ringing | busy | no-answer | failed | ...
    SipResponseCode: str | None = None
    From: str | None = None
    To: str | None = None
    Caller: str | None = None
    Called: str | None = None
    Direction: str | None = None
    Duration: str | None = None
    CallDuration: str | None = None
    Timestamp: str | None = None
    CallbackSource: str | None = None
    SequenceNumber: str | None = None
    ApiVersion: str | None = None
    ParentCallSid: str | None = None
    ForwardedFrom: str | None = None
    CallerName: str | None = None


class TwilioFailureMetadata(ElevenLabsModel):
    """Failure metadata for calls placed through Twilio (``metadata.type == "twilio"``)."""

    type: Literal["twilio"]
    body: TwilioStatusCallback


class UnknownFailureMetadata(ElevenLabsModel):
    """Failure metadata from a provider this module does not know (or without a ``type``).

    Exists so that a new telephony provider produces a parsed, storable event instead of a
    validation error.
    """

    type: str | None = None
    body: dict[str, Any] | None = None


def _failure_metadata_tag(value: Any) -> str:
    """Pick the metadata model from ``type``; anything but sip/twilio falls back to unknown."""
    provider = value.get("type") if isinstance(value, Mapping) else getattr(value, "type", None)
    return provider if provider in ("sip", "twilio") else "unknown"


FailureMetadata = Annotated[
    Annotated[SipFailureMetadata, Tag("sip")]
    | Annotated[TwilioFailureMetadata, Tag("twilio")]
    | Annotated[UnknownFailureMetadata, Tag("unknown")],
    Discriminator(_failure_metadata_tag),
]
"""``call_initiation_failure`` metadata, chosen by ``metadata.type`` with an open fallback."""


class CallInitiationFailureData(ElevenLabsModel):
    """``data`` of ``call_initiation_failure``."""

    agent_id: str
    conversation_id: str
    failure_reason: str | None = None  # busy | no-answer | unknown (open set)
    metadata: FailureMetadata | None = None


class CallInitiationFailure(WebhookEnvelope):
    """``call_initiation_failure``: an outbound call could not be connected.

    The properties give handlers the provider details without checking the metadata variant;
    each is ``None`` when it does not apply to this event's provider.
    """

    data: CallInitiationFailureData

    @property
    def provider_type(self) -> str | None:
        """``metadata.type`` as sent (``sip``, ``twilio`` or a new provider), else ``None``."""
        metadata = self.data.metadata
        return metadata.type if metadata is not None else None

    @property
    def _sip_body(self) -> SipFailureBody | None:
        metadata = self.data.metadata
        return metadata.body if isinstance(metadata, SipFailureMetadata) else None

    @property
    def _twilio_body(self) -> TwilioStatusCallback | None:
        metadata = self.data.metadata
        return metadata.body if isinstance(metadata, TwilioFailureMetadata) else None

    @property
    def sip_status_code(self) -> int | None:
        """The SIP response code (e.g. 486 for busy) of a SIP-trunk failure."""
        body = self._sip_body
        return body.sip_status_code if body else None

    @property
    def sip_reason(self) -> str | None:
        """The SIP reason phrase (``sip_status``, e.g. "Busy here"), else ``error_reason``."""
        body = self._sip_body
        if body is None:
            return None
        return body.sip_status or body.error_reason

    @property
    def twilio_call_sid(self) -> str | None:
        """Twilio's ``CallSid`` of a Twilio failure."""
        body = self._twilio_body
        return body.CallSid if body else None

    @property
    def twilio_call_status(self) -> str | None:
        """Twilio's ``CallStatus`` (e.g. ``busy``, ``no-answer``) of a Twilio failure."""
        body = self._twilio_body
        return body.CallStatus if body else None


# --------------------------------------------------------------------------------------------
# Workspace voice events
# --------------------------------------------------------------------------------------------


class VoiceEventData(ElevenLabsModel):
    """``data`` of the shared-voice workspace events. The schema is unpublished: nothing is
    required and everything that arrives is kept; ``voice_id`` is the one field we expect."""

    voice_id: str | None = None


class VoiceRemovalNotice(WebhookEnvelope):
    """``voice_removal_notice``: a shared voice is scheduled to be removed."""

    data: VoiceEventData | None = None


class VoiceRemovalNoticeWithdrawn(WebhookEnvelope):
    """``voice_removal_notice_withdrawn``: a shared voice is no longer scheduled for removal."""

    data: VoiceEventData | None = None


class VoiceRemoved(WebhookEnvelope):
    """``voice_removed``: a shared voice has been removed and can no longer be used."""

    data: VoiceEventData | None = None


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------

#: Model for each known event type; anything else is parsed as a plain :class:`WebhookEnvelope`.
EVENT_MODELS: dict[str, type[WebhookEnvelope]] = {
    POST_CALL_TRANSCRIPTION: PostCallTranscription,
    POST_CALL_AUDIO: PostCallAudio,
    CALL_INITIATION_FAILURE: CallInitiationFailure,
    VOICE_REMOVAL_NOTICE: VoiceRemovalNotice,
    VOICE_REMOVAL_NOTICE_WITHDRAWN: VoiceRemovalNoticeWithdrawn,
    VOICE_REMOVED: VoiceRemoved,
}


def parse_event(payload: Mapping[str, Any]) -> WebhookEnvelope:
    """Parse a decoded webhook body into the model for its ``type``.

    A known type gets its typed model (a subclass of :class:`WebhookEnvelope`); an unknown type
    gets the generic envelope with ``data`` untouched, because new event types must be stored
    and reachable rather than rejected.

    Raises ``pydantic.ValidationError`` when a known type has broken data (for example no
    ``conversation_id``) or the payload is not an envelope at all (not an object, no string
    ``type``), so the caller can record a failed job with pydantic's precise reason.
    """
    event_type = payload.get("type") if isinstance(payload, Mapping) else None
    model = EVENT_MODELS.get(event_type, WebhookEnvelope) if isinstance(event_type, str) else None
    return (model or WebhookEnvelope).model_validate(payload)
