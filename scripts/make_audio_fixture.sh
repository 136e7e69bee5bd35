#!/usr/bin/env bash
# Rebuild the audio fixtures from scratch:
#   fixtures/audio/hello.mp3                  a few seconds of synthetic speech, MP3 mono 32 kbps,
#                                             starting with an ID3v2 tag ("ID3")
#   fixtures/elevenlabs/post_call_audio.json  a post_call_audio webhook body whose data.full_audio
#                                             is that MP3, base64 encoded
#
# Needs espeak-ng and lame (Debian: apt-get install -y espeak-ng lame) and a Python 3.
# The output is deterministic for a given espeak-ng / lame version (no dates or random ids are
# written), so re-running it on the same machine gives byte-identical files.
#
# Usage: scripts/make_audio_fixture.sh            (from anywhere inside the repo)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AUDIO_DIR="$ROOT/fixtures/audio"
EL_DIR="$ROOT/fixtures/elevenlabs"
MP3="$AUDIO_DIR/hello.mp3"
JSON="$EL_DIR/post_call_audio.json"

TEXT="Hello from voicehooks. This is a test call."
# Must match the conversation in transcription_unicode.json / transcription_tool_calls.json.
AGENT_ID="agent_fixture"
CONVERSATION_ID="conv_fixture_0001"
EVENT_TIMESTAMP=1760000090

for tool in espeak-ng lame; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool not found (apt-get install -y espeak-ng lame)" >&2
    exit 1
  fi
done

if [ -x "$ROOT/.venv/bin/python" ]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="$(command -v python3)"
fi

mkdir -p "$AUDIO_DIR" "$EL_DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# 1. speech to WAV (espeak-ng: 22050 Hz, mono, 16-bit)
espeak-ng -v en-us -s 150 -w "$TMP/hello.wav" "$TEXT"

# 2. WAV to MP3: mono, CBR 32 kbps, with an ID3v2 tag at the start of the file (no ID3v1 trailer)
lame --quiet -m m -b 32 --cbr -q 2 --noreplaygain \
  --id3v2-only --tt "voicehooks test call" --ta "voicehooks fixtures" --tl "fixtures" \
  --ty 2025 --tc "synthetic speech (espeak-ng), conversation $CONVERSATION_ID" \
  "$TMP/hello.wav" "$TMP/hello.mp3"

mv "$TMP/hello.mp3" "$MP3"

# 3. the post_call_audio webhook body
"$PY" - "$MP3" "$JSON" "$AGENT_ID" "$CONVERSATION_ID" "$EVENT_TIMESTAMP" <<'EOF'
import base64
import json
import sys

mp3_path, json_path, agent_id, conversation_id, event_timestamp = sys.argv[1:]
audio = open(mp3_path, "rb").read()
if not audio.startswith(b"ID3"):
    sys.exit(f"{mp3_path} does not start with an ID3v2 tag")
body = {
    "type": "post_call_audio",
    "event_timestamp": int(event_timestamp),
    "data": {
        "agent_id": agent_id,
        "conversation_id": conversation_id,
        "full_audio": base64.b64encode(audio).decode("ascii"),
    },
}
with open(json_path, "w", encoding="utf-8") as f:
    json.dump(body, f, indent=2, ensure_ascii=False)
    f.write("\n")
assert base64.b64decode(body["data"]["full_audio"], validate=True) == audio
print(f"{mp3_path}: {len(audio)} bytes")
print(f"{json_path}: {len(json.dumps(body, indent=2)) + 1} bytes")
EOF
