"""The one script format, and each provider's checks, before anything is sent.

A script is a JSON object::

    {"turns": [{"text": "...", "voice": "..."}, ...], "title"?, "language_code"?,
     "stability"?, "seed"?, "output_format"?, "model_id"?}

ElevenLabs' ``inputs: [{text, voice_id}]`` and kie.ai's ``dialogue: [{text, voice}]`` are
accepted as aliases of ``turns``. The checks are pure functions: each finding has a named code,
so ``voicehooks dialogue check`` and ``submit`` refuse (exit status 2) before any network call,
and a script that a provider would refuse costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROVIDERS = ("kie", "elevenlabs", "sonna")
# Sonna: 2,000 characters over all turns; kie.ai: 5,000 (reference/README.md).
SONNA_MAX_CHARS = 2000
KIE_MAX_CHARS = 5000
# ElevenLabs: "for reliable generation, keep the total ... at or below 2,000 characters".
ELEVENLABS_RELIABLE_CHARS = 2000
MAX_VOICES = 10
KIE_STABILITIES = (0.0, 0.5, 1.0)
KIE_LANGUAGE_CODES = frozenset(
    [
        "auto",
        "af",
        "ar",
        "hy",
        "as",
        "az",
        "be",
        "bn",
        "bs",
        "bg",
        "ca",
        "ceb",
        "ny",
        "hr",
        "cs",
        "da",
        "nl",
        "en",
        "et",
        "fil",
        "fi",
        "fr",
        "gl",
        "ka",
        "de",
        "el",
        "gu",
        "ha",
        "he",
        "hi",
        "hu",
        "is",
        "id",
        "ga",
        "it",
        "ja",
        "jv",
        "kn",
        "kk",
        "ky",
        "ko",
        "lv",
        "ln",
        "lt",
        "lb",
        "mk",
        "ms",
        "ml",
        "zh",
        "mr",
        "ne",
        "no",
        "ps",
        "fa",
        "pl",
        "pt",
        "pa",
        "ro",
        "ru",
        "sr",
        "sd",
        "sk",
        "sl",
        "so",
        "es",
        "sw",
        "sv",
        "ta",
        "te",
        "th",
        "tr",
        "uk",
        "ur",
        "vi",
        "cy",
    ]
)
ELEVENLABS_OUTPUT_FORMATS = frozenset(
    [
        "alaw_8000",
        "mp3_22050_32",
        "mp3_24000_48",
        "mp3_44100_128",
        "mp3_44100_192",
        "mp3_44100_32",
        "mp3_44100_64",
        "mp3_44100_96",
        "opus_48000_128",
        "opus_48000_192",
        "opus_48000_32",
        "opus_48000_64",
        "opus_48000_96",
        "pcm_16000",
        "pcm_22050",
        "pcm_24000",
        "pcm_32000",
        "pcm_44100",
        "pcm_48000",
        "pcm_8000",
        "ulaw_8000",
        "wav_16000",
        "wav_22050",
        "wav_24000",
        "wav_32000",
        "wav_44100",
        "wav_48000",
        "wav_8000",
    ]
)
SEED_MAX = 4294967295


class ScriptError(ValueError):
    """The file is not a script at all (not JSON, not an object, turns not a list)."""


@dataclass(frozen=True)
class Turn:
    text: str
    voice: str


@dataclass(frozen=True)
class Script:
    turns: list[Turn]
    title: str | None = None
    language_code: str | None = None
    stability: float | None = None
    seed: int | None = None
    output_format: str | None = None
    model_id: str | None = None

    @property
    def characters(self) -> int:
        return sum(len(turn.text) for turn in self.turns)

    @property
    def voices(self) -> list[str]:
        return list(dict.fromkeys(turn.voice for turn in self.turns if turn.voice))

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"turns": [{"text": t.text, "voice": t.voice} for t in self.turns]}
        for name in ("title", "language_code", "stability", "seed", "output_format", "model_id"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data


@dataclass(frozen=True)
class Finding:
    code: str
    message: str


@dataclass
class Checked:
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_script(document: Any) -> Script:
    """A ``Script`` from a decoded JSON document; ``ScriptError`` when it is not one."""
    if not isinstance(document, dict):
        raise ScriptError("a script is a JSON object with a list of turns")
    for key, voice_key in (("turns", "voice"), ("inputs", "voice_id"), ("dialogue", "voice")):
        if key in document:
            raw_turns, voice_field = document[key], voice_key
            break
    else:
        raise ScriptError('a script needs "turns" (or "inputs", or "dialogue")')
    if not isinstance(raw_turns, list):
        raise ScriptError('"turns" must be a list of {"text", "voice"} objects')
    turns = []
    for raw in raw_turns:
        raw = raw if isinstance(raw, dict) else {}
        voice = raw.get(voice_field, raw.get("voice", raw.get("voice_id")))
        turns.append(Turn(_text(raw.get("text")), _text(voice)))
    stability = document.get("stability")
    seed = document.get("seed")
    return Script(
        turns=turns,
        title=document.get("title") if isinstance(document.get("title"), str) else None,
        language_code=document.get("language_code"),
        stability=stability,
        seed=seed,
        output_format=document.get("output_format"),
        model_id=document.get("model_id"),
    )


def load_script(path: Path) -> Script:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScriptError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScriptError(f"{path} is not valid JSON: {exc}") from exc
    return parse_script(document)


def check(script: Script, provider: str) -> Checked:
    """Every reason ``provider`` would refuse ``script`` (errors) or might struggle (warnings)."""
    result = Checked()
    error, warn = result.errors.append, result.warnings.append
    if not script.turns:
        error(Finding("empty_turn", "the script has no turns"))
    for index, turn in enumerate(script.turns):
        missing = [
            name for name, value in (("text", turn.text), ("voice", turn.voice)) if not value
        ]
        if missing:
            error(Finding("empty_turn", f"turn {index + 1} has no {' and no '.join(missing)}"))
    chars = script.characters
    if provider == "sonna" and chars > SONNA_MAX_CHARS:
        error(
            Finding(
                "text_too_long",
                f"{chars} characters in all; Sonna takes at most {SONNA_MAX_CHARS}",
            )
        )
    if provider == "kie" and chars > KIE_MAX_CHARS:
        error(
            Finding(
                "text_too_long", f"{chars} characters in all; kie.ai takes at most {KIE_MAX_CHARS}"
            )
        )
    if provider == "elevenlabs" and chars > ELEVENLABS_RELIABLE_CHARS:
        warn(
            Finding(
                "text_too_long",
                f"{chars} characters in all; ElevenLabs advises at most "
                f"{ELEVENLABS_RELIABLE_CHARS} for reliable generation",
            )
        )
    voices = len(script.voices)
    if provider in ("sonna", "elevenlabs") and voices > MAX_VOICES:
        error(Finding("too_many_voices", f"{voices} distinct voices; at most {MAX_VOICES} allowed"))
    if provider == "kie":
        if script.stability is not None and (
            isinstance(script.stability, bool)
            or not isinstance(script.stability, int | float)
            or float(script.stability) not in KIE_STABILITIES
        ):
            error(
                Finding(
                    "invalid_stability",
                    f"stability {script.stability!r} is not one of 0, 0.5 or 1 (kie.ai)",
                )
            )
        if script.language_code is not None and script.language_code not in KIE_LANGUAGE_CODES:
            error(
                Finding(
                    "invalid_language_code",
                    f"language_code {script.language_code!r} is not in kie.ai's list",
                )
            )
    if (
        provider == "elevenlabs"
        and script.output_format is not None
        and script.output_format not in ELEVENLABS_OUTPUT_FORMATS
    ):
        error(
            Finding(
                "invalid_output_format",
                f"output_format {script.output_format!r} is not one ElevenLabs offers",
            )
        )
    if script.seed is not None and (
        isinstance(script.seed, bool)
        or not isinstance(script.seed, int)
        or not 0 <= script.seed <= SEED_MAX
    ):
        error(Finding("invalid_seed", f"seed must be an integer from 0 to {SEED_MAX}"))
    return result
