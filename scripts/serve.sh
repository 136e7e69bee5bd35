#!/usr/bin/env bash
# Run the receiver: bash scripts/serve.sh [voicehooks serve args...]
# Creates .venv if missing and installs the package into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x .venv/bin/python ]; then
    python=$(command -v python3.11 || command -v python3 || true)
    if [ -z "$python" ]; then
        echo "error: python3.11 (or python3) not found" >&2
        exit 1
    fi
    echo "creating .venv with $python"
    "$python" -m venv .venv
fi
# Editable install: only a changed pyproject.toml needs a reinstall.
hash=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e ".venv/.installed-test-$hash" ] && [ ! -e ".venv/.installed-base-$hash" ]; then
    echo "installing voicehooks into .venv"
    .venv/bin/python -m pip install --quiet --editable .
    rm -f .venv/.installed-*
    touch ".venv/.installed-base-$hash"
fi

exec .venv/bin/voicehooks serve "$@"
