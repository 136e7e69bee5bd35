# Sourced by serve.sh and test.sh: make sure .venv exists and holds voicehooks with EXTRAS.
# An editable install only needs redoing when pyproject.toml changes, so a stamp file records it.
export PIP_DISABLE_PIP_VERSION_CHECK=1

ensure_venv() {
    local extras=$1 hash
    if [ ! -x .venv/bin/python ]; then
        local python
        python=$(command -v python3.11 || command -v python3 || true)
        if [ -z "$python" ]; then
            echo "error: python3.11 (or python3) not found" >&2
            exit 1
        fi
        echo "creating .venv with $python"
        "$python" -m venv .venv
    fi
    hash=$(sha256sum pyproject.toml | cut -c1-16)
    # A test install includes everything serve needs, so either stamp satisfies serve.
    if [ -e ".venv/.installed-$extras-$hash" ] || { [ "$extras" = base ] && [ -e ".venv/.installed-test-$hash" ]; }; then
        return
    fi
    echo "installing voicehooks ($extras dependencies) into .venv"
    if [ "$extras" = base ]; then
        .venv/bin/python -m pip install --quiet --editable .
    else
        .venv/bin/python -m pip install --quiet --editable ".[$extras]"
    fi
    rm -f .venv/.installed-*
    touch ".venv/.installed-$extras-$hash"
}
