#!/usr/bin/env bash
# Regenerate requirements.lock (the Docker image's pinned, hashed dependencies) from
# pyproject.toml: bash scripts/lock.sh. Run it after changing dependencies; commit the result.
# pip-tools runs from a throwaway venv, so it is no dependency of voicehooks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install --quiet "pip-tools>=7.4"
"$tools/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --all-build-deps \
    --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
    --output-file requirements.lock pyproject.toml
echo "requirements.lock updated"
