"""Scale-out on one Postgres, small: two receivers and three workers in separate processes, one
of each killed with SIGKILL mid-stream, and a ledger that must balance.

The harness is ``bench/scaleout.py`` (its docstring has the scenario); here it runs for a few
seconds at a modest rate. Every 2xx delivery must be stored byte for byte, every stored
delivery's jobs must end done (the killed worker's jobs are claimed again when their lease
expires), and each delivery's effects must happen once: one row of the counting plugin, one
conversation, three turns.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scaleout import balanced, run_scaleout


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_receivers_three_workers_one_of_each_killed_ledger_balances(
    database_url: str, tmp_path: Path
) -> None:
    result = run_scaleout(database_url, tmp_path, seconds=4, rate=40, clients=4, drain_timeout=60)
    book = result["ledger"]
    assert book["acknowledged"] >= 80, result
    assert result["non_2xx"] == 0, result
    assert book["acknowledged_not_stored"] == 0, result
    assert book["jobs_not_done"] == 0, result
    assert book["effects_missing"] == 0 and book["effects_duplicated"] == 0, result
    assert book["conversations"] == book["stored"], result
    assert book["turns"] == book["turns_expected"] and book["duplicate_turns"] == 0, result
    assert len(book["effects_by_worker_pid"]) >= 2, "the work was not shared between workers"
    assert balanced(result)
