#!/usr/bin/env bash
# Run the receiver: bash scripts/serve.sh [voicehooks serve args...]
# Creates .venv if missing and installs the package into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
ensure_venv base

exec .venv/bin/voicehooks serve "$@"
