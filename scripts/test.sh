#!/usr/bin/env bash
# Run the test suite: bash scripts/test.sh [pytest args...]
# Creates .venv if missing, installs the package with its test extras and, when
# run as root, installs PostgreSQL (the tests start throwaway servers) and Debian's
# chromium + chromium-driver (the browser tests).
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

# tests/test_ui_browser.py drives Debian's headless Chromium through its chromedriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: chromium and chromedriver not found (the browser tests need them)." >&2
        echo "Install them (e.g. sudo apt-get install chromium chromium-driver) and run again." >&2
        exit 1
    fi
    echo "installing Chromium and its driver (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium chromium-driver
fi

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
fi
exit "$status"
