"""The ingest benchmark harness runs end to end with tiny durations.

It is a smoke test of the harness, not a benchmark: the numbers it measures are not judged here
(CI machines differ). What is checked is that every target was started and measured, and that the
one rule held under load: every 2xx answer is a stored delivery (stored == 2xx). It needs ``wrk``
(Debian: ``apt-get install -y wrk``); without it the harness exits with that advice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.targets import TARGETS

ROOT = Path(__file__).resolve().parent.parent
STORING = [t for t in TARGETS if t != "anchor"]
PROBED = ["sqlite", "postgres"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("bench") / "ingest.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    return json.loads(out.read_text()), completed.stdout


@pytest.mark.slow
def test_every_target_is_measured_at_full_and_half_rate(quick_run) -> None:  # type: ignore[no-untyped-def]
    document, printed = quick_run
    assert list(document["summary"]) == list(TARGETS)
    for name in TARGETS:
        (record,) = document["rounds"][name]
        assert record["max"]["requests"] > 0 and record["max"]["ok"] > 0, name
        assert record["max"]["latency_ms"]["p99"] is not None, name
        assert record["half"]["sent"] > 0 and record["half"]["latency_ms"]["p99"] is not None
        assert f"| {name} |" in printed
    assert document["summary"]["anchor"]["ratio_to_anchor"] == 1.0
    assert {"nproc", "cpu", "memory_gib"} <= document["machine"].keys()


@pytest.mark.slow
def test_every_2xx_answer_is_a_stored_delivery(quick_run) -> None:  # type: ignore[no-untyped-def]
    document, _ = quick_run
    for name in STORING:
        summary = document["summary"][name]
        (record,) = document["rounds"][name]
        assert summary["stored_equals_2xx"] is True, name
        assert summary["stored"] == summary["ok"] > 0, name
        assert record["max"]["stored_total"] == record["max"]["ok_total"], name
        assert record["half"]["stored_total"] == record["half"]["ok_total"], name


@pytest.mark.slow
def test_the_default_serve_drains_its_backlog_with_every_job_done(quick_run) -> None:  # type: ignore[no-untyped-def]
    document, printed = quick_run
    drain = document["summary"]["serve"]["drain"]
    assert drain["all_done"] is True
    (record,) = document["rounds"]["serve"]
    for phase in ("max", "half"):
        jobs = record[phase]["drain"]["jobs"]
        # one transcription job per stored delivery, every one of them done
        assert jobs == {"done": record[phase]["stored_total"]}, phase
    assert "| serve |" in printed.split("drain jobs/s")[1]


@pytest.mark.slow
def test_acknowledgement_to_handler_completion_is_measured(quick_run) -> None:  # type: ignore[no-untyped-def]
    document, _ = quick_run
    for name in PROBED:
        idle = document["summary"][name]["idle"]
        # in-process workers, and a `voicehooks worker` process beside `serve --no-worker`
        for probe in (idle, idle["separate_worker"]):
            assert probe["done"] == probe["requests"] > 0, name
            assert probe["ack_to_done_ms"]["p50"] is not None, name
