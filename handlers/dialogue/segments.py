"""Checks of ElevenLabs' voice segments and alignment against the audio and the script.

Pure functions: each anomaly is a sentence, recorded on the render as a warning (the audio is
still kept; the timing data is what may be wrong). Users report repeated timestamps on long
inputs, so those are looked for explicitly, along with order, bounds and coverage.
"""

from __future__ import annotations

import itertools
from typing import Any

# Timing slack for "inside the audio": MP3 frames and rounding add a few hundredths of a second.
END_TOLERANCE_SECONDS = 0.25
# This many consecutive characters sharing one start time is a stuck clock, not fast speech.
REPEATED_RUN = 10


def estimate_seconds(output_format: str | None, size: int) -> float | None:
    """The audio's length from its size, for the constant-bitrate formats ElevenLabs sends
    (``mp3_<rate>_<kbps>``, ``pcm_<rate>``, ``wav_<rate>``, ``ulaw_8000``, ``alaw_8000``);
    None when the size does not tell (Opus)."""
    codec, _, rest = (output_format or "mp3_44100_128").partition("_")
    parts = rest.split("_")
    try:
        if codec == "mp3" and len(parts) == 2:
            return size * 8 / (int(parts[1]) * 1000)
        if codec == "pcm":
            return size / (2 * int(parts[0]))
        if codec == "wav":
            return max(0, size - 44) / (2 * int(parts[0]))
        if codec in ("ulaw", "alaw"):
            return size / int(parts[0])
    except (ValueError, ZeroDivisionError):
        return None
    return None


def check_segments(
    segments: list[dict[str, Any]],
    inputs: int,
    audio_seconds: float | None,
    alignment: dict[str, Any] | None = None,
) -> list[str]:
    """Every anomaly found, as sentences (empty: the timing data looks sound)."""
    anomalies: list[str] = []
    previous: dict[str, Any] | None = None
    for n, seg in enumerate(segments, start=1):
        start, end = seg["start_seconds"], seg["end_seconds"]
        if end < start:
            anomalies.append(f"segment {n} ends ({end} s) before it starts ({start} s)")
        elif end == start:
            anomalies.append(f"segment {n} has no duration (starts and ends at {start} s)")
        if previous is not None:
            if (start, end) == (previous["start_seconds"], previous["end_seconds"]):
                anomalies.append(f"segments {n - 1} and {n} repeat the same timestamps")
            elif start < previous["end_seconds"] - 1e-6:
                anomalies.append(f"segment {n} starts before segment {n - 1} ends (out of order)")
        if start < 0:
            anomalies.append(f"segment {n} starts before the audio ({start} s)")
        if audio_seconds is not None and end > audio_seconds + END_TOLERANCE_SECONDS:
            anomalies.append(
                f"segment {n} ends at {end} s, after the audio's end ({audio_seconds:.2f} s)"
            )
        if not 0 <= seg["input_index"] < inputs:
            anomalies.append(f"segment {n} names input {seg['input_index']}, not in the script")
        if seg["character_end"] < seg["character_start"]:
            anomalies.append(f"segment {n} has an empty character range")
        previous = seg
    covered = {seg["input_index"] for seg in segments}
    missing = [str(i + 1) for i in range(inputs) if i not in covered]
    if missing:
        anomalies.append(f"turn(s) {', '.join(missing)} have no voice segment")
    anomalies += check_alignment(alignment)
    return anomalies


def check_alignment(alignment: dict[str, Any] | None) -> list[str]:
    if not isinstance(alignment, dict):
        return []
    starts = alignment.get("character_start_times_seconds")
    if not isinstance(starts, list) or not starts:
        return []
    anomalies = []
    backwards = sum(1 for a, b in itertools.pairwise(starts) if b < a)
    if backwards:
        anomalies.append(f"the alignment's character times go backwards {backwards} time(s)")
    run, longest, at = 1, 1, starts[0]
    for a, b in itertools.pairwise(starts):
        run = run + 1 if b == a else 1
        if run > longest:
            longest, at = run, b
    if longest >= REPEATED_RUN:
        anomalies.append(f"the alignment repeats the timestamp {at} s for {longest} characters")
    return anomalies
