"""Issue 11, item 6: ElevenLabs text-to-dialogue with timestamps, against a local fake whose
answers are checked against the official ``elevenlabs`` SDK's own response type."""

from __future__ import annotations

import base64
import hashlib
import json
import tracemalloc
from pathlib import Path

import pydantic
import pytest
from elevenlabs import AudioWithTimestampsAndVoiceSegmentsResponseModel

from handlers.dialogue.render import decode_answer
from handlers.dialogue.segments import check_segments, estimate_seconds
from receiver.store.blobs import BlobStore
from tests.conftest import make_settings
from tests.dialogue_support import build_services, render, run_until_final, submit
from tests.fakes.elevenlabs_dialogue import ElevenLabsDialogueFake, answer_for
from tests.fakes.scripted import MP3, MP3_FORMAT, MP3_SECONDS, Answer, serving

INPUTS = [
    {"text": "Hello there, how are you?", "voice_id": "Rachel"},
    {"text": "Very well, thank you!", "voice_id": "Adam"},
]


def el_settings(database_url: str, tmp_path: Path, url: str, **extra: object):  # type: ignore[no-untyped-def]
    return make_settings(
        database_url,
        tmp_path / "data",
        elevenlabs_api_key="xi-test-api-key",
        elevenlabs_base_url=url,
        **extra,
    )


def test_the_fakes_answer_parses_with_the_sdks_type() -> None:
    for anomaly in (None, "repeated"):
        parsed = AudioWithTimestampsAndVoiceSegmentsResponseModel.model_validate(
            answer_for(INPUTS, anomaly)
        )
        assert base64.b64decode(parsed.audio_base_64) == MP3
        assert [s.dialogue_input_index for s in parsed.voice_segments] == [0, 1]
        assert parsed.alignment is not None
        assert "".join(parsed.alignment.characters) == "".join(i["text"] for i in INPUTS)
    # The SDK type does check: an answer without its required segments is refused.
    broken = answer_for(INPUTS)
    del broken["voice_segments"]
    with pytest.raises(pydantic.ValidationError):
        AudioWithTimestampsAndVoiceSegmentsResponseModel.model_validate(broken)


def test_render_stores_audio_segments_and_alignment(
    database_url: str, tmp_path: Path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    fake = ElevenLabsDialogueFake()
    with serving(fake.app()) as url:
        services = build_services(services_factory, el_settings(database_url, tmp_path, url))
        render_id = submit(services, "elevenlabs", output_format=MP3_FORMAT, seed=7)
        done = run_until_final(services, render_id)
    assert done["state"] == "succeeded" and done["warning"] is None, done
    assert done["sha256"] == hashlib.sha256(MP3).hexdigest() and done["size"] == len(MP3)
    assert services.blobs.path(done["audio"]["blob_path"]).read_bytes() == MP3
    assert done["audio"]["seconds"] == pytest.approx(MP3_SECONDS)
    segments = done["voice_segments"]
    assert [(s["voice_id"], s["input_index"], s["character_start"]) for s in segments] == [
        ("Rachel", 0, 0),
        ("Adam", 1, 25),
    ]
    assert segments[0]["end_seconds"] <= segments[1]["start_seconds"] + 1e-9
    assert len(done["alignment"]["characters"]) == 46
    (request,) = fake.requests
    assert request["params"] == {"output_format": MP3_FORMAT}
    assert request["body"] == {
        "inputs": INPUTS,
        "model_id": "eleven_v3",
        "seed": 7,
    }


def test_repeated_timestamps_are_recorded_as_a_warning(tmp_path: Path, services_factory) -> None:  # type: ignore[no-untyped-def]
    fake = ElevenLabsDialogueFake(anomaly="repeated")
    with serving(fake.app()) as url:
        settings = el_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        render_id = submit(services, "elevenlabs", output_format=MP3_FORMAT)
        done = run_until_final(services, render_id)
    assert done["state"] == "succeeded"  # the audio is kept; its timing is what is suspect
    assert "segment 2 has no duration" in done["warning"]
    assert "repeats the timestamp" in done["warning"]


def test_segment_checks() -> None:
    def seg(start: float, end: float, index: int) -> dict[str, object]:
        return {
            "start_seconds": start,
            "end_seconds": end,
            "input_index": index,
            "character_start": 0,
            "character_end": 1,
            "voice_id": "v",
        }

    assert check_segments([seg(0, 1, 0), seg(1, 2, 1)], 2, 2.0) == []
    assert check_segments([seg(1, 2, 1), seg(0, 1, 0)], 2, 2.0) == [
        "segment 2 starts before segment 1 ends (out of order)"
    ]
    assert check_segments([seg(0, 1, 0), seg(1, 5, 1)], 2, 2.0) == [
        "segment 2 ends at 5 s, after the audio's end (2.00 s)"
    ]
    assert check_segments([seg(0, 1, 0)], 2, 2.0) == ["turn(s) 2 have no voice segment"]
    assert estimate_seconds("mp3_22050_32", 4000) == 1.0
    assert estimate_seconds("pcm_16000", 32000) == 1.0
    assert estimate_seconds("opus_48000_64", 4000) is None


def test_audio_is_decoded_from_the_spooled_answer_without_holding_it(tmp_path: Path) -> None:
    """A 12 MB audio answer is decoded with a peak far below its size (never whole in memory,
    let alone twice)."""
    audio = MP3 * 850  # about 12.5 MB
    answer = tmp_path / "answer.json"
    with answer.open("w") as fh:
        doc = answer_for(INPUTS)
        doc["audio_base64"] = "@@"
        head, tail = json.dumps(doc).split('"@@"')
        fh.write(head + '"')
        fh.write(base64.b64encode(audio).decode())
        fh.write('"' + tail)
    blobs = BlobStore(tmp_path / "blobs", tmp_path / "spool")
    blobs.ensure_dirs()
    tracemalloc.start()
    decoded = decode_answer(blobs, answer, MP3_FORMAT)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert decoded["sha256"] == hashlib.sha256(audio).hexdigest()
    assert peak < len(audio) / 2, peak


@pytest.mark.parametrize(
    ("answer", "code", "words"),
    [
        (
            Answer(401, {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}),
            "invalid_api_key",
            "Invalid API key",
        ),
        (
            Answer(402, {"detail": {"status": "quota_exceeded", "message": "No credits left"}}),
            "quota_exceeded",
            "No credits left",
        ),
        (
            Answer(
                422,
                {"detail": [{"loc": ["body", "inputs"], "msg": "too long", "type": "value"}]},
            ),
            "validation_error",
            "body.inputs: too long",
        ),
    ],
)
def test_refusals_fail_the_render_with_elevenlabs_message(
    tmp_path: Path, services_factory, answer: Answer, code: str, words: str
) -> None:  # type: ignore[no-untyped-def]
    fake = ElevenLabsDialogueFake()
    with serving(fake.app()) as url:
        settings = el_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        fake.fail_next(answer)
        render_id = submit(services, "elevenlabs")
        done = run_until_final(services, render_id)
    assert done["state"] == "failed"
    assert done["error"] == {"code": code, "message": words}
    assert len(fake.requests) == 1


def test_a_wrong_key_is_refused_by_the_fake_itself(tmp_path: Path, services_factory) -> None:  # type: ignore[no-untyped-def]
    fake = ElevenLabsDialogueFake(api_key="another-key")
    with serving(fake.app()) as url:
        settings = el_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        done = run_until_final(services, submit(services, "elevenlabs"))
    assert done["error"]["code"] == "invalid_api_key"


def test_429_and_5xx_are_retried(tmp_path: Path, services_factory) -> None:  # type: ignore[no-untyped-def]
    fake = ElevenLabsDialogueFake()
    with serving(fake.app()) as url:
        settings = el_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        fake.fail_next(Answer(429, {"detail": {"status": "too_many_concurrent_requests"}}))
        fake.fail_next(Answer(500, {"detail": "internal error"}))
        render_id = submit(services, "elevenlabs", output_format=MP3_FORMAT)
        done = run_until_final(services, render_id)
    assert done["state"] == "succeeded" and len(fake.requests) == 3
    assert render(services, render_id)["size"] == len(MP3)
