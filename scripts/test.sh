#!/usr/bin/env bash
# Run the test suite: bash scripts/test.sh [pytest args...]
# Creates .venv if missing, installs the package with its test extras and, when
# run as root, installs PostgreSQL (the tests start throwaway servers).
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
stamp=".venv/.installed-test-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    echo "installing voicehooks[test] into .venv"
    .venv/bin/python -m pip install --quiet --editable '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# tests/pgserver.py knows where to look for the PostgreSQL binaries.
have_postgres() {
    .venv/bin/python -c 'import sys; sys.path.insert(0, "tests")
from pgserver import find_pg_bindir
sys.exit(find_pg_bindir() is None)'
}
if ! have_postgres; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: PostgreSQL server binaries (initdb, pg_ctl) not found." >&2
        echo "Install them (e.g. sudo apt-get install postgresql) and run again." >&2
        exit 1
    fi
    echo "installing PostgreSQL (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends postgresql
    if ! have_postgres; then
        echo "error: PostgreSQL binaries still not found after apt-get install" >&2
        exit 1
    fi
fi

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
fi
exit "$status"
