"""Ingest benchmark: voicehooks against a bare endpoint and a naive durable design, in one run.

    .venv/bin/python -m bench.ingest [--duration 10] [--connections 64] [--rounds 3] [--quick]

Targets, each a real server process on loopback under the same uvicorn settings
(``receiver.app.server_options``):

- ``anchor``: a bare Starlette endpoint that reads the body and answers 200 (bench/anchor_app.py),
  access log off: the framework's limit;
- ``naive``: verify the HMAC, then one SQLite transaction per request (bench/naive_app.py);
- ``sqlite``: ``voicehooks serve --no-worker``, default SQLite store (WAL, synchronous=FULL);
- ``postgres``: the same on a throwaway PostgreSQL with fsync and synchronous_commit on;
- ``serve``: ``voicehooks serve`` with default settings, its workers running the built-in
  handlers on every delivery while it receives, under a ``--burst`` (30 s) of load; then the
  backlog must drain with every job done (time and jobs/s reported);
- ``serve-threads`` (only if named): the same with the workers as threads of the serve process.

For each: the maximum rate with wrk (bench/webhooks.lua: distinct, freshly signed ~2.5 KB
transcription webhooks), p50/p99 and non-2xx; then the latency at half that rate with an open-loop
client (bench/paced.py); after each phase the stored rows are counted and must equal the 2xx
answers. With ``--rounds N`` every target is measured N times, interleaved; the table shows
medians over the quiet rounds (those during which other processes used at most ``--max-noise``
of the CPU; all rounds if none was quiet). For ``sqlite`` and ``postgres``, a server with
in-process workers and a no-op handler (bench/probe_handler.py) measures acknowledgement ->
handler completion while idle. Prints one table and writes bench/out/ingest.json. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bodies import Bodies
from bench.phases import run_idle_probe, run_paced_phase, run_wrk, warm_up
from bench.procs import machine, start_worker_process, stop_gracefully, wait_for_quiet
from bench.targets import ALL_TARGETS, SECRET, TARGETS, Target, build_targets

OUT = Path(__file__).resolve().parent / "out" / "ingest.json"
WRK_INSTALL = "apt-get install -y wrk"
# Distinct bodies prepared per second of wrk load before the anchor's rate is known. A wrk
# thread that runs out stops (reported as "exhausted", and the phase is run again with more)
# rather than send a duplicate.
FIRST_GUESS_RATE = 20_000


@dataclass
class Options:
    duration: float
    burst: float
    drain_timeout: float
    grace: float
    connections: int
    threads: int
    paced_duration: float
    paced_connections: int
    warmup_requests: int
    idle_requests: int
    idle_gap: float
    rounds: int
    max_noise: float
    quiet_timeout: float
    targets: list[str]
    out: Path
    nice: int | None
    quick: bool


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description="Ingest benchmark (see bench/README.md)."
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk load")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--burst",
        type=float,
        default=30.0,
        help="seconds of wrk load for targets whose workers run meanwhile (serve)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=900.0, help="most seconds to wait for a backlog"
    )
    parser.add_argument("--paced-duration", type=float, help="seconds at half rate")
    parser.add_argument("--rounds", type=int, default=1, help="measure each target N times")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, from {','.join(ALL_TARGETS)}",
    )
    parser.add_argument("--idle-requests", type=int, help="deliveries for ack->done")
    parser.add_argument(
        "--max-noise",
        type=float,
        default=0.1,
        help="a round counts as quiet if other processes used at most this share of the CPU",
    )
    parser.add_argument(
        "--nice",
        type=int,
        help="run at this nice value (e.g. -10 on a shared machine; needs root to go below 0)",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the JSON")
    parser.add_argument("--quick", action="store_true", help="tiny durations (smoke test)")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    duration = 1.0 if quick else args.duration
    idle_requests = args.idle_requests if args.idle_requests is not None else (3 if quick else 40)
    return Options(
        duration=duration,
        burst=1.0 if quick else args.burst,
        drain_timeout=args.drain_timeout,
        grace=3.0,  # wrk runs this much longer, so that every request sent is answered
        connections=min(args.connections, 16) if quick else args.connections,
        threads=args.threads,
        paced_duration=args.paced_duration or (1.0 if quick else duration),
        paced_connections=8 if quick else 32,
        warmup_requests=20 if quick else 200,
        idle_requests=idle_requests,
        idle_gap=0.05 if quick else 0.2,
        rounds=max(1, args.rounds),
        max_noise=args.max_noise,
        quiet_timeout=0.0 if quick else 60.0,
        targets=[t.strip() for t in args.targets.split(",") if t.strip()],
        out=args.out,
        nice=args.nice,
        quick=quick,
    )


# -- one target, one round --------------------------------------------------------------------


def run_round(
    target: Target,
    round_no: int,
    bodies: Bodies,
    options: Options,
    rate_bound: float,
    workdir: Path,
) -> dict[str, Any]:
    """Maximum rate, then half of it, on a fresh server; stored rows checked after each."""
    name = f"{target.name}-r{round_no}"
    server = target.make_server(name).start()
    record: dict[str, Any] = {}
    try:
        record["warmup"] = warm_up(server, bodies, options.warmup_requests)
        acknowledged = record["warmup"]["ok"]
        duration = options.burst if target.count_jobs is not None else options.duration
        needed = int(rate_bound * duration) + 1000
        for _attempt in range(3):
            quiet = wait_for_quiet(options.max_noise, options.quiet_timeout)
            wrk = run_wrk(
                server,
                bodies,
                duration=duration,
                grace=options.grace,
                connections=options.connections,
                threads=options.threads,
                bodies_needed=needed,
                workdir=workdir,
            )
            acknowledged += wrk["ok"]
            if not wrk["exhausted"]:
                break
            needed *= 2  # ran out of distinct bodies: measure again with more
        record["max"] = wrk = wrk | {"before": quiet, "duration_s": duration}
        if target.count_stored is not None:
            wrk["stored_total"], wrk["ok_total"] = target.count_stored(name), acknowledged
        if target.count_jobs is not None:
            wrk["drain"] = wait_for_drain(target.count_jobs, name, options.drain_timeout)
        quiet = wait_for_quiet(options.max_noise, options.quiet_timeout)
        paced = run_paced_phase(
            server,
            bodies,
            rate=max(1.0, wrk["rps"] / 2),
            duration=options.paced_duration,
            connections=options.paced_connections,
        )
        acknowledged += paced["ok"]
        record["half"] = paced = paced | {"before": quiet}
        if target.count_jobs is not None:
            paced["drain"] = wait_for_drain(target.count_jobs, name, options.drain_timeout)
        if target.count_stored is not None:
            paced["stored_total"], paced["ok_total"] = target.count_stored(name), acknowledged
            record["stored_equals_2xx"] = (
                wrk["stored_total"] == wrk["ok_total"]
                and paced["stored_total"] == paced["ok_total"]
            )
    finally:
        server.stop()
    return record


def wait_for_drain(
    count_jobs: Callable[[str], dict[str, int]], name: str, timeout: float
) -> dict[str, Any]:
    """After a phase: wait until no job is pending or running; how long, how fast, and did
    every job end ``done`` (none dead)?"""
    started = time.monotonic()
    first = count_jobs(name)
    counts = first
    while counts.get("pending", 0) + counts.get("running", 0) > 0:
        if time.monotonic() - started > timeout:
            break
        time.sleep(0.25)
        counts = count_jobs(name)
    seconds = time.monotonic() - started
    backlog = first.get("pending", 0) + first.get("running", 0)
    drained = counts.get("done", 0) - first.get("done", 0)  # all of the backlog, unless timed out
    total = sum(counts.values())
    return {
        "backlog_at_end_of_load": backlog,
        "done_during_load": first.get("done", 0),
        "drain_s": round(seconds, 2),
        "drain_jobs_per_s": round(drained / seconds, 1) if drained and seconds > 0 else None,
        "jobs": counts,
        "all_done": counts.get("done", 0) == total,
    }


def run_probe(target: Target, options: Options) -> dict[str, Any] | None:
    """Idle ack -> done, with in-process workers and with a separate `voicehooks worker`."""
    if target.database_url is None or options.idle_requests <= 0:
        return None
    results: dict[str, Any] = {}
    for name in (f"{target.name}-probe", f"{target.name}-split"):
        server = target.make_server(name).start()
        worker = None
        try:
            if name.endswith("-split"):
                worker = start_worker_process(server)
            results[name] = run_idle_probe(
                server,
                SECRET,
                target.database_url(name),
                requests=options.idle_requests,
                gap=options.idle_gap,
            )
        finally:
            if worker is not None:
                stop_gracefully(worker)
            server.stop()
    in_process, separate = results.values()
    return in_process | {"separate_worker": separate}


# -- summary ----------------------------------------------------------------------------------


def noise(record: dict[str, Any]) -> float:
    """The larger share of the machine's CPU that other processes used during the two phases."""
    return max(record["max"]["cpu"]["other_cpu_share"], record["half"]["cpu"]["other_cpu_share"])


def summarize(
    describe: str, rounds: list[dict[str, Any]], max_noise: float, anchor_rps: float | None
) -> dict[str, Any]:
    """Medians over the quiet rounds (all rounds if none was quiet); ratio to the anchor's median.

    On a shared machine a round during which something else ran is not a measurement of the
    target; it is kept in the JSON but left out of the summary when quieter rounds exist.
    """
    quiet = [r for r in rounds if noise(r) <= max_noise]
    used = quiet or rounds
    by_rate = sorted(used, key=lambda r: r["max"]["rps"])
    middle = by_rate[(len(by_rate) - 1) // 2]
    rps = statistics.median(r["max"]["rps"] for r in used)
    summary: dict[str, Any] = {
        "describe": describe,
        "rps": rps,
        "rps_rounds": [r["max"]["rps"] for r in rounds],
        "quiet_rounds": len(quiet),
        "rounds": len(rounds),
        "ratio_to_anchor": round(rps / anchor_rps, 3) if anchor_rps else None,
        "latency_ms": middle["max"]["latency_ms"],
        "non_2xx": sum(
            r["max"]["non_2xx"]
            + r["max"]["socket_errors"]
            + r["half"]["not_ok"]
            + r["half"]["errors"]
            + r["warmup"]["not_ok"]
            for r in rounds
        ),
        "half_rate": {
            "rate": middle["half"]["target_rate"],
            "p99_ms": statistics.median(r["half"]["latency_ms"]["p99"] for r in used),
            "p50_ms": statistics.median(r["half"]["latency_ms"]["p50"] for r in used),
        },
        "server_cpu_ms_per_request": middle["max"]["server_cpu_ms_per_request"],
        "other_cpu_share_max": max(noise(r) for r in rounds),
    }
    if all("drain" in r["max"] for r in rounds):
        drains = [r["max"]["drain"] for r in used]
        summary["drain"] = {
            "burst_s": used[0]["max"]["duration_s"],
            "backlog": statistics.median(d["backlog_at_end_of_load"] for d in drains),
            "done_during_load": statistics.median(d["done_during_load"] for d in drains),
            "drain_s": statistics.median(d["drain_s"] for d in drains),
            "drain_jobs_per_s": statistics.median(d["drain_jobs_per_s"] or 0 for d in drains),
            "all_done": all(
                r[phase]["drain"]["all_done"] for r in rounds for phase in ("max", "half")
            ),
        }
    if all("stored_equals_2xx" in r for r in rounds):
        summary["stored_equals_2xx"] = all(r["stored_equals_2xx"] for r in rounds)
        summary["stored"] = sum(r["half"]["stored_total"] for r in rounds)
        summary["ok"] = sum(r["half"]["ok_total"] for r in rounds)
    return summary


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(summaries: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| target | req/s | vs anchor | p50 ms | p99 ms | non-2xx | stored == 2xx "
        "| p99 ms @ half rate | ack->done p50 ms (serve / --no-worker + worker) | quiet rounds |",
        "|" + "---|" * 10,
    ]
    for name, s in summaries.items():
        ratio = s["ratio_to_anchor"]
        if "stored_equals_2xx" in s:
            stored = f"{'yes' if s['stored_equals_2xx'] else 'NO'} ({s['stored']:,})"
        else:
            stored = "n/a"
        idle = (s.get("idle") or {}).get("ack_to_done_ms", {}).get("p50")
        split = ((s.get("idle") or {}).get("separate_worker") or {}).get("ack_to_done_ms", {})
        lines.append(
            f"| {name} | {_fmt(round(s['rps']))} | {'-' if ratio is None else f'{ratio:.0%}'} "
            f"| {_fmt(s['latency_ms']['p50'])} | {_fmt(s['latency_ms']['p99'])} "
            f"| {s['non_2xx']} | {stored} "
            f"| {_fmt(s['half_rate']['p99_ms'])} ({_fmt(round(s['half_rate']['rate']))}/s) "
            f"| {_fmt(idle)} / {_fmt(split.get('p50'))} | {s['quiet_rounds']}/{s['rounds']} |"
        )
    drained = {name: s["drain"] for name, s in summaries.items() if "drain" in s}
    if drained:
        lines += [
            "",
            "| target | backlog after the burst (jobs) | done during the burst | drain s "
            "| drain jobs/s | every job done |",
            "|" + "---|" * 6,
        ]
        for name, d in drained.items():
            lines.append(
                f"| {name} | {_fmt(round(d['backlog']))} | {_fmt(round(d['done_during_load']))} "
                f"| {_fmt(d['drain_s'])} | {_fmt(d['drain_jobs_per_s'])} "
                f"| {'yes' if d['all_done'] else 'NO'} |"
            )
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if shutil.which("wrk") is None:
        print(f"wrk is not installed; on Debian/Ubuntu: {WRK_INSTALL}", file=sys.stderr)
        return 2
    if options.nice is not None:
        with contextlib.suppress(PermissionError):  # children (servers, wrk) inherit it
            os.setpriority(os.PRIO_PROCESS, 0, options.nice)
    started = datetime.now(UTC)
    cleanup: list[Callable[[], None]] = []
    rounds: dict[str, list[dict[str, Any]]] = {}
    probes: dict[str, dict[str, Any] | None] = {}
    bodies = Bodies(SECRET)
    with tempfile.TemporaryDirectory(prefix="voicehooks-bench-") as tmp:
        workdir = Path(tmp)
        try:
            targets = build_targets(options.targets, workdir, cleanup)
            rate_bound = float(FIRST_GUESS_RATE)
            for round_no in range(1, options.rounds + 1):
                for target in targets:
                    print(
                        f"-- round {round_no}/{options.rounds}, {target.name}: {target.describe}",
                        file=sys.stderr,
                        flush=True,
                    )
                    record = run_round(target, round_no, bodies, options, rate_bound, workdir)
                    rounds.setdefault(target.name, []).append(record)
                    if target.name == "anchor":
                        rate_bound = max(rate_bound, record["max"]["rps"] * 1.5 + 500)
            for target in targets:
                probes[target.name] = run_probe(target, options)
        finally:
            for stop in reversed(cleanup):
                stop()
    anchor_rps = (
        summarize("", rounds["anchor"], options.max_noise, None)["rps"]
        if "anchor" in rounds
        else None
    )
    summaries = {}
    for target in targets:
        summary = summarize(target.describe, rounds[target.name], options.max_noise, anchor_rps)
        if probes.get(target.name) is not None:
            summary["idle"] = probes[target.name]
        summaries[target.name] = summary
    report = table(summaries)
    document = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": "python -m bench.ingest " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        "summary": summaries,
        "rounds": rounds,
        "table": report,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(report)
    print(f"(written to {options.out})", file=sys.stderr)
    mismatched = [n for n, s in summaries.items() if s.get("stored_equals_2xx") is False]
    for name in mismatched:
        for n, record in enumerate(rounds[name], 1):
            counts = [
                f"{phase}: stored {record[phase]['stored_total']}, 2xx {record[phase]['ok_total']}"
                for phase in ("max", "half")
            ]
            print(f"stored != 2xx for {name}, round {n}: {'; '.join(counts)}", file=sys.stderr)
    undone = [n for n, s in summaries.items() if s.get("drain", {}).get("all_done") is False]
    for name in undone:
        print(f"not every job of {name} ended done (see the JSON)", file=sys.stderr)
    if mismatched or undone:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
