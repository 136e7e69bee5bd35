"""The peer of the worker benchmark: a procrastinate app with one no-op task (bench/workers.py).

procrastinate is installed for the benchmark only (``pip install -e '.[bench]'``), never a
dependency of voicehooks. The DSN comes from ``BENCH_PROCRASTINATE_DSN`` so that the worker
process (``procrastinate --app=bench.procrastinate_app.app worker``) and the script that defers
the jobs use the same database.
"""

from __future__ import annotations

import os

import procrastinate

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("BENCH_PROCRASTINATE_DSN", ""))
)


@app.task(name="noop")
async def noop() -> None:
    """Nothing to do, like bench/probe_handler.py: what is measured is the framework's part."""
