#!/usr/bin/env bash
# Run the test suite: bash scripts/test.sh [pytest args...]
# Creates .venv if missing, installs the package with its test extras and, when
# run as root, installs what the tests need from Debian: PostgreSQL (the tests start throwaway
# servers), wrk (the ingest benchmark's smoke test), chromium + chromium-driver (browser tests).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
ensure_venv test

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

# Debian packages the tests drive: wrk (tests/test_bench_smoke.py), Debian's headless Chromium
# and its chromedriver (tests/test_ui_browser.py). Installed as PostgreSQL is, by root.
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: ${missing[*]} not found (the tests need them)." >&2
        echo "Install them (e.g. sudo apt-get install ${missing[*]}) and run again." >&2
        exit 1
    fi
    echo "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
fi
exit "$status"
