"""Tests for receiver.sources.elevenlabs.models.

The payloads below are the examples from the ElevenLabs webhook docs
(/work/shared/reference/elevenlabs-webhooks.md), plus payloads shaped after the "Get conversation
details" OpenAPI for the parts the docs' examples do not show (tool calls, phone calls, analysis
results). Files in fixtures/elevenlabs/*.json are parsed too when they exist.
"""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from receiver.sources.elevenlabs.models import (
    CALL_INITIATION_FAILURE,
    EVENT_MODELS,
    POST_CALL_AUDIO,
    POST_CALL_TRANSCRIPTION,
    VOICE_EVENT_TYPES,
    VOICE_REMOVAL_NOTICE,
    VOICE_REMOVAL_NOTICE_WITHDRAWN,
    VOICE_REMOVED,
    AudioData,
    CallInitiationFailure,
    ConversationData,
    PhoneCall,
    PostCallAudio,
    PostCallTranscription,
    SipFailureMetadata,
    ToolCall,
    ToolResult,
    TwilioFailureMetadata,
    TwilioStatusCallback,
    UnknownFailureMetadata,
    VoiceEventData,
    VoiceRemovalNotice,
    VoiceRemovalNoticeWithdrawn,
    VoiceRemoved,
    WebhookEnvelope,
    parse_event,
)

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "elevenlabs"

# ---------------------------------------------------------------------------------------------
# Documented example payloads (copied from elevenlabs-webhooks.md)
# ---------------------------------------------------------------------------------------------

_SUMMARY = (
    "The conversation begins with the agent asking how Angelo is, but Angelo redirects the "
    "conversation by requesting a fun fact about 11 Labs. The agent acknowledges they don't have "
    "specific fun facts about Eleven Labs but offers to provide general information about the "
    "company. They briefly describe Eleven Labs as an AI voice technology platform specializing in "
    "voice cloning and text-to-speech technology. The conversation is brief and informational, "
    "with the agent adapting to the user's request despite not having the exact information asked "
    "for."
)

DOC_TRANSCRIPTION: dict[str, Any] = {
    "type": "post_call_transcription",
    "event_timestamp": 1739537297,
    "data": {
        "agent_id": "xyz",
        "conversation_id": "abc",
        "status": "done",
        "user_id": "user123",
        "transcript": [
            {
                "role": "agent",
                "message": "Hey there angelo. How are you?",
                "tool_calls": None,
                "tool_results": None,
                "feedback": None,
                "time_in_call_secs": 0,
                "conversation_turn_metrics": None,
            },
            {
                "role": "user",
                "message": "Hey, can you tell me, like, a fun fact about 11 Labs?",
                "tool_calls": None,
                "tool_results": None,
                "feedback": None,
                "time_in_call_secs": 2,
                "conversation_turn_metrics": None,
            },
            {
                "role": "agent",
                "message": (
                    "I do not have access to fun facts about Eleven Labs. However, I can share "
                    "some general information about the company. Eleven Labs is an AI voice "
                    "technology platform that specializes in voice cloning and text-to-speech..."
                ),
                "tool_calls": None,
                "tool_results": None,
                "feedback": None,
                "time_in_call_secs": 9,
                "conversation_turn_metrics": {
                    "convai_llm_service_ttfb": {"elapsed_time": 0.3704247010173276},
                    "convai_llm_service_ttf_sentence": {"elapsed_time": 0.5551181449554861},
                },
            },
        ],
        "metadata": {
            "start_time_unix_secs": 1739537297,
            "call_duration_secs": 22,
            "cost": 296,
            "deletion_settings": {
                "deletion_time_unix_secs": 1802609320,
                "deleted_logs_at_time_unix_secs": None,
                "deleted_audio_at_time_unix_secs": None,
                "deleted_transcript_at_time_unix_secs": None,
                "delete_transcript_and_pii": True,
                "delete_audio": True,
            },
            "feedback": {"overall_score": None, "likes": 0, "dislikes": 0},
            "authorization_method": "authorization_header",
            "charging": {"dev_discount": True},
            "termination_reason": "",
        },
        "analysis": {
            "evaluation_criteria_results": {},
            "data_collection_results": {},
            "call_successful": "success",
            "transcript_summary": _SUMMARY,
        },
        "conversation_initiation_client_data": {
            "conversation_config_override": {
                "agent": {"prompt": None, "first_message": None, "language": "en"},
                "tts": {"voice_id": None},
            },
            "custom_llm_extra_body": {},
            "dynamic_variables": {"user_name": "angelo"},
        },
    },
}


def _without_user_id(payload: dict[str, Any]) -> dict[str, Any]:
    """The "Webhooks" overview page's example: the same payload without ``user_id``."""
    result = copy.deepcopy(payload)
    del result["data"]["user_id"]
    return result


DOC_TRANSCRIPTION_OVERVIEW = _without_user_id(DOC_TRANSCRIPTION)

DOC_AUDIO: dict[str, Any] = {
    "type": "post_call_audio",
    "event_timestamp": 1739537319,
    "data": {
        "agent_id": "xyz",
        "conversation_id": "abc",
        "full_audio": "SUQzBAAAAAAA...base64_encoded_mp3_data...AAAAAAAAAA==",
    },
}

DOC_FAILURE_TWILIO: dict[str, Any] = {
    "type": "call_initiation_failure",
    "event_timestamp": 1759931652,
    "data": {
        "agent_id": "xyz",
        "conversation_id": "abc",
        "failure_reason": "busy",
        "metadata": {
            "type": "twilio",
            "body": {
                "Called": "+441111111111",
                "ToState": "",
                "CallerCountry": "US",
                "Direction": "outbound-api",
                "Timestamp": "Wed, 08 Oct 2025 13:54:12 +0000",
                "CallbackSource": "call-progress-events",
                "SipResponseCode": "487",
                "CallerState": "WA",
                "ToZip": "",
                "SequenceNumber": "2",
                "CallSid": "CA8367245817625617832576245724",
                "To": "+441111111111",
                "CallerZip": "98631",
                "ToCountry": "GB",
                "CalledZip": "",
                "ApiVersion": "2010-04-01",
                "CalledCity": "",
                "CallStatus": "busy",
                "Duration": "0",
                "From": "+11111111111",
                "CallDuration": "0",
                "AccountSid": "AC37682153267845716245762454a",
                "CalledCountry": "GB",
                "CallerCity": "RAYMOND",
                "ToCity": "",
                "FromCountry": "US",
                "Caller": "+11111111111",
                "FromCity": "RAYMOND",
                "CalledState": "",
                "FromZip": "12345",
                "FromState": "WA",
            },
        },
    },
}

DOC_FAILURE_SIP: dict[str, Any] = {
    "type": "call_initiation_failure",
    "event_timestamp": 1759931652,
    "data": {
        "agent_id": "xyz",
        "conversation_id": "abc",
        "failure_reason": "busy",
        "metadata": {
            "type": "sip",
            "body": {
                "sip_status_code": 486,
                "error_reason": "INVITE failed: sip status: 486: Busy here (SIP 486)",
                "call_sid": "d8e7f6a5-b4c3-4d5e-8f9a-0b1c2d3e4f5a",
                "sip_status": "Busy here",
                "twirp_code": "unavailable",
            },
        },
    },
}

# ---------------------------------------------------------------------------------------------
# A transcription shaped after the OpenAPI model, with the parts the doc examples lack
# ---------------------------------------------------------------------------------------------

RICH_TRANSCRIPTION: dict[str, Any] = {
    "type": "post_call_transcription",
    "event_timestamp": 1760000000,
    "data": {
        "agent_id": "agent_1",
        "conversation_id": "conv_1",
        "status": "done",
        "user_id": None,
        "transcript": [
            {
                "role": "agent",
                "agent_metadata": {"agent_id": "agent_1", "workflow_node_id": None},
                "message": "Let me look that up.",
                "multivoice_message": None,
                "tool_calls": [
                    {
                        "type": "webhook",
                        "request_id": "req_1",
                        "tool_name": "lookup_order",
                        "params_as_json": '{"order_id": "A-17"}',
                        "tool_has_been_called": True,
                        "tool_details": {
                            "type": "webhook",
                            "method": "GET",
                            "url": "https://example.test/orders/A-17",
                            "headers": {},
                            "path_params": {"order_id": "A-17"},
                            "query_params": {},
                            "body": None,
                        },
                    },
                    {
                        "type": "system",
                        "request_id": "req_2",
                        "tool_name": "end_call",
                        "params_as_json": "{}",
                        "tool_has_been_called": True,
                        "tool_details": None,
                    },
                ],
                "tool_results": [
                    {
                        "request_id": "req_1",
                        "tool_name": "lookup_order",
                        "result_value": '{"status": "shipped"}',
                        "is_error": False,
                        "tool_has_been_called": True,
                        "tool_latency_secs": 0.42,
                        "dynamic_variable_updates": [
                            {
                                "variable_name": "order_status",
                                "old_value": None,
                                "new_value": "shipped",
                                "updated_at": 1760000003.5,
                                "tool_name": "lookup_order",
                                "tool_request_id": "req_1",
                            }
                        ],
                        "type": "webhook",
                    },
                    {
                        "request_id": "req_2",
                        "tool_name": "end_call",
                        "result_value": "",
                        "is_error": False,
                        "tool_has_been_called": True,
                        "type": "system",
                        "result": {
                            "result_type": "end_call_success",
                            "status": "success",
                            "reason": "user said goodbye",
                            "message": None,
                        },
                    },
                ],
                "feedback": {"score": "like", "time_in_call_secs": 4},
                "llm_override": None,
                "time_in_call_secs": 3,
                "conversation_turn_metrics": {
                    "metrics": {"convai_llm_service_ttfb": {"elapsed_time": 0.2}}
                },
                "rag_retrieval_info": None,
                "llm_usage": {
                    "model_usage": {"gpt-4o-mini": {"input": {"tokens": 120, "price": 0.0001}}}
                },
                "interrupted": False,
                "original_message": None,
                "source_medium": "audio",
            },
            {"role": "user", "message": "Thanks!", "time_in_call_secs": 5.5},
        ],
        "metadata": {
            "start_time_unix_secs": 1759999990,
            "accepted_time_unix_secs": 1759999991,
            "call_duration_secs": 10,
            "cost": 52,
            "phone_call": {
                "direction": "outbound",
                "phone_number_id": "pn_1",
                "agent_number": "+15550000001",
                "external_number": "+15550000002",
                "type": "twilio",
                "stream_sid": "MZ123",
                "call_sid": "CA123",
            },
            "batch_call": {"batch_call_id": "batch_1", "batch_call_recipient_id": "rcpt_1"},
            "termination_reason": "end_call tool was called.",
            "error": None,
            "main_language": "en",
            "text_only": False,
            "features_usage": {"language_detection": {"enabled": False, "used": False}},
            "conversation_initiation_source": "twilio",
            "timezone": "Europe/Berlin",
            "initiation_trigger": {"trigger_type": "default"},
            "async_metadata": None,
            "charging": {
                "dev_discount": False,
                "is_burst": False,
                "tier": "pro",
                "llm_price": 0.0012,
                "llm_charge": 3,
                "call_charge": 49,
                "free_minutes_consumed": 0.0,
                "free_llm_dollars_consumed": 0.0,
            },
        },
        "analysis": {
            "evaluation_criteria_results": {
                "order_resolved": {
                    "criteria_id": "order_resolved",
                    "result": "success",
                    "rationale": "The agent reported the order status.",
                }
            },
            "data_collection_results": {
                "order_id": {
                    "data_collection_id": "order_id",
                    "value": "A-17",
                    "json_schema": {"type": "string", "description": "The order id"},
                    "rationale": "The user gave the order id.",
                },
                "satisfaction": {
                    "data_collection_id": "satisfaction",
                    "value": 4,
                    "json_schema": None,
                    "rationale": "Inferred.",
                },
            },
            "call_successful": "success",
            "transcript_summary": "The user asked about an order.",
            "call_summary_title": "Order status",
        },
        "conversation_initiation_client_data": {
            "conversation_config_override": {
                "tts": {"voice_id": "voice_1", "stability": 0.5, "speed": 1},
                "conversation": {"text_only": False},
                "agent": {
                    "first_message": "Hi!",
                    "language": "en",
                    "prompt": {"prompt": "Be nice"},
                },
            },
            "custom_llm_extra_body": {},
            "user_id": "crm_42",
            "source_info": {"source": "twilio", "version": None},
            "dynamic_variables": {"lead_id": "L-9", "attempt": 2, "vip": True, "note": None},
        },
        "has_audio": True,
        "has_user_audio": True,
        "has_response_audio": True,
    },
}

DOC_PAYLOADS = {
    "transcription": DOC_TRANSCRIPTION,
    "transcription_overview": DOC_TRANSCRIPTION_OVERVIEW,
    "audio": DOC_AUDIO,
    "failure_twilio": DOC_FAILURE_TWILIO,
    "failure_sip": DOC_FAILURE_SIP,
    "rich_transcription": RICH_TRANSCRIPTION,
}


def _dump(event: WebhookEnvelope) -> dict[str, Any]:
    """What a stored event would be written back as: only what arrived, in JSON types."""
    return event.model_dump(mode="json", exclude_unset=True)


def _expected_model(payload: dict[str, Any]) -> type[WebhookEnvelope]:
    return EVENT_MODELS.get(payload.get("type"), WebhookEnvelope)


# ---------------------------------------------------------------------------------------------
# Every documented example parses into the right model and round-trips unchanged
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOC_PAYLOADS))
def test_doc_examples_parse_and_round_trip(name: str) -> None:
    payload = DOC_PAYLOADS[name]
    event = parse_event(payload)
    assert type(event) is _expected_model(payload)
    assert _dump(event) == payload


def _fixture_params() -> list[Any]:
    files = sorted(FIXTURES_DIR.glob("*.json")) if FIXTURES_DIR.is_dir() else []
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no fixtures/elevenlabs yet"))]
    return [pytest.param(path, id=path.name) for path in files]


@pytest.mark.parametrize("path", _fixture_params())
def test_fixture_files_parse_and_round_trip(path: Path) -> None:
    payload = json.loads(path.read_text(encoding="utf-8"))
    if not (isinstance(payload, dict) and "type" in payload):
        pytest.skip(f"{path.name} is not a webhook payload")
    if any(word in path.stem for word in ("invalid", "malformed", "broken")):
        with pytest.raises(ValidationError):
            parse_event(payload)
        return
    event = parse_event(payload)
    assert type(event) is _expected_model(payload)
    assert _dump(event) == payload


# ---------------------------------------------------------------------------------------------
# post_call_transcription
# ---------------------------------------------------------------------------------------------


def test_doc_transcription_fields() -> None:
    event = parse_event(DOC_TRANSCRIPTION)
    assert isinstance(event, PostCallTranscription)
    data = event.data
    assert (data.agent_id, data.conversation_id, data.status, data.user_id) == (
        "xyz",
        "abc",
        "done",
        "user123",
    )
    assert [turn.role for turn in data.transcript or []] == ["agent", "user", "agent"]
    assert data.transcript[2].conversation_turn_metrics == {
        "convai_llm_service_ttfb": {"elapsed_time": 0.3704247010173276},
        "convai_llm_service_ttf_sentence": {"elapsed_time": 0.5551181449554861},
    }
    assert data.metadata is not None
    assert data.metadata.call_duration_secs == 22
    assert data.metadata.deletion_settings.delete_audio is True
    assert data.metadata.feedback.likes == 0
    assert data.metadata.charging.dev_discount is True
    assert data.metadata.termination_reason == ""
    assert data.metadata.phone_call is None
    assert data.analysis.evaluation_criteria_results == {}
    assert data.call_successful == "success"
    assert data.transcript_summary == _SUMMARY
    assert data.dynamic_variables == {"user_name": "angelo"}
    assert data.has_audio is None  # pre-August-2025 payloads do not have it
    assert data.tool_calls == []
    assert event.conversation_id == "abc"
    assert event.event_time == datetime(2025, 2, 14, 12, 48, 17, tzinfo=UTC)


def test_tool_calls_and_results_are_models() -> None:
    event = parse_event(RICH_TRANSCRIPTION)
    assert isinstance(event, PostCallTranscription)
    turn = event.data.transcript[0]

    calls = turn.tool_calls or []
    assert all(isinstance(call, ToolCall) for call in calls)
    assert [call.tool_name for call in calls] == ["lookup_order", "end_call"]
    assert calls[0].params == {"order_id": "A-17"}
    assert calls[0].tool_details is not None
    assert calls[0].tool_details.type == "webhook"
    assert calls[0].tool_details.url == "https://example.test/orders/A-17"
    assert calls[1].tool_details is None
    assert event.data.tool_calls == calls

    results = turn.tool_results or []
    assert all(isinstance(result, ToolResult) for result in results)
    assert results[0].tool_latency_secs == 0.42
    assert results[0].dynamic_variable_updates[0].new_value == "shipped"
    assert results[0].result_type is None
    assert results[1].result_type == "end_call_success"

    assert turn.feedback.score == "like"
    assert turn.agent_metadata.agent_id == "agent_1"
    assert turn.source_medium == "audio"
    assert event.data.transcript[1].time_in_call_secs == 5.5  # float accepted for an "integer"


def test_metadata_analysis_and_client_data() -> None:
    data = parse_event(RICH_TRANSCRIPTION).data
    assert isinstance(data, ConversationData)
    phone = data.metadata.phone_call
    assert isinstance(phone, PhoneCall)
    assert (phone.type, phone.call_sid, phone.stream_sid) == ("twilio", "CA123", "MZ123")
    assert data.metadata.batch_call.batch_call_id == "batch_1"
    assert data.metadata.charging.call_charge == 49
    criteria = data.analysis.evaluation_criteria_results["order_resolved"]
    assert criteria.result == "success"
    collected = data.analysis.data_collection_results
    assert collected["order_id"].value == "A-17"
    assert collected["satisfaction"].value == 4
    assert data.dynamic_variables == {"lead_id": "L-9", "attempt": 2, "vip": True, "note": None}
    client = data.conversation_initiation_client_data
    assert client.conversation_config_override.tts["voice_id"] == "voice_1"
    assert (data.has_audio, data.has_user_audio, data.has_response_audio) == (True, True, True)


def test_sip_trunking_phone_call_and_unknown_provider() -> None:
    for phone_call in (
        {
            "direction": "inbound",
            "phone_number_id": "pn_2",
            "agent_number": "+15550000003",
            "external_number": "+15550000004",
            "type": "sip_trunking",
            "call_sid": "sip-abc",
        },
        {"type": "future_carrier", "carrier_ref": "x-1"},
    ):
        payload = copy.deepcopy(DOC_TRANSCRIPTION)
        payload["data"]["metadata"]["phone_call"] = phone_call
        event = parse_event(payload)
        assert event.data.metadata.phone_call.type == phone_call["type"]
        assert _dump(event) == payload


def test_minimal_transcription() -> None:
    """Everything but the ids may be missing: no analysis, client data, metadata or transcript."""
    payload = {
        "type": POST_CALL_TRANSCRIPTION,
        "data": {"agent_id": "a", "conversation_id": "c"},
    }
    event = parse_event(payload)
    assert isinstance(event, PostCallTranscription)
    data = event.data
    assert data.analysis is None
    assert data.metadata is None
    assert data.transcript is None
    assert data.conversation_initiation_client_data is None
    assert data.dynamic_variables == {}
    assert data.call_successful is None
    assert data.transcript_summary is None
    assert data.tool_calls == []
    assert event.event_timestamp is None
    assert event.event_time is None
    assert _dump(event) == payload


def test_explicit_nulls_for_optional_objects() -> None:
    payload = copy.deepcopy(DOC_TRANSCRIPTION)
    payload["data"]["analysis"] = None
    payload["data"]["conversation_initiation_client_data"] = {"dynamic_variables": None}
    payload["data"]["metadata"].update(
        {"phone_call": None, "batch_call": None, "deletion_settings": None, "charging": None}
    )
    payload["data"]["transcript"].append({"role": "user"})
    event = parse_event(payload)
    assert event.data.analysis is None
    assert event.data.dynamic_variables == {}
    assert _dump(event) == payload


def test_open_enum_values_do_not_fail() -> None:
    payload = copy.deepcopy(DOC_TRANSCRIPTION)
    payload["data"]["status"] = "archived"
    payload["data"]["transcript"][0]["role"] = "tool"
    payload["data"]["transcript"][0]["source_medium"] = "video"
    payload["data"]["analysis"]["call_successful"] = "partial"
    payload["data"]["metadata"]["authorization_method"] = "quantum_handshake"
    event = parse_event(payload)
    assert event.data.status == "archived"
    assert event.data.call_successful == "partial"
    assert _dump(event) == payload


def test_numbers_accept_int_and_float() -> None:
    payload = copy.deepcopy(DOC_TRANSCRIPTION)
    payload["event_timestamp"] = 1739537297.25
    payload["data"]["metadata"]["call_duration_secs"] = 22.75
    payload["data"]["metadata"]["cost"] = 296.5
    payload["data"]["transcript"][1]["time_in_call_secs"] = 2.4
    event = parse_event(payload)
    assert event.data.metadata.call_duration_secs == 22.75
    assert isinstance(parse_event(DOC_TRANSCRIPTION).data.metadata.cost, int)
    assert _dump(event) == payload


def test_event_timestamp_as_string() -> None:
    payload = {**DOC_AUDIO, "event_timestamp": "1739537319"}
    event = parse_event(payload)
    assert event.event_timestamp == "1739537319"  # kept as sent: it is part of the dedup key
    assert event.event_time == datetime.fromtimestamp(1739537319, tz=UTC)
    iso = parse_event({**DOC_AUDIO, "event_timestamp": "2025-02-14T12:48:39Z"})
    assert iso.event_time == datetime(2025, 2, 14, 12, 48, 39, tzinfo=UTC)
    assert parse_event({**DOC_AUDIO, "event_timestamp": "yesterday"}).event_time is None


# ---------------------------------------------------------------------------------------------
# Unknown fields are kept at every level
# ---------------------------------------------------------------------------------------------

_EXTRA_VALUE = {"nested": [1, 2.5, "s", None, True], "deep": {"k": "v"}}


def _add_extra_everywhere(value: Any) -> Any:
    """Add ``x_future`` to every object of a payload, at every depth."""
    if isinstance(value, dict):
        result = {key: _add_extra_everywhere(item) for key, item in value.items()}
        result["x_future"] = copy.deepcopy(_EXTRA_VALUE)
        return result
    if isinstance(value, list):
        return [_add_extra_everywhere(item) for item in value]
    return value


@pytest.mark.parametrize("name", sorted(DOC_PAYLOADS))
def test_unknown_fields_kept_at_every_level(name: str) -> None:
    payload = _add_extra_everywhere(DOC_PAYLOADS[name])
    event = parse_event(payload)
    assert type(event) is _expected_model(payload)
    assert _dump(event) == payload
    assert event.model_extra == {"x_future": _EXTRA_VALUE}
    assert event.data.model_extra["x_future"] == _EXTRA_VALUE


def test_unknown_fields_reachable_on_nested_models() -> None:
    event = parse_event(_add_extra_everywhere(RICH_TRANSCRIPTION))
    data = event.data
    turn = data.transcript[0]
    nested_models = [
        turn,
        turn.agent_metadata,
        turn.tool_calls[0],
        turn.tool_calls[0].tool_details,
        turn.tool_results[0],
        turn.tool_results[0].dynamic_variable_updates[0],
        turn.feedback,
        data.metadata,
        data.metadata.phone_call,
        data.metadata.batch_call,
        data.metadata.charging,
        data.analysis,
        data.analysis.evaluation_criteria_results["order_resolved"],
        data.analysis.data_collection_results["order_id"],
        data.conversation_initiation_client_data,
        data.conversation_initiation_client_data.conversation_config_override,
    ]
    for model in nested_models:
        assert model.model_extra["x_future"] == _EXTRA_VALUE, type(model).__name__
    assert data.transcript[0].tool_results[1].result["x_future"] == _EXTRA_VALUE

    failure = parse_event(_add_extra_everywhere(DOC_FAILURE_SIP))
    assert failure.data.metadata.model_extra["x_future"] == _EXTRA_VALUE
    assert failure.data.metadata.body.model_extra["x_future"] == _EXTRA_VALUE


def test_new_documented_fields_are_kept_as_extras() -> None:
    payload = copy.deepcopy(DOC_TRANSCRIPTION)
    payload["data"].update({"branch_id": "br_1", "version_id": "v_7", "summary_language": "en"})
    event = parse_event(payload)
    assert event.data.branch_id == "br_1"
    assert event.data.model_extra == {"summary_language": "en"}
    assert _dump(event) == payload


# ---------------------------------------------------------------------------------------------
# post_call_audio
# ---------------------------------------------------------------------------------------------


def test_audio_doc_example() -> None:
    event = parse_event(DOC_AUDIO)
    assert isinstance(event, PostCallAudio)
    assert event.data.full_audio == DOC_AUDIO["data"]["full_audio"]
    assert "full_audio" not in repr(event)  # megabytes of base64 must not end up in logs
    with pytest.raises(ValueError, match="base64"):
        event.data.decode_audio()  # the docs' placeholder is not real base64


def test_audio_model_without_full_audio() -> None:
    """The receiver streams big bodies and builds the model from the small fields alone."""
    data = AudioData(agent_id="xyz", conversation_id="abc")
    assert data.full_audio is None
    assert data.decode_audio() is None
    payload = {
        "type": POST_CALL_AUDIO,
        "event_timestamp": 1739537319,
        "data": {"agent_id": "xyz", "conversation_id": "abc"},
    }
    event = parse_event(payload)
    assert isinstance(event, PostCallAudio)
    assert event.data.full_audio is None
    assert _dump(event) == payload


def test_audio_decode() -> None:
    mp3 = b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00"
    data = AudioData(agent_id="a", conversation_id="c", full_audio=base64.b64encode(mp3).decode())
    assert data.decode_audio() == mp3


# ---------------------------------------------------------------------------------------------
# call_initiation_failure
# ---------------------------------------------------------------------------------------------


def test_twilio_failure() -> None:
    event = parse_event(DOC_FAILURE_TWILIO)
    assert isinstance(event, CallInitiationFailure)
    metadata = event.data.metadata
    assert isinstance(metadata, TwilioFailureMetadata)
    assert isinstance(metadata.body, TwilioStatusCallback)
    assert metadata.body.SipResponseCode == "487"
    assert metadata.body.From == "+11111111111"
    assert metadata.body.model_extra["CallerCity"] == "RAYMOND"
    assert event.data.failure_reason == "busy"
    assert event.provider_type == "twilio"
    assert event.twilio_call_sid == "CA8367245817625617832576245724"
    assert event.twilio_call_status == "busy"
    assert event.sip_status_code is None
    assert event.sip_reason is None


def test_twilio_body_values_may_be_numbers() -> None:
    payload = copy.deepcopy(DOC_FAILURE_TWILIO)
    payload["data"]["metadata"]["body"]["SipResponseCode"] = 487
    event = parse_event(payload)
    assert event.data.metadata.body.SipResponseCode == "487"


def test_sip_failure() -> None:
    event = parse_event(DOC_FAILURE_SIP)
    assert isinstance(event, CallInitiationFailure)
    metadata = event.data.metadata
    assert isinstance(metadata, SipFailureMetadata)
    assert metadata.body.twirp_code == "unavailable"
    assert event.provider_type == "sip"
    assert event.sip_status_code == 486
    assert event.sip_reason == "Busy here"
    assert event.twilio_call_sid is None
    assert event.twilio_call_status is None


def test_sip_failure_optional_fields_missing() -> None:
    payload = copy.deepcopy(DOC_FAILURE_SIP)
    del payload["data"]["metadata"]["body"]["sip_status"]
    del payload["data"]["metadata"]["body"]["twirp_code"]
    event = parse_event(payload)
    assert event.sip_reason == "INVITE failed: sip status: 486: Busy here (SIP 486)"
    assert _dump(event) == payload


@pytest.mark.parametrize(
    "metadata",
    [
        {"type": "vonage", "body": {"uuid": "v-1", "status": "busy"}},
        {"type": "telnyx"},
        {"type": "sip_v2", "body": None},
        {"body": {"something": 1}},
    ],
)
def test_unknown_failure_provider_falls_back(metadata: dict[str, Any]) -> None:
    payload = copy.deepcopy(DOC_FAILURE_SIP)
    payload["data"]["metadata"] = metadata
    event = parse_event(payload)
    assert isinstance(event, CallInitiationFailure)
    assert isinstance(event.data.metadata, UnknownFailureMetadata)
    assert event.provider_type == metadata.get("type")
    assert event.sip_status_code is None
    assert event.twilio_call_sid is None
    assert _dump(event) == payload


@pytest.mark.parametrize("metadata", ["absent", None])
def test_failure_without_metadata(metadata: Any) -> None:
    payload = copy.deepcopy(DOC_FAILURE_SIP)
    if metadata == "absent":
        del payload["data"]["metadata"]
    else:
        payload["data"]["metadata"] = metadata
    event = parse_event(payload)
    assert event.data.metadata is None
    assert event.provider_type is None
    assert event.sip_status_code is None
    assert event.sip_reason is None
    assert event.twilio_call_status is None
    assert _dump(event) == payload


def test_failure_reason_is_open() -> None:
    payload = copy.deepcopy(DOC_FAILURE_TWILIO)
    payload["data"]["failure_reason"] = "carrier-blocked"
    assert parse_event(payload).data.failure_reason == "carrier-blocked"


def test_sip_body_missing_documented_required_field_raises() -> None:
    payload = copy.deepcopy(DOC_FAILURE_SIP)
    del payload["data"]["metadata"]["body"]["sip_status_code"]
    with pytest.raises(ValidationError, match="sip_status_code"):
        parse_event(payload)


# ---------------------------------------------------------------------------------------------
# Workspace voice events and unknown events
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "model"),
    [
        (VOICE_REMOVAL_NOTICE, VoiceRemovalNotice),
        (VOICE_REMOVAL_NOTICE_WITHDRAWN, VoiceRemovalNoticeWithdrawn),
        (VOICE_REMOVED, VoiceRemoved),
    ],
)
def test_voice_events(event_type: str, model: type[WebhookEnvelope]) -> None:
    assert event_type in VOICE_EVENT_TYPES
    payload = {
        "type": event_type,
        "event_timestamp": 1760000000,
        "data": {"voice_id": "v_1", "voice_name": "Rachel", "removal_time_unix_secs": 1761000000},
    }
    event = parse_event(payload)
    assert type(event) is model
    assert isinstance(event.data, VoiceEventData)
    assert event.data.voice_id == "v_1"
    assert event.data.model_extra["voice_name"] == "Rachel"
    assert _dump(event) == payload

    for empty in ({"type": event_type, "data": {}}, {"type": event_type}):
        parsed = parse_event(empty)
        assert type(parsed) is model
        assert _dump(parsed) == empty


def test_unknown_event_type_gives_generic_envelope() -> None:
    payload = {
        "type": "unredacted_transcript",
        "event_timestamp": 1760000000,
        "data": {"conversation_id": "c1", "anything": [1, {"x": None}]},
        "delivery_id": "d-1",
    }
    event = parse_event(payload)
    assert type(event) is WebhookEnvelope
    assert event.type == "unredacted_transcript"
    assert event.data == payload["data"]
    assert event.conversation_id == "c1"
    assert event.model_extra == {"delivery_id": "d-1"}
    assert _dump(event) == payload


def test_unknown_event_type_without_data() -> None:
    event = parse_event({"type": "something_new"})
    assert type(event) is WebhookEnvelope
    assert event.data is None
    assert event.conversation_id is None


def test_event_models_mapping() -> None:
    assert dict(EVENT_MODELS) == {
        POST_CALL_TRANSCRIPTION: PostCallTranscription,
        POST_CALL_AUDIO: PostCallAudio,
        CALL_INITIATION_FAILURE: CallInitiationFailure,
        VOICE_REMOVAL_NOTICE: VoiceRemovalNotice,
        VOICE_REMOVAL_NOTICE_WITHDRAWN: VoiceRemovalNoticeWithdrawn,
        VOICE_REMOVED: VoiceRemoved,
    }
    assert all(issubclass(model, WebhookEnvelope) for model in EVENT_MODELS.values())


# ---------------------------------------------------------------------------------------------
# Broken data on known types raises ValidationError
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [DOC_TRANSCRIPTION, DOC_AUDIO, DOC_FAILURE_SIP])
@pytest.mark.parametrize("missing", ["conversation_id", "agent_id"])
def test_known_type_missing_id_raises(payload: dict[str, Any], missing: str) -> None:
    broken = copy.deepcopy(payload)
    del broken["data"][missing]
    with pytest.raises(ValidationError, match=missing):
        parse_event(broken)


@pytest.mark.parametrize("data", ["absent", None, "not an object", []])
def test_known_type_without_usable_data_raises(data: Any) -> None:
    payload: dict[str, Any] = {"type": POST_CALL_TRANSCRIPTION, "event_timestamp": 1}
    if data != "absent":
        payload["data"] = data
    with pytest.raises(ValidationError):
        parse_event(payload)


@pytest.mark.parametrize("payload", [{}, {"type": None}, {"type": ["x"]}, {"data": {}}, [], "x"])
def test_not_an_envelope_raises(payload: Any) -> None:
    with pytest.raises(ValidationError):
        parse_event(payload)


def test_wrongly_typed_nested_value_raises() -> None:
    payload = copy.deepcopy(DOC_TRANSCRIPTION)
    payload["data"]["transcript"] = {"role": "agent"}
    with pytest.raises(ValidationError, match="transcript"):
        parse_event(payload)


# ---------------------------------------------------------------------------------------------
# Property-based: whatever arrives under unknown names comes back unchanged
# ---------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_extra_keys = st.dictionaries(
    st.from_regex(r"x_[a-z0-9_]{1,12}", fullmatch=True), _json, max_size=4
)


@given(
    event_type=st.text(min_size=1, max_size=30).filter(lambda t: t not in EVENT_MODELS),
    data=_json,
)
def test_any_unknown_event_type_is_kept(event_type: str, data: Any) -> None:
    payload = {"type": event_type, "event_timestamp": 1760000000, "data": data}
    event = parse_event(payload)
    assert type(event) is WebhookEnvelope
    assert _dump(event) == payload


@given(data_extra=_extra_keys, turn_extra=_extra_keys, metadata_extra=_extra_keys)
def test_extras_round_trip_in_transcription(
    data_extra: dict[str, Any], turn_extra: dict[str, Any], metadata_extra: dict[str, Any]
) -> None:
    payload = copy.deepcopy(DOC_TRANSCRIPTION)
    payload["data"].update(data_extra)
    payload["data"]["transcript"][0].update(turn_extra)
    payload["data"]["metadata"].update(metadata_extra)
    event = parse_event(payload)
    assert _dump(event) == payload


@given(provider=st.text(max_size=20).filter(lambda t: t not in ("sip", "twilio")), body=_json)
def test_any_unknown_failure_provider_falls_back(provider: str, body: Any) -> None:
    payload = copy.deepcopy(DOC_FAILURE_TWILIO)
    body = body if isinstance(body, dict) else {"value": body}
    payload["data"]["metadata"] = {"type": provider, "body": body}
    event = parse_event(payload)
    assert isinstance(event.data.metadata, UnknownFailureMetadata)
    assert event.provider_type == provider
    assert _dump(event) == payload
